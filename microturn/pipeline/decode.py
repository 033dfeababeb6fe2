"""Decode: every source of a session onto one integer clock.

Audio: any container/codec PyAV reads, resampled by FFmpeg's resampler straight to float32 at
24 kHz (codec) and 16 kHz (VAD/ASR), all channels of a file decoded once and shared by the manifest
rows that point at its channels. Video: frames chosen by presentation time, one per 200 ms chunk
(the frame whose presentation interval covers the chunk start), converted to small RGB as they are
decoded, so a full-resolution decoded video is never held.

The session clock: sample 0 is the earliest moment any source has media, where a source's media
begins at ``manifest offset_s + pts of its first decoded frame``. Each source's placement is the
exact rational difference rounded once to the nearest 24 kHz sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from microturn.clock import ASR_RATE, CODEC_RATE, GRID, rescale, to_fraction
from microturn.config import DecodeConfig
from microturn.records import AudioStream, DecodedSession, StageError, VideoFrames

if TYPE_CHECKING:
    from microturn.manifest import SessionSpec

log = logging.getLogger(__name__)

MIXED = "mixed"
_FLOAT_FORMATS = ("flt", "fltp", "dbl", "dblp")
_GAP_TOLERANCE_S = Fraction(1, 10)  # timestamp jumps larger than this are filled with silence
_MAX_ERROR_FRACTION = 0.5  # more packets than this failing -> the stream is corrupt, not noisy


# ---------------------------------------------------------------- small helpers


class _Growable:
    """A [channels, n] float32 buffer that grows by whole windows (amortised, no list of chunks)."""

    def __init__(self, channels: int, capacity: int, step: int) -> None:
        self.data = np.zeros((channels, max(capacity, 1)), dtype=np.float32)
        self.size = 0
        self.step = max(step, 1)

    def append(self, block: np.ndarray) -> None:
        n = block.shape[1]
        if self.size + n > self.data.shape[1]:
            grown = max(self.size + n, self.data.shape[1] + self.step, 2 * self.data.shape[1])
            bigger = np.zeros((self.data.shape[0], grown), dtype=np.float32)
            bigger[:, : self.size] = self.data[:, : self.size]
            self.data = bigger
        self.data[:, self.size : self.size + n] = block
        self.size += n

    def pad(self, n: int) -> None:
        if n > 0:
            self.append(np.zeros((self.data.shape[0], n), dtype=np.float32))

    def result(self) -> np.ndarray:
        return self.data[:, : self.size]


def _configure_threads(stream: Any, cfg: DecodeConfig) -> None:
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster on H.264
    if cfg.threads:
        stream.codec_context.thread_count = cfg.threads


@dataclass
class _PacketStats:
    packets: int = 0
    errors: int = 0


def _decode_packets(container: Any, stream: Any, source: str, kind: str, stats: _PacketStats) -> Iterator[Any]:
    """Frames of one stream, surviving corrupt packets; too many failures is a ``StageError``."""
    import av

    packets = errors = frames = 0
    last_error = ""
    for packet in container.demux(stream):
        packets += 1
        try:
            decoded = packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            errors += 1
            last_error = str(exc)
            continue
        for frame in decoded:
            frames += 1
            yield frame
    stats.packets, stats.errors = packets, errors
    if frames == 0:
        raise StageError(
            "decode", "undecodable", f"{kind} stream yielded no frame ({errors} failing packets) {last_error}", source=source
        )
    if packets and errors / packets > _MAX_ERROR_FRACTION:
        raise StageError(
            "decode", "corrupt_stream", f"{errors} of {packets} {kind} packets failed to decode: {last_error}", source=source
        )


# ---------------------------------------------------------------- audio


@dataclass
class _DecodedAudio:
    """All channels of one file's audio stream, on the file's own timeline."""

    uri: str
    start_s: Fraction  # presentation time of the first decoded sample (container clock)
    wave_24k: np.ndarray  # float32 [channels, n24]
    wave_16k: np.ndarray  # float32 [channels, n16]
    warnings: list[str] = field(default_factory=list)


def _decode_audio(uri: str, cfg: DecodeConfig, expected_s: Optional[float]) -> _DecodedAudio:
    """Decode one file's first audio stream to float32 at 24 kHz and 16 kHz (all channels)."""
    import av

    from microturn.pipeline.probe import open_container

    warnings: list[str] = []
    with open_container(uri, "decode") as container:
        if not container.streams.audio:
            raise StageError("decode", "no_audio_stream", "no audio stream", source=uri)
        stream = container.streams.audio[0]
        _configure_threads(stream, cfg)
        est = int((expected_s or cfg.window_s) * CODEC_RATE) + CODEC_RATE
        step = int(cfg.window_s * CODEC_RATE)
        r24 = r16 = None
        b24 = b16 = None
        start: Optional[Fraction] = None
        consumed_s = Fraction(0)  # input-side length decoded so far, to spot timestamp gaps
        stats = _PacketStats()
        for frame in _decode_packets(container, stream, uri, "audio", stats):
            if frame.samples == 0:
                continue
            if frame.format.name in _FLOAT_FORMATS:
                raw = frame.to_ndarray()
                if not np.isfinite(raw).all():
                    raise StageError("decode", "non_finite_samples", "audio holds NaN or infinite samples", source=uri)
            t = Fraction(frame.pts) * Fraction(frame.time_base) if frame.pts is not None and frame.time_base else None
            if r24 is None:
                layout = frame.layout.name
                channels = len(frame.layout.channels)
                r24 = av.AudioResampler(format="fltp", layout=layout, rate=CODEC_RATE)
                r16 = av.AudioResampler(format="fltp", layout=layout, rate=ASR_RATE)
                b24 = _Growable(channels, est, step)
                b16 = _Growable(channels, est * 2 // 3, step * 2 // 3)
                start = t if t is not None else Fraction(0)
            elif t is not None:
                gap = t - (start + consumed_s)
                if gap > _GAP_TOLERANCE_S:  # a hole in the timeline: keep later audio at its time
                    warnings.append(f"audio_gap:{float(gap):.3f}s")
                    b24.pad(round(gap * CODEC_RATE))
                    b16.pad(round(gap * ASR_RATE))
                    consumed_s += gap
            consumed_s += Fraction(frame.samples, frame.sample_rate)
            try:
                for out in r24.resample(frame):
                    b24.append(out.to_ndarray())
                for out in r16.resample(frame):
                    b16.append(out.to_ndarray())
            except ValueError as exc:  # layout/rate changed mid-stream: rare, treat as corrupt
                raise StageError("decode", "corrupt_stream", f"audio format changed mid-stream: {exc}", source=uri) from exc
        if stats.errors:
            warnings.append(f"audio_decode_errors:{stats.errors}/{stats.packets}")
        if r24 is None or b24 is None or b16 is None or start is None:
            raise StageError("decode", "zero_duration", "audio stream holds no samples", source=uri)
        for out in r24.resample(None):
            b24.append(out.to_ndarray())
        for out in r16.resample(None):
            b16.append(out.to_ndarray())
    w24, w16 = b24.result(), b16.result()
    if w24.shape[1] == 0:
        raise StageError("decode", "zero_duration", "audio stream holds no samples", source=uri)
    return _DecodedAudio(uri, start, w24, w16, warnings)


# ---------------------------------------------------------------- video


def _first_video_time(container: Any, stream: Any) -> Fraction:
    """Presentation time of the first frame the decoder outputs (B-frames and edit lists make
    ``stream.start_time`` an unreliable stand-in)."""
    import av

    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError):
                continue
            for frame in frames:
                if frame.pts is not None:
                    return Fraction(frame.pts) * Fraction(frame.time_base)
        for frame in stream.codec_context.decode(None):
            if frame.pts is not None:
                return Fraction(frame.pts) * Fraction(frame.time_base)
    except (av.error.FFmpegError, ValueError):
        pass
    start = stream.start_time
    return Fraction(start) * Fraction(stream.time_base) if start is not None else Fraction(0)


def frame_to_rgb(frame: Any, width: int, height: int, mode: str) -> np.ndarray:
    """uint8 [height, width, 3]: the frame scaled by swscale (area filter) then cropped/padded."""
    src_w, src_h = frame.width, frame.height
    if mode == "stretch" or (src_w * height == src_h * width):
        return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    if mode == "crop":  # scale so the frame covers the target, then cut the centre
        scale = max(Fraction(width, src_w), Fraction(height, src_h))
        sw, sh = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        img = frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation="AREA")
        x0, y0 = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width])
    # pad: scale so the frame fits inside, then letterbox with black
    scale = min(Fraction(width, src_w), Fraction(height, src_h))
    sw, sh = max(1, min(width, round(src_w * scale))), max(1, min(height, round(src_h * scale)))
    img = frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation="AREA")
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0 = (width - sw) // 2, (height - sh) // 2
    out[y0 : y0 + sh, x0 : x0 + sw] = img
    return out


@dataclass
class _VideoResult:
    frames_rgb: np.ndarray
    frame_chunks: np.ndarray
    offset_sample: int
    end_sample: int  # session sample where the last frame's presentation ends
    first_s: Fraction
    warnings: list[str]


def _decode_video(
    uri: str, offset_s: Fraction, origin_s: Optional[Fraction], cfg: DecodeConfig, *, fixed_origin: bool = False
) -> tuple[_VideoResult, Fraction]:
    """Pick one frame per chunk by presentation time.

    ``origin_s`` is the session origin known from the audio (None when only the video counts);
    returns the result and the origin actually used (``min(origin_s, video start)``, or ``origin_s``
    itself with ``fixed_origin``: frames before it are then dropped).
    """
    from microturn.pipeline.probe import open_container

    chunk = GRID.chunk_samples
    tol = chunk // 2  # a chunk starting up to half a chunk before the first frame still gets it
    warnings: list[str] = []
    with open_container(uri, "decode") as container:
        if not container.streams.video:
            raise StageError("decode", "no_video_stream", "no video stream", source=uri)
        stream = container.streams.video[0]
        _configure_threads(stream, cfg)
        first_s = _first_video_time(container, stream)
        container.seek(0)
        stream.codec_context.flush_buffers()
        video_start = offset_s + first_s
        if fixed_origin and origin_s is not None:
            origin = origin_s
        else:
            origin = video_start if origin_s is None else min(origin_s, video_start)

        def at(t: Fraction) -> int:  # container time -> session sample
            return round((offset_s + t - origin) * CODEC_RATE)

        rgb: list[np.ndarray] = []
        chunks: list[int] = []
        next_c = 0
        prev: Any = None
        prev_sample = 0
        prev_rgb: Optional[np.ndarray] = None
        intervals: list[int] = []
        skipped = 0

        def take(c: int, frame: Any) -> None:
            nonlocal prev_rgb
            if frame is prev and prev_rgb is not None:
                rgb.append(prev_rgb)
            else:
                img = frame_to_rgb(frame, cfg.frame_width, cfg.frame_height, cfg.resize)
                if frame is prev:
                    prev_rgb = img
                rgb.append(img)
            chunks.append(c)

        stats = _PacketStats()
        for frame in _decode_packets(container, stream, uri, "video", stats):
            if frame.pts is None:
                if prev is None:
                    continue
                s = prev_sample + (intervals[-1] if intervals else chunk)
            else:
                s = at(Fraction(frame.pts) * Fraction(frame.time_base))
            if prev is not None and s <= prev_sample:
                skipped += 1  # out-of-order or duplicate timestamp: keep the earlier frame
                continue
            if prev is None:
                next_c = max(0, -(-(s - tol) // chunk))  # first chunk whose start is >= s - tol
            while GRID.chunk_to_sample(next_c) < s:
                if prev is not None:
                    take(next_c, prev)
                elif s - GRID.chunk_to_sample(next_c) <= tol:
                    take(next_c, frame)  # video starts just after this chunk: nearest frame
                next_c += 1
            if prev is not None:
                intervals.append(s - prev_sample)
                if len(intervals) > 64:
                    intervals.pop(0)
            prev, prev_sample, prev_rgb = frame, s, None
        if prev is None:
            raise StageError("decode", "undecodable", "video stream yielded no timestamped frame", source=uri)
        last_len = int(np.median(intervals)) if intervals else chunk
        if prev.duration and prev.time_base:
            last_len = max(1, round(Fraction(prev.duration) * Fraction(prev.time_base) * CODEC_RATE))
        end_sample = prev_sample + last_len
        while GRID.chunk_to_sample(next_c) < end_sample:
            take(next_c, prev)
            next_c += 1
    if stats.errors:
        warnings.append(f"video_decode_errors:{stats.errors}/{stats.packets}")
    if skipped:
        warnings.append(f"video_nonmonotonic_frames:{skipped}")
    frames_rgb = (
        np.stack(rgb) if rgb else np.zeros((0, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8)
    )
    result = _VideoResult(
        frames_rgb=frames_rgb,
        frame_chunks=np.asarray(chunks, dtype=np.int32),
        offset_sample=round((video_start - origin) * CODEC_RATE),
        end_sample=end_sample,
        first_s=first_s,
        warnings=warnings,
    )
    return result, origin


# ---------------------------------------------------------------- the session


def _place(wave: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``wave`` put at ``offset`` in a zero array of ``length`` (clipped at both ends)."""
    out = np.zeros(length, dtype=np.float32)
    src0 = max(0, -offset)
    dst0 = max(0, offset)
    n = min(wave.shape[0] - src0, length - dst0)
    if n > 0:
        out[dst0 : dst0 + n] = wave[src0 : src0 + n]
    return out


def _channel(audio: _DecodedAudio, channel: int, downmix: bool) -> tuple[np.ndarray, np.ndarray]:
    if downmix and audio.wave_24k.shape[0] > 1:
        return audio.wave_24k.mean(axis=0), audio.wave_16k.mean(axis=0)
    if channel >= audio.wave_24k.shape[0]:
        raise StageError(
            "decode",
            "wrong_channel_count",
            f"channel {channel} requested, the stream has {audio.wave_24k.shape[0]}",
            source=audio.uri,
        )
    return audio.wave_24k[channel], audio.wave_16k[channel]


def decode_session(spec: "SessionSpec", cfg: DecodeConfig) -> DecodedSession:
    """Decode every source of ``spec`` onto the session clock. Raises ``StageError`` for bad input.

    Streams come out in manifest order (one per audio row; ``"mixed"`` for a mixed track, or the
    video's own audio when the session lists no audio). ``wave_24k`` of every stream has length
    ``num_samples``; video frames are chosen per chunk and sized ``frame_width x frame_height``.
    """
    from microturn.pipeline.probe import media_duration_s, probe_session

    if cfg.frames_per_chunk > 1:
        raise StageError("decode", "config", "frames_per_chunk > 1 is not supported (frame_chunks must increase)")
    infos = probe_session(spec, cfg)
    warnings: list[str] = []

    # Audio rows (or the video's own track), each file decoded once.
    rows: list[tuple[str, int, Optional[str], Fraction, bool]] = []  # uri, channel, speaker, offset, downmix
    for a in spec.audio:
        downmix = a.speaker is None and "channel" not in a.model_fields_set
        rows.append((a.uri, a.channel, a.speaker, to_fraction(a.offset_s), downmix))
    if not rows and spec.video is not None:
        rows.append((spec.video.uri, 0, None, to_fraction(spec.video.offset_s), True))
    decoded: dict[str, _DecodedAudio] = {}
    for uri, *_ in rows:
        if uri not in decoded:
            decoded[uri] = _decode_audio(uri, cfg, media_duration_s(infos[uri], "audio"))
            warnings.extend(f"{w} ({uri.rsplit('/', 1)[-1]})" for w in decoded[uri].warnings)

    starts = [off + decoded[uri].start_s for uri, _c, _s, off, _d in rows]
    origin: Optional[Fraction] = min(starts) if starts else None

    video: Optional[_VideoResult] = None
    if spec.video is not None and cfg.frames_per_chunk > 0:
        video, origin = _decode_video(spec.video.uri, to_fraction(spec.video.offset_s), origin, cfg)
    if origin is None:  # the manifest guarantees audio rows or a video; frames_per_chunk=0 drops video
        raise StageError("decode", "no_audio_stream", "the session has no audio to put on a clock", source=spec.session_id)

    offsets = [round((st - origin) * CODEC_RATE) for st in starts]
    ends = [off + decoded[row[0]].wave_24k.shape[1] for off, row in zip(offsets, rows)]
    num_samples = max(ends + ([video.end_sample] if video is not None else []))
    if num_samples < GRID.seconds_to_samples(cfg.min_duration_s):
        raise StageError(
            "decode", "too_short", f"{num_samples / CODEC_RATE:.3f} s of media (< {cfg.min_duration_s} s)", source=spec.session_id
        )
    num_16k = rescale(num_samples, CODEC_RATE, ASR_RATE, "ceil")

    streams: list[AudioStream] = []
    for (uri, channel, speaker, off_s, downmix), offset in zip(rows, offsets):
        w24, w16 = _channel(decoded[uri], channel, downmix)
        streams.append(
            AudioStream(
                speaker=speaker if speaker is not None else MIXED,
                source_uri=uri,
                channel=-1 if downmix else channel,
                wave_24k=_place(w24, offset, num_samples),
                wave_16k=_place(w16, rescale(offset, CODEC_RATE, ASR_RATE, "nearest"), num_16k),
                offset_sample=offset,
            )
        )
    del decoded

    num_chunks = GRID.num_chunks(num_samples)
    video_frames: Optional[VideoFrames] = None
    if video is not None:
        keep = video.frame_chunks < num_chunks
        video_frames = VideoFrames(
            source_uri=spec.video.uri,  # type: ignore[union-attr]
            frames_rgb=video.frames_rgb[keep],
            frame_chunks=video.frame_chunks[keep],
            offset_sample=video.offset_sample,
        )
        warnings.extend(video.warnings)

    sources: dict[str, Any] = {
        "origin_s": float(origin),
        "origin": str(origin),  # exact rational, for stages that re-place sources on this clock
        "audio_from_video": not spec.audio,
        "audio": [
            {
                "uri": uri,
                "channel": ch if not dm else None,
                "speaker": sp,
                "offset_s": float(off),
                "start_s": float(starts[i] - off),
                "offset_sample": offsets[i],
            }
            for i, (uri, ch, sp, off, dm) in enumerate(rows)
        ],
    }
    if spec.video is not None:
        sources["video"] = {
            "uri": spec.video.uri,
            "offset_s": float(spec.video.offset_s),
            "start_s": float(video.first_s) if video is not None else None,
            "offset_sample": video.offset_sample if video is not None else None,
            "frame_width": cfg.frame_width,
            "frame_height": cfg.frame_height,
            "resize": cfg.resize,
        }
    for w in warnings:
        log.warning("session %s: %s", spec.session_id, w)
    return DecodedSession(
        session_id=spec.session_id,
        num_samples=num_samples,
        streams=tuple(streams),
        video=video_frames,
        language=spec.language,
        sources=sources,
        warnings=tuple(warnings),
    )


def redecode_video(decoded: DecodedSession, shift_s: Fraction) -> VideoFrames:
    """The session's video frames picked again with the video moved ``shift_s`` earlier on the
    clock (a content sync error: the picture lags the sound by ``shift_s``). The session origin
    and length do not change; frames that would fall before sample 0 or past the end are dropped."""
    info = decoded.sources.get("video")
    if decoded.video is None or not info:
        raise ValueError("the session has no decoded video")
    cfg = DecodeConfig(frame_width=info["frame_width"], frame_height=info["frame_height"], resize=info["resize"])
    origin = to_fraction(decoded.sources["origin"])
    result, _ = _decode_video(info["uri"], to_fraction(info["offset_s"]) - shift_s, origin, cfg, fixed_origin=True)
    keep = result.frame_chunks < GRID.num_chunks(decoded.num_samples)
    return VideoFrames(
        source_uri=info["uri"],
        frames_rgb=result.frames_rgb[keep],
        frame_chunks=result.frame_chunks[keep],
        offset_sample=result.offset_sample,
    )
