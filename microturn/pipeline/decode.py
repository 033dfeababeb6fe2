"""Decode: every source of a session onto one integer clock, each file read once.

Why this module: it decides which files a session reads, in which order, and where their media lands
on the session clock; the reading itself (opening, packets, the audio sink, the video picker) lives in
``microturn/media``. What it returns (``DecodedMedia``) is everything later stages need from the
media, the A/V luma trace and the frames for an A/V offset correction included when asked for:
nothing after decode opens a file.

Audio: all channels of a file decoded once and shared by the manifest rows that point at its
channels, resampled to 24 kHz (codec) and 16 kHz (VAD/ASR). Video: one small RGB frame per 200 ms
chunk, chosen by presentation time. Each file is opened once per session and read once, front to
back: the probe works on the same container (its first packets are kept and decoded, not re-read),
and a file giving both audio and picture is decoded in one interleaved pass. Seeking back to the
start is never used, because it is not exact (see ``probe.describe_container``).

The session clock: sample 0 is the earliest moment any source has media, where a source's media
begins at ``manifest offset_s + pts of its first decoded frame``. Each source's placement is the
exact rational difference rounded once to the nearest 24 kHz sample.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Optional

import numpy as np

from microturn.clock import ASR_RATE, CODEC_RATE, GRID, rescale, to_fraction
from microturn.config import DecodeConfig
from microturn.media import spill
from microturn.media.audio import AudioSink, DecodedAudio
from microturn.media.container import PacketStats, Sources, decode_frames, max_timeline_s, too_long
from microturn.media.video import VideoPicker, VideoResult, frames_before
from microturn.pipeline.probe import media_duration_s, probe_session
from microturn.records import (
    AudioSource,
    AudioStream,
    DecodedMedia,
    DecoderInfo,
    MediaInfo,
    Provenance,
    StageError,
    VideoFrames,
    VideoSource,
)

if TYPE_CHECKING:
    from microturn.manifest import SessionSpec

log = logging.getLogger(__name__)

MIXED = "mixed"
_MAX_PENDING_FRAMES = 48  # decoded video frames held while a file's first audio frame is awaited


@dataclass(frozen=True)
class _Row:
    """One audio row of the manifest, or the video's own track when the session lists none."""

    uri: str
    channel: int
    speaker: Optional[str]
    offset_s: Fraction
    downmix: bool  # no speaker and no channel named: all channels mixed down


def _rows(spec: "SessionSpec") -> list[_Row]:
    rows = []
    for a in spec.audio:
        downmix = a.speaker is None and "channel" not in a.model_fields_set
        rows.append(_Row(a.uri, a.channel, a.speaker, to_fraction(a.offset_s), downmix))
    if not rows and spec.video is not None:
        rows.append(_Row(spec.video.uri, 0, None, to_fraction(spec.video.offset_s), True))
    return rows


# ---------------------------------------------------------------- one pass over one file


class _NotInterleaved(Exception):
    """A file's video ran far ahead of its audio in one pass (see ``_settle_when_known``)."""


def _earliest(a: Optional[Fraction], b: Optional[Fraction]) -> Optional[Fraction]:
    return b if a is None else (a if b is None else min(a, b))


def _video_origin(audio_origin: Optional[Fraction], picker: VideoPicker) -> Fraction:
    """``min(audio origin, video start)``: the session origin once the picture's start is known."""
    assert picker.first_s is not None
    video_start = picker.offset_s + picker.first_s
    return video_start if audio_origin is None else min(audio_origin, video_start)


def _settle_when_known(
    picker: VideoPicker, sink: Optional[AudioSink], audio_origin: Optional[Fraction], audio_offset_s: Fraction
) -> None:
    """Give the picker the origin once everything it depends on is known (the picture's start and,
    when this file's audio counts, its first audio frame)."""
    if picker.first_s is not None and (sink is None or sink.start is not None):
        own = None if sink is None else audio_offset_s + sink.start  # type: ignore[operator]
        picker.settle(_video_origin(_earliest(audio_origin, own), picker))
    elif len(picker.pending) >= _MAX_PENDING_FRAMES:
        # no audio frame yet after many video frames (a file that is not interleaved):
        # the picture waits for a second pass rather than in memory
        raise _NotInterleaved()


def _decode_file(
    opened: Sources,
    uri: str,
    sink: Optional[AudioSink],
    picker: Optional[VideoPicker],
    audio_origin: Optional[Fraction],
    audio_offset_s: Fraction = Fraction(0),
) -> tuple[Optional[DecodedAudio], Optional[VideoResult], Optional[Fraction]]:
    """One pass over one file: its first audio stream into ``sink``, its first video stream into
    ``picker`` (either may be None). ``audio_origin`` is the earliest start of the session's other
    audio; when this file's audio counts too (``audio_offset_s`` places it), the video waits for
    its first audio frame. Returns the audio, the video and the origin the video was placed on."""
    streams = opened.first_streams(uri, audio=sink is not None, video=picker is not None)
    stats = {s.index: PacketStats() for s in streams}
    a_index = streams[0].index if sink is not None else -1
    packets = opened.packets(uri, streams)
    if picker is not None:
        packets = picker.leave_out_untaken(packets, streams[-1], stats[streams[-1].index])
    for index, frame in decode_frames(packets, stats):
        if index == a_index:
            sink.feed(frame)  # type: ignore[union-attr]
        else:
            picker.feed(frame)  # type: ignore[union-attr]
        if picker is not None and picker.origin is None:
            _settle_when_known(picker, sink, audio_origin, audio_offset_s)
    audio = sink.finish(stats[a_index]) if sink is not None else None
    if picker is None:
        return audio, None, None
    if picker.origin is None and picker.first_s is not None:
        own = None if audio is None else audio_offset_s + audio.start_s
        picker.settle(_video_origin(_earliest(audio_origin, own), picker))
    return audio, picker.finish(stats[streams[-1].index]), picker.origin


# ---------------------------------------------------------------- the session's files


def _decode_audio_files(
    opened: Sources, rows: list[_Row], video_uri: Optional[str], sink: Callable[[str], AudioSink]
) -> tuple[dict[str, DecodedAudio], Optional[Fraction]]:
    """Audio-only files first (their starts place the video), each in one pass; and the origin
    they give (None: no audio-only file)."""
    decoded: dict[str, DecodedAudio] = {}
    for uri in dict.fromkeys(row.uri for row in rows):
        if uri != video_uri:
            decoded[uri] = _decode_file(opened, uri, sink(uri), None, None)[0]  # type: ignore[assignment]
    starts = [row.offset_s + decoded[row.uri].start_s for row in rows if row.uri in decoded]
    return decoded, (min(starts) if starts else None)


def _decode_video_file(
    opened: Sources,
    uri: str,
    own_offsets: list[Fraction],
    sink: Callable[[str], AudioSink],
    picker: Callable[[], VideoPicker],
    origin: Optional[Fraction],
) -> tuple[Optional[DecodedAudio], VideoResult, Fraction]:
    """The video file's own audio (when rows at ``own_offsets`` use it) and its picture in one pass;
    a file that is not interleaved is read again, once per stream."""
    own_offset = min(own_offsets) if own_offsets else Fraction(0)
    try:
        audio, video, origin = _decode_file(opened, uri, sink(uri) if own_offsets else None, picker(), origin, own_offset)
    except _NotInterleaved:
        opened.reopen(uri)
        audio = _decode_file(opened, uri, sink(uri), None, None)[0]
        assert audio is not None
        opened.reopen(uri)
        _, video, origin = _decode_file(opened, uri, None, picker(), _earliest(origin, own_offset + audio.start_s))
    assert video is not None and origin is not None
    return audio, video, origin


# ---------------------------------------------------------------- placing on the clock


def _place(wave: np.ndarray, offset: int, length: int, share: bool = False) -> np.ndarray:
    """``wave`` put at ``offset`` in a zero array of ``length`` (clipped at both ends). ``share``: a
    wave already in place is returned as it is (a view of the file's buffer), not copied."""
    if share and offset == 0 and wave.shape[0] == length and wave.dtype == np.float32:
        return wave
    out = spill.zeros((length,), like=wave)  # a spilled wave's copy is spilled too
    src0 = max(0, -offset)
    dst0 = max(0, offset)
    n = max(0, min(wave.shape[0] - src0, length - dst0))
    spill.copy(out[dst0 : dst0 + n], wave[src0 : src0 + n])
    return out


def _downmix(wave: np.ndarray) -> np.ndarray:
    """The mean of a [channels, n] wave's channels, window by window (each sample's mean is its own)."""
    out = spill.zeros((wave.shape[1],), like=wave)
    for i in range(0, wave.shape[1], spill.COPY_BLOCK):
        out[i : i + spill.COPY_BLOCK] = wave[:, i : i + spill.COPY_BLOCK].mean(axis=0)
        spill.release(out[i : i + spill.COPY_BLOCK])
        spill.release(wave[:, i : i + spill.COPY_BLOCK])
    return out


def _channel(audio: DecodedAudio, channel: int, downmix: bool) -> tuple[np.ndarray, np.ndarray]:
    if downmix and audio.wave_24k.shape[0] > 1:
        return _downmix(audio.wave_24k), _downmix(audio.wave_16k)
    if channel >= audio.wave_24k.shape[0]:
        raise StageError(
            "decode",
            "wrong_channel_count",
            f"channel {channel} requested, the stream has {audio.wave_24k.shape[0]}",
            source=audio.uri,
        )
    return audio.wave_24k[channel], audio.wave_16k[channel]


def _shareable(audio: DecodedAudio, rows: list[_Row]) -> bool:
    """Whether streams may be views of this file's decode buffers instead of copies (a copy doubles
    decode's peak: 1.15 GB per hour of stereo): when every channel is some row's, so that the views
    keep no unused channel alive (a buffer's spare capacity was never written: it holds no memory)."""
    return {row.channel for row in rows if not row.downmix} == set(range(audio.wave_24k.shape[0]))


def _session_length(
    spec: "SessionSpec", cfg: DecodeConfig, ends: list[int], video: Optional[VideoResult]
) -> int:
    """The session's length at 24 kHz: the longest source after offsets, within the limits."""
    num_samples = max(ends + ([video.end_sample] if video is not None else []))
    if num_samples > GRID.seconds_to_samples(max_timeline_s(cfg)):  # manifest offsets: before placing
        raise too_long("the session's timeline (sources placed by their offsets)",
                       GRID.samples_to_seconds(num_samples), cfg, spec.session_id)
    if num_samples < GRID.seconds_to_samples(cfg.min_duration_s):
        raise StageError(
            "decode", "too_short", f"{num_samples / CODEC_RATE:.3f} s of media (< {cfg.min_duration_s} s)", source=spec.session_id
        )
    return num_samples


def _streams(
    rows: list[_Row], offsets: list[int], decoded: Mapping[str, DecodedAudio], num_samples: int
) -> tuple[AudioStream, ...]:
    num_16k = rescale(num_samples, CODEC_RATE, ASR_RATE, "ceil")
    streams = []
    for row, offset in zip(rows, offsets):
        w24, w16 = _channel(decoded[row.uri], row.channel, row.downmix)
        share = _shareable(decoded[row.uri], [r for r in rows if r.uri == row.uri])
        streams.append(
            AudioStream(
                speaker=row.speaker if row.speaker is not None else MIXED,
                source_uri=row.uri,
                channel=-1 if row.downmix else row.channel,
                wave_24k=_place(w24, offset, num_samples, share),
                wave_16k=_place(w16, rescale(offset, CODEC_RATE, ASR_RATE, "nearest"), num_16k, share),
                offset_sample=offset,
            )
        )
    return tuple(streams)


def _video_frames(uri: str, video: VideoResult, num_samples: int) -> VideoFrames:
    kept = frames_before(video.frame_chunks, GRID.num_chunks(num_samples))
    return VideoFrames(uri, video.frames_rgb[:kept], video.frame_chunks[:kept], video.offset_sample)


def _decoder(opened: Sources, video_uri: Optional[str], video: Optional[VideoResult]) -> DecoderInfo:
    if video is None or video_uri is None:
        return DecoderInfo()
    return replace(opened.decoders.get(video_uri, DecoderInfo()), left_out=video.left_out)


def _provenance(
    spec: "SessionSpec", cfg: DecodeConfig, rows: list[_Row], starts: list[Fraction], offsets: list[int],
    origin: Fraction, video: Optional[VideoResult],
) -> Provenance:
    audio = tuple(
        AudioSource(row.uri, None if row.downmix else row.channel, row.speaker, row.offset_s, start - row.offset_s, offset)
        for row, start, offset in zip(rows, starts, offsets)
    )
    video_source = None
    if spec.video is not None:
        video_source = VideoSource(
            uri=spec.video.uri,
            offset_s=to_fraction(spec.video.offset_s),
            start_s=video.first_s if video is not None else None,
            offset_sample=video.offset_sample if video is not None else None,
            frame_width=cfg.frame_width,
            frame_height=cfg.frame_height,
            resize=cfg.resize,
        )
    return Provenance(origin=origin, audio_from_video=not spec.audio, audio=audio, video=video_source)


# ---------------------------------------------------------------- the session


def decode_session(
    spec: "SessionSpec", cfg: DecodeConfig, *, trace: bool = False, candidates: bool = False
) -> DecodedMedia:
    """Decode every source of ``spec`` onto the session clock. Raises ``StageError`` for bad input.

    Streams come out in manifest order (one per audio row; ``"mixed"`` for a mixed track, or the
    video's own audio when the session lists no audio). ``wave_24k`` of every stream has length
    ``num_samples``; video frames are chosen per chunk and sized ``frame_width x frame_height``.
    ``trace``: also the luma trace of every decoded video frame (the A/V offset estimate's input);
    ``candidates``: also every video frame at output size, so that ``media.video.repick_video``
    can move the picture by the estimated offset (not kept, with a warning, past a limit).
    """
    if cfg.frames_per_chunk > 1:
        raise StageError("decode", "config", "frames_per_chunk > 1 is not supported (frame_chunks must increase)")
    uris = [a.uri for a in spec.audio] + ([spec.video.uri] if spec.video else [])
    with contextlib.ExitStack() as stack:
        opened = Sources(uris, cfg, stack)
        # no first-frame decode in the probe: decoding twice costs time and, for some codecs,
        # exactness (see probe.describe_container); the full pass below proves decodability
        infos = probe_session(spec, cfg, opened, check_decode=False, read_packets=opened.read_packets)

        def picker() -> VideoPicker:
            assert spec.video is not None
            return VideoPicker(spec.video.uri, to_fraction(spec.video.offset_s), cfg, trace=trace, candidates=candidates)

        return _decode_probed(spec, cfg, opened, infos, picker)


def _decode_probed(
    spec: "SessionSpec", cfg: DecodeConfig, opened: Sources, infos: Mapping[str, MediaInfo],
    picker: Callable[[], VideoPicker],
) -> DecodedMedia:
    rows = _rows(spec)
    video_uri = spec.video.uri if spec.video is not None and cfg.frames_per_chunk > 0 else None

    def sink(uri: str) -> AudioSink:
        return AudioSink(uri, cfg, media_duration_s(infos[uri], "audio"))

    decoded, origin = _decode_audio_files(opened, rows, video_uri, sink)
    video: Optional[VideoResult] = None
    if video_uri is not None:
        own_offsets = [row.offset_s for row in rows if row.uri == video_uri]
        audio, video, origin = _decode_video_file(opened, video_uri, own_offsets, sink, picker, origin)
        if audio is not None:
            decoded[video_uri] = audio
    warnings = [f"{w} ({uri.rsplit('/', 1)[-1]})" for uri in dict.fromkeys(row.uri for row in rows)
                for w in decoded[uri].warnings]
    starts = [row.offset_s + decoded[row.uri].start_s for row in rows]
    if origin is None:  # the manifest guarantees audio rows or a video; frames_per_chunk=0 drops video
        raise StageError("decode", "no_audio_stream", "the session has no audio to put on a clock", source=spec.session_id)
    offsets = [round((start - origin) * CODEC_RATE) for start in starts]
    ends = [offset + decoded[row.uri].wave_24k.shape[1] for offset, row in zip(offsets, rows)]
    num_samples = _session_length(spec, cfg, ends, video)
    streams = _streams(rows, offsets, decoded, num_samples)
    del decoded
    if video is not None:
        warnings.extend(video.warnings)
    for w in warnings:
        log.warning("session %s: %s", spec.session_id, w)
    return DecodedMedia(
        session_id=spec.session_id,
        num_samples=num_samples,
        streams=streams,
        video=_video_frames(video_uri, video, num_samples) if video is not None else None,  # type: ignore[arg-type]
        provenance=_provenance(spec, cfg, rows, starts, offsets, origin, video),
        language=spec.language,
        warnings=tuple(warnings),
        trace=video.trace if video is not None else None,
        candidates=video.candidates if video is not None else None,
        decoder=_decoder(opened, video_uri, video),
    )
