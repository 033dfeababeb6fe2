"""Video: one file's decoded frames, picked by presentation time onto the chunk grid as they come.

Why here: the picture is read once, in the same pass as the audio (see ``container.py``), so
everything later stages need from it is taken in that pass. ``VideoPicker`` keeps one small RGB frame
per 200 ms chunk (the frame whose presentation interval covers the chunk start), converted only
when a chunk takes it, so a full-resolution decoded video is never held. On request it also keeps
- the luma trace (``VideoTrace``: a ``GRID_CELLS`` x ``GRID_CELLS`` brightness grid and its motion
  per decoded frame) that ``align/av_offset.py`` correlates with the audio loudness;
- the frame candidates (``FrameCandidates``: every frame at output size with its place on the
  clock), from which ``repick_video`` picks the frames again for a picture moved by an estimated
  A/V offset, without opening the file a second time.

With ``decode.skip_nonref`` the decoder drops non-reference frames (``skip_frame = "NONREF"``, only for
streams with at least twice the frames the chunks take, see ``container.configure_video``). Picking
stays exact for the frames that are decoded, so a chunk whose exact frame was skipped gets the decoded
frame shown before it: never a later frame, and at most k frame intervals earlier, where k is the
longest run of consecutive non-reference frames in presentation order (the stream's B-frames that no
other frame references: at most 1 with x264's default B-pyramid, up to its ``bframes`` (3) without one;
120 ms at 25 fps). The luma trace of the A/V offset estimate sees the decoded frames only.

Without it, picking is exact and still leaves undecoded what no chunk takes: an H.264 picture that no
other picture references (``h264.DisposableTest``) is not sent to the decoder when the pictures
around it in the stream show that no chunk start falls in its presentation interval. It still takes
its place on the clock (``_Undecoded``), so every chunk gets the frame a full decode gives it, bit for
bit. Only when neither the luma trace nor the frame candidates are asked for: they want every frame.
"""

from __future__ import annotations

import functools
import heapq
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np

from microturn.clock import CODEC_RATE, GRID
from microturn.errors import StageError
from microturn.media import spill
from microturn.media.container import PacketStats, frame_time, max_timeline_s, too_long
from microturn.media.h264 import DisposableTest
from microturn.records import DecodedMedia, FrameCandidates, VideoFrames, VideoTrace

if TYPE_CHECKING:
    from microturn.config import DecodeConfig

GRID_CELLS = 4  # the luma trace's grid: 4 x 4 cells, each the mean of 4 x 4 pixels of a 16 x 16 thumbnail
# The A/V offset estimate needs a few minutes of picture, not hours (20 000 frames: 13 min at 25 fps).
MAX_TRACE_FRAMES = 20_000
# Frame candidates cost frame_width x frame_height x 3 bytes each: 19 KiB at 80 x 80, 2 GB per hour of
# 30 fps picture. Spilled like the picked frames (``decode.spill``) that is disk, not memory, up to the
# first limit (4 hours there); held in memory, up to the second. Past it the session keeps none and
# says so in its warnings: the offset cannot be applied.
MAX_CANDIDATE_BYTES = {"spilled": 8 << 30, "in_memory": 256 << 20}
# Packets a disposable picture waits for the pictures around it (decode order) before it is left out
# or decoded; a reorder window needs a handful (x264: B-frames + 1), more only costs a little memory.
UNTAKEN_LOOKAHEAD = 16
FIRST_FRAMES = 256  # the picked frames' first allocation (51 s of chunks); it doubles as needed
RELEASE_FRAMES = 256  # spilled frames go back to the kernel this many at a time (5 MB at 80 x 80)


def scaler() -> Any:
    """A swscale context to reuse across frames: a frame's own ``to_ndarray`` sets one up per call
    (2x slower for small RGB, 6x for the trace's thumbnails); the pixels are the same."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def _scaled(sws: Any, frame: Any, fmt: str, width: int, height: int) -> np.ndarray:
    return sws.reformat(frame, width=width, height=height, format=fmt, interpolation="AREA").to_ndarray()


def frame_to_rgb(frame: Any, width: int, height: int, mode: str, sws: Any) -> np.ndarray:
    """uint8 [height, width, 3]: the frame scaled by swscale (area filter, ``sws`` from ``scaler``)
    then cropped/padded."""
    src_w, src_h = frame.width, frame.height
    if mode == "stretch" or (src_w * height == src_h * width):
        return _scaled(sws, frame, "rgb24", width, height)
    if mode == "crop":  # scale so the frame covers the target, then cut the centre
        scale = max(Fraction(width, src_w), Fraction(height, src_h))
        sw, sh = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        img = _scaled(sws, frame, "rgb24", sw, sh)
        x0, y0 = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width])
    # pad: scale so the frame fits inside, then letterbox with black
    scale = min(Fraction(width, src_w), Fraction(height, src_h))
    sw, sh = max(1, min(width, round(src_w * scale))), max(1, min(height, round(src_h * scale)))
    img = _scaled(sws, frame, "rgb24", sw, sh)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0 = (width - sw) // 2, (height - sh) // 2
    out[y0 : y0 + sh, x0 : x0 + sw] = img
    return out


class _Picture:
    """One frame at output size, converted at most once and only when something takes it."""

    __slots__ = ("_frame", "_convert", "_rgb")

    def __init__(self, frame: Any = None, convert: Optional[Callable[[Any], np.ndarray]] = None,
                 rgb: Optional[np.ndarray] = None) -> None:
        self._frame, self._convert, self._rgb = frame, convert, rgb

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            assert self._convert is not None
            self._rgb = self._convert(self._frame)
            self._frame = None
        return self._rgb


def _frame_zeros(cfg: "DecodeConfig") -> Callable[[tuple[int, ...]], np.ndarray]:
    """How the picked frames' array is allocated: spilled to a file like the waves (``decode.spill``)."""
    if cfg.spill:
        return functools.partial(spill.zeros, folder=cfg.spill_dir, dtype=np.uint8)
    return functools.partial(np.zeros, dtype=np.uint8)


class _FrameStore:
    """uint8 [n, height, width, 3] frames appended one at a time, grown by doubling. Allocated by
    ``zeros``: with ``spill.zeros`` the frames written go back to the kernel every ``RELEASE_FRAMES``,
    so hours of picture cost disk, not memory (0.35 GB per hour at 80 x 80)."""

    def __init__(self, shape: tuple[int, int], zeros: Callable[[tuple[int, ...]], np.ndarray]) -> None:
        self._zeros = zeros
        self.data = zeros((FIRST_FRAMES, *shape, 3))
        self.size = 0
        self._released = 0

    def append(self, image: np.ndarray) -> None:
        if self.size == self.data.shape[0]:
            bigger = self._zeros((2 * self.size, *self.data.shape[1:]))
            spill.copy(bigger[: self.size], self.data, RELEASE_FRAMES)  # a spilled copy stays small
            self.data = bigger
        self.data[self.size] = image
        self.size += 1
        if self.size - self._released >= RELEASE_FRAMES:
            spill.release(self.data[self._released : self.size])
            self._released = self.size

    def result(self) -> np.ndarray:
        return self.data[: self.size]


class _ChunkFill:
    """Frames in presentation order, placed on session samples -> one frame per chunk.

    Chunk ``c`` gets the frame whose presentation interval covers its start; a chunk starting up to
    half a chunk before the first frame still gets that frame; chunks before it get none."""

    def __init__(self, height: int, width: int,
                 zeros: Callable[[tuple[int, ...]], np.ndarray] = functools.partial(np.zeros, dtype=np.uint8)) -> None:
        self._frames = _FrameStore((height, width), zeros)
        self._chunks: list[int] = []
        self._next_c = 0
        self._prev: Optional[_Picture] = None

    def place(self, s: int, picture: _Picture) -> None:
        """``picture`` presented from sample ``s`` on (later than every frame placed before)."""
        chunk = GRID.chunk_samples
        tol = chunk // 2
        prev = self._prev
        if prev is None:
            self._next_c = max(0, -(-(s - tol) // chunk))  # first chunk whose start is >= s - tol
        while GRID.chunk_to_sample(self._next_c) < s:
            if prev is not None:
                self._take(self._next_c, prev)
            elif s - GRID.chunk_to_sample(self._next_c) <= tol:
                self._take(self._next_c, picture)  # video starts just after this chunk: nearest frame
            self._next_c += 1
        self._prev = picture

    def _take(self, c: int, picture: _Picture) -> None:
        self._frames.append(picture.rgb())
        self._chunks.append(c)

    def finish(self, end_sample: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [n, height, width, 3] frames and int32 [n] chunks, the last frame lasting to ``end_sample``."""
        while self._prev is not None and GRID.chunk_to_sample(self._next_c) < end_sample:
            self._take(self._next_c, self._prev)
            self._next_c += 1
        return self._frames.result(), np.asarray(self._chunks, dtype=np.int32)


class LumaTrace:
    """Per-cell brightness of every decoded frame, for the A/V offset estimate (``align/av_offset.py``)."""

    def __init__(self, max_frames: int = MAX_TRACE_FRAMES) -> None:
        self._max_frames = max_frames
        self._sws = scaler()
        self._times: list[Fraction] = []
        self._cells: list[np.ndarray] = []

    def observe(self, frame: Any, t: Fraction) -> None:
        if len(self._times) >= self._max_frames:
            return
        n = GRID_CELLS * 4
        small = _scaled(self._sws, frame, "gray", n, n)
        self._times.append(t)
        self._cells.append(small.reshape(GRID_CELLS, 4, GRID_CELLS, 4).mean(axis=(1, 3)).reshape(-1))

    def result(self, offset_s: Fraction, origin: Fraction) -> VideoTrace:
        """Frames in time order on the session clock (placed as the picker places them); features
        float32 [n, 2 * GRID_CELLS**2]: the cell means, then their absolute change from the frame before."""
        times = np.asarray([round((offset_s + t - origin) * CODEC_RATE) for t in self._times], dtype=np.int64)
        order = np.argsort(times, kind="stable")
        luma = np.asarray(self._cells, dtype=np.float32)[order] if self._cells else np.zeros((0, GRID_CELLS**2), np.float32)
        motion = np.abs(np.diff(luma, axis=0, prepend=luma[:1])) if len(luma) else luma
        return VideoTrace(times[order], np.concatenate([luma, motion], axis=1))


class _Candidates:
    """Every frame the picker placed, at output size, with its session sample (bounded: ``max_frames``),
    stored like the picked frames (``_FrameStore``)."""

    def __init__(self, shape: tuple[int, int], zeros: Callable[[tuple[int, ...]], np.ndarray], max_frames: int) -> None:
        self.samples: list[int] = []
        self._frames: Optional[_FrameStore] = _FrameStore(shape, zeros)
        self.max_frames = max_frames

    @property
    def dropped(self) -> bool:
        return self._frames is None

    def add(self, s: int, picture: _Picture) -> None:
        if self._frames is None:  # dropped
            return
        if len(self.samples) >= self.max_frames:
            self.samples, self._frames = [], None  # the spilled store goes with its last reference
            return
        self.samples.append(s)
        self._frames.append(picture.rgb())

    def result(self, end_sample: int) -> Optional[FrameCandidates]:
        if self._frames is None or not self.samples:  # dropped, or no frame came
            return None
        return FrameCandidates(np.asarray(self.samples, dtype=np.int64), self._frames.result(), end_sample)


def _candidate_limit(cfg: "DecodeConfig") -> int:
    """How many frame candidates a session may keep (``MAX_CANDIDATE_BYTES``)."""
    limit = MAX_CANDIDATE_BYTES["spilled" if cfg.spill else "in_memory"]
    return max(1, limit // (cfg.frame_width * cfg.frame_height * 3))


@dataclass(frozen=True)
class _Undecoded:
    """A picture left out of the decoder: what placing it on the clock needs, no pixels."""

    pts: int
    time_base: Fraction
    duration: int


class _UntakenFilter:
    """Packets of one video stream, minus the disposable pictures no chunk takes.

    A picture's presentation interval ends where the next picture in presentation order starts; that
    one is among the ``UNTAKEN_LOOKAHEAD`` packets before or after it in decode order, so each video
    packet waits for that many more. A later start found among fewer packets only lengthens the
    interval (more chunks may take the frame), so a short window costs decoding, never exactness.
    """

    def __init__(self, picker: "VideoPicker", test: DisposableTest, index: int, stats: PacketStats) -> None:
        self._picker, self._test, self._index, self._stats = picker, test, index, stats
        self._ahead: deque[Any] = deque()
        self._behind: deque[Optional[int]] = deque(maxlen=UNTAKEN_LOOKAHEAD)

    def __call__(self, packets: Iterator[Any]) -> Iterator[Any]:
        for packet in packets:
            if packet.stream.index != self._index:
                yield packet
                continue
            self._ahead.append(packet)
            if len(self._ahead) > UNTAKEN_LOOKAHEAD:
                yield from self._release(self._ahead.popleft())
        while self._ahead:
            yield from self._release(self._ahead.popleft())

    def _release(self, packet: Any) -> Iterator[Any]:
        if self._decode(packet):
            yield packet
        self._behind.append(packet.pts)

    def _decode(self, packet: Any) -> bool:
        pts = packet.pts
        if pts is None or not packet.size or not packet.time_base or not self._test.disposable(memoryview(packet)):
            return True
        later = [p for p in (*self._behind, *(a.pts for a in self._ahead)) if p is not None and p > pts]
        tb = Fraction(packet.time_base)
        if not later or self._picker.takes(pts * tb, min(later) * tb):
            return True
        self._picker.left_out(_Undecoded(pts, tb, packet.duration or 0))
        self._stats.packets += 1  # a packet of the stream all the same (the error fraction counts it)
        return False


@dataclass
class VideoResult:
    """One file's picked frames and where they sit; the trace and candidates when asked for."""

    frames_rgb: np.ndarray  # uint8 [n, height, width, 3]
    frame_chunks: np.ndarray  # int32 [n]
    offset_sample: int  # where the first decoded frame sits on the session clock
    end_sample: int  # session sample where the last frame's presentation ends
    first_s: Fraction  # presentation time of the first decoded frame, container clock
    warnings: list[str]
    trace: Optional[VideoTrace] = None
    candidates: Optional[FrameCandidates] = None
    left_out: int = 0  # disposable pictures no chunk takes, not decoded


class VideoPicker:
    """Takes one file's video frames in order and keeps one per chunk, chosen by presentation time.

    Frames are placed on the session clock, so they wait (``pending``) until ``settle`` gives the
    origin. The video start is the presentation time of the first frame the decoder outputs
    (B-frames and edit lists make ``stream.start_time`` an unreliable stand-in). ``trace`` and
    ``candidates``: also keep the luma trace and the frame candidates (see the module docstring).
    """

    def __init__(self, uri: str, offset_s: Fraction, cfg: "DecodeConfig", *, trace: bool = False,
                 candidates: bool = False) -> None:
        self.uri = uri
        self.offset_s = offset_s
        self.cfg = cfg
        self.first_s: Optional[Fraction] = None
        self.origin: Optional[Fraction] = None
        self.pending: list[Any] = []
        self._fill = _ChunkFill(cfg.frame_height, cfg.frame_width, _frame_zeros(cfg))
        self._sws = scaler()
        self._trace = LumaTrace() if trace else None
        self._candidates = (_Candidates((cfg.frame_height, cfg.frame_width), _frame_zeros(cfg), _candidate_limit(cfg))
                            if candidates else None)
        self._prev: Any = None
        self._prev_sample = 0
        self._intervals: list[int] = []
        self._skipped = 0
        self._max_sample = GRID.seconds_to_samples(max_timeline_s(cfg))
        self._undecoded: list[tuple[Fraction, int, _Undecoded]] = []  # a heap by presentation time
        self._left_out = 0
        self._last_decoded: Optional[_Picture] = None
        self._stood_in = 0

    def feed(self, frame: Any) -> None:
        if frame.width * frame.height > self.cfg.max_frame_pixels:  # a resolution change mid-stream
            raise StageError(
                "decode",
                "frame_too_large",
                f"a {frame.width}x{frame.height} frame exceeds max_frame_pixels {self.cfg.max_frame_pixels}",
                source=self.uri,
            )
        t = frame_time(frame)
        if self._trace is not None and t is not None:
            self._trace.observe(frame, t)
        if self.origin is not None:
            self._place_undecoded(before=t)
            self._pick(frame, t)
        elif t is not None or self.pending:  # untimed frames before the first are useless
            if self.first_s is None:
                self.first_s = t
            self.pending.append(frame)

    def settle(self, origin: Fraction) -> None:
        self.origin = origin
        pending, self.pending = self.pending, []
        for frame in pending:
            self._pick(frame, frame_time(frame))

    def leave_out_untaken(self, packets: Iterator[Any], stream: Any, stats: PacketStats) -> Iterator[Any]:
        """``packets`` without the disposable pictures of ``stream`` that no chunk takes (see the
        module docstring); all of them when the trace, the candidates or ``skip_nonref`` are on."""
        ctx = stream.codec_context
        wants_all = self._trace is not None or self._candidates is not None or self.cfg.skip_nonref
        test = None if wants_all or ctx is None else DisposableTest.for_stream(ctx.name, ctx.extradata)
        return packets if test is None else _UntakenFilter(self, test, stream.index, stats)(packets)

    def takes(self, start_s: Fraction, end_s: Fraction) -> bool:
        """Whether a chunk would take a frame presented from ``start_s`` until ``end_s`` (container
        clock) after the frames placed so far; True while the picture's place is not yet known."""
        if self.origin is None or self._prev is None:
            return True
        first_chunk = -(-max(self._sample_of(start_s), 0) // GRID.chunk_samples)
        return GRID.chunk_to_sample(first_chunk) < self._sample_of(end_s)

    def left_out(self, picture: _Undecoded) -> None:
        """A picture not decoded: it takes its place on the clock when the frames around it come."""
        heapq.heappush(self._undecoded, (frame_time(picture), self._left_out, picture))  # type: ignore[misc]
        self._left_out += 1

    def _place_undecoded(self, before: Optional[Fraction]) -> None:
        """Pictures left out that are presented before ``before`` (None: all), in presentation order."""
        while self._undecoded and (before is None or self._undecoded[0][0] < before):
            t, _, picture = heapq.heappop(self._undecoded)
            self._pick(picture, t)

    def _stand_in(self, last: Optional[_Picture]) -> np.ndarray:
        """Pixels for a left-out picture a chunk took after all: only when the picture that ends its
        interval was lost (a packet that failed to decode). The frame decoded before it, counted in
        the warnings."""
        self._stood_in += 1
        if last is None:
            return np.zeros((self.cfg.frame_height, self.cfg.frame_width, 3), dtype=np.uint8)
        return last.rgb()

    def _sample_of(self, t: Optional[Fraction]) -> int:
        if t is None:  # an untimed frame lasts as long as the one before
            return self._prev_sample + (self._intervals[-1] if self._intervals else GRID.chunk_samples)
        return round((self.offset_s + t - self.origin) * CODEC_RATE)  # type: ignore[operator]

    def _pick(self, frame: Any, t: Optional[Fraction]) -> None:
        if t is None and self._prev is None:
            return
        s = self._sample_of(t)
        if s > self._max_sample:  # before any chunk is filled up to it
            raise too_long("a video frame's timestamp", GRID.samples_to_seconds(s), self.cfg, self.uri)
        if self._prev is not None and s <= self._prev_sample:
            self._skipped += 1  # out-of-order or duplicate timestamp: keep the earlier frame
            return
        if isinstance(frame, _Undecoded):
            last = self._last_decoded
            picture = _Picture(frame, lambda _: self._stand_in(last))
        else:
            picture = _Picture(frame, self._to_rgb)
        self._fill.place(s, picture)
        if not isinstance(frame, _Undecoded):
            self._last_decoded = picture
        if self._candidates is not None:
            self._candidates.add(s, picture)
        if self._prev is not None:
            self._intervals.append(s - self._prev_sample)
            if len(self._intervals) > 64:
                self._intervals.pop(0)
        self._prev, self._prev_sample = frame, s

    def _to_rgb(self, frame: Any) -> np.ndarray:
        return frame_to_rgb(frame, self.cfg.frame_width, self.cfg.frame_height, self.cfg.resize, self._sws)

    def _end_sample(self) -> int:
        """Where the last frame's presentation ends: its own duration, else the usual interval."""
        prev = self._prev
        last_len = int(np.median(self._intervals)) if self._intervals else GRID.chunk_samples
        if prev.duration and prev.time_base:
            last_len = max(1, round(Fraction(prev.duration) * Fraction(prev.time_base) * CODEC_RATE))
        end_sample = self._prev_sample + last_len
        if end_sample > self._max_sample:  # a last frame that claims to last for hours
            raise too_long("the last video frame's duration", GRID.samples_to_seconds(end_sample), self.cfg, self.uri)
        return end_sample

    def finish(self, stats: PacketStats) -> VideoResult:
        stats.check(self.uri, "video")
        self._place_undecoded(before=None)
        if self._prev is None or self.first_s is None or self.origin is None:
            raise StageError("decode", "undecodable", "video stream yielded no timestamped frame", source=self.uri)
        end_sample = self._end_sample()
        frames_rgb, frame_chunks = self._fill.finish(end_sample)
        warnings: list[str] = []
        if stats.errors:
            warnings.append(f"video_decode_errors:{stats.errors}/{stats.packets}")
        if self._skipped:
            warnings.append(f"video_nonmonotonic_frames:{self._skipped}")
        if self._stood_in:
            warnings.append(f"video_undecoded_frames_taken:{self._stood_in}")
        candidates = self._candidates.result(end_sample) if self._candidates is not None else None
        if self._candidates is not None and self._candidates.dropped:
            warnings.append(f"video_candidates_dropped:>{self._candidates.max_frames}")  # the offset cannot be applied
        return VideoResult(
            frames_rgb=frames_rgb,
            frame_chunks=frame_chunks,
            offset_sample=round((self.offset_s + self.first_s - self.origin) * CODEC_RATE),
            end_sample=end_sample,
            first_s=self.first_s,
            warnings=warnings,
            trace=self._trace.result(self.offset_s, self.origin) if self._trace is not None else None,
            candidates=candidates,
            left_out=self._left_out,
        )


def repick_video(media: DecodedMedia, shift_sample: int) -> VideoFrames:
    """The session's video frames picked again with the picture moved ``shift_sample`` earlier on the
    clock (a content sync error: the picture lags the sound), from ``media.candidates``: no file is
    opened. ``media`` is as decode returned it. The session origin and length do not change; frames
    that would fall before sample 0 or past the end are dropped.

    Every frame moves by exactly ``shift_sample``, so the result is what decoding the file again
    with the video's manifest offset lowered by ``shift_sample / 24000`` s picks, except for a frame
    whose exact time falls on half a sample: such a decode rounds it half to even, one sample off
    this translation when ``shift_sample`` is odd."""
    video, cand = media.video, media.candidates
    if video is None or cand is None:
        raise ValueError("no frame candidates: decode_session(candidates=True) keeps them, up to a limit")
    # the new frames are stored where the picked ones were (a spilled session's on disk); the candidates'
    # pages go back to the kernel as they are read
    zeros = functools.partial(spill.zeros, like=video.frames_rgb, dtype=np.uint8)
    fill = _ChunkFill(cand.frames_rgb.shape[1], cand.frames_rgb.shape[2], zeros)
    for i, s in enumerate(cand.samples.tolist()):
        fill.place(s - shift_sample, _Picture(rgb=cand.frames_rgb[i]))
        if (i + 1) % RELEASE_FRAMES == 0:
            spill.release(cand.frames_rgb[i + 1 - RELEASE_FRAMES : i + 1])
    frames_rgb, frame_chunks = fill.finish(cand.end_sample - shift_sample)
    kept = frames_before(frame_chunks, GRID.num_chunks(media.num_samples))
    return VideoFrames(video.source_uri, frames_rgb[:kept], frame_chunks[:kept], video.offset_sample - shift_sample)


def frames_before(frame_chunks: np.ndarray, num_chunks: int) -> int:
    """How many picked frames belong to chunks before ``num_chunks``. Chunks increase, so those frames are
    a prefix: keep them as a view (a mask would copy a spilled array into memory, 0.35 GB per hour)."""
    return int(np.searchsorted(frame_chunks, num_chunks))
