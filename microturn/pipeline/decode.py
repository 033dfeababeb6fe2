"""Decode: every source of a session onto one integer clock.

Audio: any container/codec PyAV reads, resampled by FFmpeg's resampler straight to float32 at
24 kHz (codec) and 16 kHz (VAD/ASR), all channels of a file decoded once and shared by the manifest
rows that point at its channels. Video: frames chosen by presentation time, one per 200 ms chunk
(the frame whose presentation interval covers the chunk start), converted to small RGB as they are
decoded, so a full-resolution decoded video is never held.

Each file is opened once per session and read once, front to back: the probe works on the same
container (its first packets are kept and decoded, not re-read), and a file that gives both audio
and picture is decoded in one interleaved pass. Seeking back to the start is never used, because
it is not exact (see ``probe.describe_container``).

The session clock: sample 0 is the earliest moment any source has media, where a source's media
begins at ``manifest offset_s + pts of its first decoded frame``. Each source's placement is the
exact rational difference rounded once to the nearest 24 kHz sample.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional

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
_MAX_PENDING_FRAMES = 48  # decoded video frames held while a file's first audio frame is awaited
_MAX_INITIAL_FLOATS = 1 << 26  # first allocation of an audio buffer (256 MB), whatever a header claims


def max_timeline_s(cfg: DecodeConfig) -> Fraction:
    """The longest timeline decode builds, for a file or a session: ``max_duration_s`` plus the
    disagreement allowed between sources. Buffers are checked against it as they grow, so a
    crafted file (timestamps that jump by hours, a last frame lasting a day, a huge manifest
    offset) is refused before its silence or its frames are allocated."""
    return to_fraction(cfg.max_duration_s) + to_fraction(cfg.duration_tolerance_s)


def _too_long(what: str, seconds: Fraction, cfg: DecodeConfig, source: Optional[str]) -> StageError:
    return StageError(
        "decode",
        "too_long",
        f"{what} reaches {float(seconds):.1f} s (> max_duration_s {cfg.max_duration_s:g} s "
        f"+ duration_tolerance_s {cfg.duration_tolerance_s:g} s)",
        source=source,
    )


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
    """Must run before the stream's first decode: FFmpeg fixes threading when the codec opens."""
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster on H.264
    if cfg.threads:
        stream.codec_context.thread_count = cfg.threads


class _Sources(Mapping[str, Any]):
    """The session's media files, each opened once (on first use) and read once, front to back.

    Opening is not free (FFmpeg's stream-info probe decodes a few frames: ~30 ms for a 720p H.264
    file), and seeking back is not exact (see ``probe.describe_container``): packets the probe
    reads are kept in ``read_packets`` and decoded before demuxing goes on, and a file that gives
    both audio and video is decoded in one interleaved pass.
    """

    def __init__(self, uris: list[str], cfg: DecodeConfig, stack: contextlib.ExitStack, stage: str = "probe") -> None:
        self._uris = list(dict.fromkeys(uris))
        self._cfg = cfg
        self._stage = stage  # the stage named by errors while opening
        self._stack = stack
        self._open: dict[str, Any] = {}
        self._passes: set[str] = set()
        self.read_packets: dict[str, list[Any]] = {uri: [] for uri in self._uris}

    def __getitem__(self, uri: str) -> Any:
        if uri not in self.read_packets:
            raise KeyError(uri)
        if uri not in self._open:
            from microturn.pipeline.probe import open_container

            self._open[uri] = self._threaded(self._stack.enter_context(open_container(uri, self._stage)))
        return self._open[uri]

    def _threaded(self, container: Any) -> Any:
        for stream in (*container.streams.audio[:1], *container.streams.video[:1]):
            if stream.codec_context is not None:
                _configure_threads(stream, self._cfg)
        return container

    def __iter__(self) -> Iterator[str]:
        return iter(self._uris)

    def __len__(self) -> int:
        return len(self._uris)

    def reopen(self, uri: str) -> None:
        """Open ``uri`` afresh for one more pass (the old container closes with the session)."""
        from microturn.pipeline.probe import open_container

        self._open[uri] = self._threaded(self._stack.enter_context(open_container(uri, "decode")))
        self.read_packets[uri] = []
        self._passes.discard(uri)

    def packets(self, uri: str, streams: list[Any]) -> Iterator[Any]:
        """Every packet of ``streams`` from the start of the file, then the flush packets (once)."""
        if uri in self._passes:
            raise RuntimeError(f"{uri} was already decoded in this session")  # a bug, not bad input
        self._passes.add(uri)
        container = self[uri]
        wanted = {s.index for s in streams}
        kept, self.read_packets[uri] = self.read_packets[uri], []
        for packet in kept:
            if packet.stream.index in wanted:
                yield packet
        yield from container.demux(*streams)


@contextlib.contextmanager
def _one_file(uri: str, cfg: DecodeConfig) -> Iterator[_Sources]:
    with contextlib.ExitStack() as stack:
        yield _Sources([uri], cfg, stack, stage="decode")


@dataclass
class _PacketStats:
    packets: int = 0
    errors: int = 0
    frames: int = 0
    last_error: str = ""

    def check(self, source: str, kind: str) -> None:
        """Too many failures is a ``StageError``: the stream is corrupt, not noisy."""
        if self.frames == 0:
            raise StageError(
                "decode",
                "undecodable",
                f"{kind} stream yielded no frame ({self.errors} failing packets) {self.last_error}",
                source=source,
            )
        if self.packets and self.errors / self.packets > _MAX_ERROR_FRACTION:
            raise StageError(
                "decode",
                "corrupt_stream",
                f"{self.errors} of {self.packets} {kind} packets failed to decode: {self.last_error}",
                source=source,
            )


def _decode_frames(packets: Iterator[Any], stats: dict[int, _PacketStats]) -> Iterator[tuple[int, Any]]:
    """(stream index, frame) in file order, surviving corrupt packets (counted in ``stats``)."""
    import av

    for packet in packets:
        st = stats[packet.stream.index]
        st.packets += 1
        try:
            decoded = packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            st.errors += 1
            st.last_error = str(exc)
            continue
        for frame in decoded:
            st.frames += 1
            yield packet.stream.index, frame


# ---------------------------------------------------------------- audio


@dataclass
class _DecodedAudio:
    """All channels of one file's audio stream, on the file's own timeline."""

    uri: str
    start_s: Fraction  # presentation time of the first decoded sample (container clock)
    wave_24k: np.ndarray  # float32 [channels, n24]
    wave_16k: np.ndarray  # float32 [channels, n16]
    warnings: list[str] = field(default_factory=list)


class _AudioSink:
    """Takes one file's audio frames in order; resamples to float32 at 24 kHz and 16 kHz (all
    channels) as they come."""

    def __init__(self, uri: str, cfg: DecodeConfig, expected_s: Optional[float]) -> None:
        self.uri = uri
        self.warnings: list[str] = []
        self.start: Optional[Fraction] = None  # known from the first frame with samples on
        self._cfg = cfg
        self._max_s = max_timeline_s(cfg)
        self._est = int(min(expected_s or cfg.window_s, float(self._max_s)) * CODEC_RATE) + CODEC_RATE
        self._step = int(cfg.window_s * CODEC_RATE)
        self._r24: Any = None
        self._r16: Any = None
        self._b24: Optional[_Growable] = None
        self._b16: Optional[_Growable] = None
        self._check_finite = False
        self._consumed_s = Fraction(0)  # input-side length decoded so far, to spot timestamp gaps

    def _append_24k(self, outs: list[Any]) -> None:
        assert self._b24 is not None
        for out in outs:
            block = out.to_ndarray()
            if self._check_finite and not np.isfinite(block).all():
                raise StageError("decode", "non_finite_samples", "audio holds NaN or infinite samples", source=self.uri)
            self._b24.append(block)

    def feed(self, frame: Any) -> None:
        import av

        if frame.samples == 0:
            return
        t = Fraction(frame.pts) * Fraction(frame.time_base) if frame.pts is not None and frame.time_base else None
        if self._r24 is None:
            layout = frame.layout.name
            channels = len(frame.layout.channels)
            self._r24 = av.AudioResampler(format="fltp", layout=layout, rate=CODEC_RATE)
            self._r16 = av.AudioResampler(format="fltp", layout=layout, rate=ASR_RATE)
            est = min(self._est, _MAX_INITIAL_FLOATS // max(channels, 1))  # grows by doubling past this
            self._b24 = _Growable(channels, est, self._step)
            self._b16 = _Growable(channels, est * 2 // 3, self._step * 2 // 3)
            self.start = t if t is not None else Fraction(0)
            # NaN/inf survive resampling (NaN * 0 is NaN), so the 24 kHz output is checked rather
            # than converting every input frame a second time
            self._check_finite = frame.format.name in _FLOAT_FORMATS
        elif t is not None:
            assert self.start is not None and self._b24 is not None and self._b16 is not None
            gap = t - (self.start + self._consumed_s)
            if gap > _GAP_TOLERANCE_S:  # a hole in the timeline: keep later audio at its time
                if self._consumed_s + gap > self._max_s:  # checked before the silence is allocated
                    raise _too_long(f"audio timestamps jump by {float(gap):.1f} s: the track", self._consumed_s + gap,
                                    self._cfg, self.uri)
                self.warnings.append(f"audio_gap:{float(gap):.3f}s")
                self._b24.pad(round(gap * CODEC_RATE))
                self._b16.pad(round(gap * ASR_RATE))
                self._consumed_s += gap
        self._consumed_s += Fraction(frame.samples, frame.sample_rate)
        if self._consumed_s > self._max_s:  # a file with no (or a false) declared duration
            raise _too_long("the audio track", self._consumed_s, self._cfg, self.uri)
        try:
            self._append_24k(self._r24.resample(frame))
            for out in self._r16.resample(frame):
                self._b16.append(out.to_ndarray())  # type: ignore[union-attr]
        except ValueError as exc:  # layout/rate changed mid-stream: rare, treat as corrupt
            raise StageError(
                "decode", "corrupt_stream", f"audio format changed mid-stream: {exc}", source=self.uri
            ) from exc

    def finish(self, stats: _PacketStats) -> _DecodedAudio:
        stats.check(self.uri, "audio")
        if stats.errors:
            self.warnings.append(f"audio_decode_errors:{stats.errors}/{stats.packets}")
        if self._r24 is None or self._b24 is None or self._b16 is None or self.start is None:
            raise StageError("decode", "zero_duration", "audio stream holds no samples", source=self.uri)
        self._append_24k(self._r24.resample(None))
        for out in self._r16.resample(None):
            self._b16.append(out.to_ndarray())
        w24, w16 = self._b24.result(), self._b16.result()
        if w24.shape[1] == 0:
            raise StageError("decode", "zero_duration", "audio stream holds no samples", source=self.uri)
        return _DecodedAudio(self.uri, self.start, w24, w16, self.warnings)


# ---------------------------------------------------------------- video


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


class _VideoPicker:
    """Takes one file's video frames in order and keeps one per chunk, chosen by presentation time.

    The frame for chunk ``c`` is the one whose presentation interval covers the chunk start; frames
    no chunk needs are passed over before any pixel conversion. Frames are placed on the session
    clock, so they wait (``pending``) until ``settle`` gives the origin. The video start is the
    presentation time of the first frame the decoder outputs (B-frames and edit lists make
    ``stream.start_time`` an unreliable stand-in).
    """

    def __init__(self, uri: str, offset_s: Fraction, cfg: DecodeConfig) -> None:
        self.uri = uri
        self.offset_s = offset_s
        self.cfg = cfg
        self.first_s: Optional[Fraction] = None
        self.origin: Optional[Fraction] = None
        self.pending: list[Any] = []
        self._rgb: list[np.ndarray] = []
        self._chunks: list[int] = []
        self._next_c = 0
        self._prev: Any = None
        self._prev_sample = 0
        self._prev_rgb: Optional[np.ndarray] = None
        self._intervals: list[int] = []
        self._skipped = 0
        self._max_sample = GRID.seconds_to_samples(max_timeline_s(cfg))

    def feed(self, frame: Any) -> None:
        if frame.width * frame.height > self.cfg.max_frame_pixels:  # a resolution change mid-stream
            raise StageError(
                "decode",
                "frame_too_large",
                f"a {frame.width}x{frame.height} frame exceeds max_frame_pixels {self.cfg.max_frame_pixels}",
                source=self.uri,
            )
        if self.origin is not None:
            self._pick(frame)
        elif frame.pts is not None or self.pending:  # untimed frames before the first are useless
            if self.first_s is None:
                self.first_s = Fraction(frame.pts) * Fraction(frame.time_base)
            self.pending.append(frame)

    def settle(self, origin: Fraction) -> None:
        self.origin = origin
        pending, self.pending = self.pending, []
        for frame in pending:
            self._pick(frame)

    def _take(self, c: int, frame: Any) -> None:
        if frame is self._prev and self._prev_rgb is not None:
            self._rgb.append(self._prev_rgb)  # one frame covering several chunks is converted once
        else:
            img = frame_to_rgb(frame, self.cfg.frame_width, self.cfg.frame_height, self.cfg.resize)
            if frame is self._prev:
                self._prev_rgb = img
            self._rgb.append(img)
        self._chunks.append(c)

    def _pick(self, frame: Any) -> None:
        chunk = GRID.chunk_samples
        tol = chunk // 2  # a chunk starting up to half a chunk before the first frame still gets it
        prev = self._prev
        if frame.pts is None:
            if prev is None:
                return
            s = self._prev_sample + (self._intervals[-1] if self._intervals else chunk)
        else:
            t = Fraction(frame.pts) * Fraction(frame.time_base)
            s = round((self.offset_s + t - self.origin) * CODEC_RATE)  # type: ignore[operator]
        if s > self._max_sample:  # before any chunk is filled up to it
            raise _too_long("a video frame's timestamp", GRID.samples_to_seconds(s), self.cfg, self.uri)
        if prev is not None and s <= self._prev_sample:
            self._skipped += 1  # out-of-order or duplicate timestamp: keep the earlier frame
            return
        if prev is None:
            self._next_c = max(0, -(-(s - tol) // chunk))  # first chunk whose start is >= s - tol
        while GRID.chunk_to_sample(self._next_c) < s:
            if prev is not None:
                self._take(self._next_c, prev)
            elif s - GRID.chunk_to_sample(self._next_c) <= tol:
                self._take(self._next_c, frame)  # video starts just after this chunk: nearest frame
            self._next_c += 1
        if prev is not None:
            self._intervals.append(s - self._prev_sample)
            if len(self._intervals) > 64:
                self._intervals.pop(0)
        self._prev, self._prev_sample, self._prev_rgb = frame, s, None

    def finish(self, stats: _PacketStats) -> _VideoResult:
        stats.check(self.uri, "video")
        prev = self._prev
        if prev is None or self.first_s is None or self.origin is None:
            raise StageError("decode", "undecodable", "video stream yielded no timestamped frame", source=self.uri)
        warnings: list[str] = []
        last_len = int(np.median(self._intervals)) if self._intervals else GRID.chunk_samples
        if prev.duration and prev.time_base:
            last_len = max(1, round(Fraction(prev.duration) * Fraction(prev.time_base) * CODEC_RATE))
        end_sample = self._prev_sample + last_len
        if end_sample > self._max_sample:  # a last frame that claims to last for hours
            raise _too_long("the last video frame's duration", GRID.samples_to_seconds(end_sample), self.cfg, self.uri)
        while GRID.chunk_to_sample(self._next_c) < end_sample:
            self._take(self._next_c, prev)
            self._next_c += 1
        if stats.errors:
            warnings.append(f"video_decode_errors:{stats.errors}/{stats.packets}")
        if self._skipped:
            warnings.append(f"video_nonmonotonic_frames:{self._skipped}")
        cfg = self.cfg
        frames_rgb = (
            np.stack(self._rgb) if self._rgb else np.zeros((0, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8)
        )
        return _VideoResult(
            frames_rgb=frames_rgb,
            frame_chunks=np.asarray(self._chunks, dtype=np.int32),
            offset_sample=round((self.offset_s + self.first_s - self.origin) * CODEC_RATE),
            end_sample=end_sample,
            first_s=self.first_s,
            warnings=warnings,
        )


def _earliest(a: Optional[Fraction], b: Optional[Fraction]) -> Optional[Fraction]:
    return b if a is None else (a if b is None else min(a, b))


class _NotInterleaved(Exception):
    """A file's video ran far ahead of its audio in one pass (see ``_decode_file``)."""


def _video_origin(audio_origin: Optional[Fraction], picker: _VideoPicker, fixed: bool) -> Fraction:
    """``min(audio origin, video start)``, or the audio origin itself when ``fixed`` (frames
    before it are then dropped)."""
    assert picker.first_s is not None
    video_start = picker.offset_s + picker.first_s
    if audio_origin is None:
        return video_start
    return audio_origin if fixed else min(audio_origin, video_start)


def _decode_file(
    opened: _Sources,
    uri: str,
    sink: Optional[_AudioSink],
    picker: Optional[_VideoPicker],
    audio_origin: Optional[Fraction],
    audio_offset_s: Fraction = Fraction(0),
    fixed_origin: bool = False,
) -> tuple[Optional[_DecodedAudio], Optional[_VideoResult], Optional[Fraction]]:
    """One pass over one file: its first audio stream into ``sink``, its first video stream into
    ``picker`` (either may be None). ``audio_origin`` is the earliest start of the session's other
    audio; when this file's audio counts too (``audio_offset_s`` places it), the video waits for
    its first audio frame. Returns the audio, the video and the origin the video was placed on."""
    container = opened[uri]
    streams: list[Any] = []
    if sink is not None:
        if not container.streams.audio:
            raise StageError("decode", "no_audio_stream", "no audio stream", source=uri)
        streams.append(container.streams.audio[0])
    if picker is not None:
        if not container.streams.video:
            raise StageError("decode", "no_video_stream", "no video stream", source=uri)
        streams.append(container.streams.video[0])
    stats = {s.index: _PacketStats() for s in streams}
    a_index = streams[0].index if sink is not None else -1

    def ready() -> Optional[Fraction]:  # the origin, once everything it depends on is known
        if picker is None or picker.first_s is None or (sink is not None and sink.start is None):
            return None
        own = None if sink is None else audio_offset_s + sink.start  # type: ignore[operator]
        return _video_origin(_earliest(audio_origin, own), picker, fixed_origin)

    for index, frame in _decode_frames(opened.packets(uri, streams), stats):
        if index == a_index:
            sink.feed(frame)  # type: ignore[union-attr]
        else:
            picker.feed(frame)  # type: ignore[union-attr]
        if picker is not None and picker.origin is None:
            origin = ready()
            if origin is not None:
                picker.settle(origin)
            elif len(picker.pending) >= _MAX_PENDING_FRAMES:
                # no audio frame yet after many video frames (a file that is not interleaved):
                # the picture waits for a second pass rather than in memory
                raise _NotInterleaved()
    audio = sink.finish(stats[a_index]) if sink is not None else None
    video = None
    origin = None
    if picker is not None:
        if picker.origin is None and picker.first_s is not None:
            own = None if audio is None else audio_offset_s + audio.start_s
            picker.settle(_video_origin(_earliest(audio_origin, own), picker, fixed_origin))
        video = picker.finish(stats[streams[-1].index])
        origin = picker.origin
    return audio, video, origin


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
    from microturn.pipeline.probe import probe_session

    if cfg.frames_per_chunk > 1:
        raise StageError("decode", "config", "frames_per_chunk > 1 is not supported (frame_chunks must increase)")
    uris = [a.uri for a in spec.audio] + ([spec.video.uri] if spec.video else [])
    with contextlib.ExitStack() as stack:
        opened = _Sources(uris, cfg, stack)
        # no first-frame decode in the probe: decoding twice costs time and, for some codecs,
        # exactness (see probe.describe_container); the full pass below proves decodability
        infos = probe_session(spec, cfg, opened, check_decode=False, read_packets=opened.read_packets)
        return _decode_probed(spec, cfg, opened, infos)


def _decode_probed(
    spec: "SessionSpec", cfg: DecodeConfig, opened: _Sources, infos: Mapping[str, Any]
) -> DecodedSession:
    from microturn.pipeline.probe import media_duration_s

    warnings: list[str] = []

    # Audio rows (or the video's own track), each file decoded once.
    rows: list[tuple[str, int, Optional[str], Fraction, bool]] = []  # uri, channel, speaker, offset, downmix
    for a in spec.audio:
        downmix = a.speaker is None and "channel" not in a.model_fields_set
        rows.append((a.uri, a.channel, a.speaker, to_fraction(a.offset_s), downmix))
    if not rows and spec.video is not None:
        rows.append((spec.video.uri, 0, None, to_fraction(spec.video.offset_s), True))
    video_uri = spec.video.uri if spec.video is not None and cfg.frames_per_chunk > 0 else None

    def sink(uri: str) -> _AudioSink:
        return _AudioSink(uri, cfg, media_duration_s(infos[uri], "audio"))

    # Audio-only files first: their starts place the video. Each file is decoded in one pass.
    decoded: dict[str, _DecodedAudio] = {}
    for uri in dict.fromkeys(row[0] for row in rows):
        if uri != video_uri:
            decoded[uri] = _decode_file(opened, uri, sink(uri), None, None)[0]  # type: ignore[assignment]
    starts_known = [off + decoded[uri].start_s for uri, _c, _s, off, _d in rows if uri in decoded]
    origin: Optional[Fraction] = min(starts_known) if starts_known else None

    video: Optional[_VideoResult] = None
    if video_uri is not None:
        assert spec.video is not None
        offset_s = to_fraction(spec.video.offset_s)
        own_offsets = [off for uri, _c, _s, off, _d in rows if uri == video_uri]
        own_offset = min(own_offsets) if own_offsets else Fraction(0)
        try:  # the video file's own audio (when a row uses it) and its picture in one pass
            audio, video, origin = _decode_file(
                opened,
                video_uri,
                sink(video_uri) if own_offsets else None,
                _VideoPicker(video_uri, offset_s, cfg),
                origin,
                own_offset,
            )
        except _NotInterleaved:
            opened.reopen(video_uri)
            audio = _decode_file(opened, video_uri, sink(video_uri), None, None)[0]
            assert audio is not None
            opened.reopen(video_uri)
            _, video, origin = _decode_file(
                opened,
                video_uri,
                None,
                _VideoPicker(video_uri, offset_s, cfg),
                _earliest(origin, own_offset + audio.start_s),
            )
        if audio is not None:
            decoded[video_uri] = audio
    for uri in dict.fromkeys(row[0] for row in rows):
        warnings.extend(f"{w} ({uri.rsplit('/', 1)[-1]})" for w in decoded[uri].warnings)
    starts = [off + decoded[uri].start_s for uri, _c, _s, off, _d in rows]
    if origin is None:  # the manifest guarantees audio rows or a video; frames_per_chunk=0 drops video
        raise StageError("decode", "no_audio_stream", "the session has no audio to put on a clock", source=spec.session_id)

    offsets = [round((st - origin) * CODEC_RATE) for st in starts]
    ends = [off + decoded[row[0]].wave_24k.shape[1] for off, row in zip(offsets, rows)]
    num_samples = max(ends + ([video.end_sample] if video is not None else []))
    if num_samples > GRID.seconds_to_samples(max_timeline_s(cfg)):  # manifest offsets: before placing
        raise _too_long("the session's timeline (sources placed by their offsets)",
                        GRID.samples_to_seconds(num_samples), cfg, spec.session_id)
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
    with _one_file(info["uri"], cfg) as opened:
        picker = _VideoPicker(info["uri"], to_fraction(info["offset_s"]) - shift_s, cfg)
        _, result, _ = _decode_file(opened, info["uri"], None, picker, origin, fixed_origin=True)
    assert result is not None
    keep = result.frame_chunks < GRID.num_chunks(decoded.num_samples)
    return VideoFrames(
        source_uri=info["uri"],
        frames_rgb=result.frames_rgb[keep],
        frame_chunks=result.frame_chunks[keep],
        offset_sample=result.offset_sample,
    )
