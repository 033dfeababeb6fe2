"""Audio: one file's decoded audio frames, resampled as they come to float32 at 24 kHz and 16 kHz.

Why a sink: frames arrive interleaved with the picture in one pass over the file (see
``container.py``), so the resamplers and buffers live across frames. All channels of a file are
kept, so manifest rows naming different channels of one file share one decode. FFmpeg's resampler
goes straight to the codec rate (24 kHz) and the VAD/ASR rate (16 kHz); holes in the timestamps are
filled with silence so later audio keeps its time, up to ``container.max_timeline_s``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from microturn.clock import ASR_RATE, CODEC_RATE
from microturn.errors import StageError
from microturn.media import spill
from microturn.media.container import PacketStats, frame_time, max_timeline_s, too_long

if TYPE_CHECKING:
    from microturn.config import DecodeConfig

_FLOAT_FORMATS = ("flt", "fltp", "dbl", "dblp")
_GAP_TOLERANCE_S = Fraction(1, 10)  # timestamp jumps larger than this are filled with silence
# First allocation of an audio buffer (1 GiB of address space), whatever a header claims: zeroed pages
# hold no memory until written, while growing copies the buffer (twice its size held for a moment), so
# the header's length is trusted this far (93 min of stereo at 24 kHz).
_MAX_INITIAL_FLOATS = 1 << 28


_RELEASE_SAMPLES = 1 << 16  # written samples (256 KiB per channel) handed back at a time


def _in_memory(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


class Growable:
    """A [channels, n] float32 buffer that grows by whole windows (amortised, no list of chunks).

    ``zeros`` allocates it: in memory, or a file mapping (``spill.zeros``), whose written blocks' pages
    go back to the kernel at once: decoding an hour then holds a window of it in memory, not the hour."""

    def __init__(self, channels: int, capacity: int, step: int, zeros: Callable[..., np.ndarray] = _in_memory) -> None:
        self._zeros = zeros
        self.data = zeros((channels, max(capacity, 1)))
        self.size = 0
        self.step = max(step, 1)
        self._released = 0  # samples whose pages went back (a madvise per decoded frame would cost more)

    def append(self, block: np.ndarray) -> None:
        n = block.shape[1]
        if self.size + n > self.data.shape[1]:
            grown = max(self.size + n, self.data.shape[1] + self.step, 2 * self.data.shape[1])
            bigger = self._zeros((self.data.shape[0], grown))
            for start in range(0, self.size, self.step):  # window by window: a spilled copy stays small
                stop = min(start + self.step, self.size)
                bigger[:, start:stop] = self.data[:, start:stop]
                spill.release(bigger[:, start:stop])
                spill.release(self.data[:, start:stop])
            self.data = bigger
        self.data[:, self.size : self.size + n] = block
        self.size += n
        if self.size - self._released >= _RELEASE_SAMPLES:
            spill.release(self.data[:, self._released : self.size])
            self._released = self.size

    def pad(self, n: int) -> None:
        if n > 0:
            self.append(np.zeros((self.data.shape[0], n), dtype=np.float32))

    def result(self) -> np.ndarray:
        return self.data[:, : self.size]


@dataclass
class DecodedAudio:
    """All channels of one file's audio stream, on the file's own timeline."""

    uri: str
    start_s: Fraction  # presentation time of the first decoded sample (container clock)
    wave_24k: np.ndarray  # float32 [channels, n24]
    wave_16k: np.ndarray  # float32 [channels, n16]
    warnings: list[str] = field(default_factory=list)


class AudioSink:
    """Takes one file's audio frames in order; resamples to float32 at 24 kHz and 16 kHz (all
    channels) as they come."""

    def __init__(self, uri: str, cfg: "DecodeConfig", expected_s: Optional[float]) -> None:
        self.uri = uri
        self.warnings: list[str] = []
        self.start: Optional[Fraction] = None  # known from the first frame with samples on
        self._cfg = cfg
        self._max_s = max_timeline_s(cfg)
        self._est = int(min(expected_s or cfg.window_s, float(self._max_s)) * CODEC_RATE) + CODEC_RATE
        self._step = int(cfg.window_s * CODEC_RATE)
        self._r24: Any = None
        self._r16: Any = None
        self._b24: Optional[Growable] = None
        self._b16: Optional[Growable] = None
        self._check_finite = False
        self._consumed_s = Fraction(0)  # input-side length decoded so far, to spot timestamp gaps

    def _append_24k(self, outs: list[Any]) -> None:
        assert self._b24 is not None
        for out in outs:
            block = out.to_ndarray()
            if self._check_finite and not np.isfinite(block).all():
                raise StageError("decode", "non_finite_samples", "audio holds NaN or infinite samples", source=self.uri)
            self._b24.append(block)

    def _start(self, frame: Any, t: Optional[Fraction]) -> None:
        """Resamplers and buffers, from the first frame that holds samples."""
        import av

        layout = frame.layout.name
        channels = len(frame.layout.channels)
        self._r24 = av.AudioResampler(format="fltp", layout=layout, rate=CODEC_RATE)
        self._r16 = av.AudioResampler(format="fltp", layout=layout, rate=ASR_RATE)
        est = min(self._est, _MAX_INITIAL_FLOATS // max(channels, 1))  # grows by doubling past this
        zeros = functools.partial(spill.zeros, folder=self._cfg.spill_dir) if self._cfg.spill else _in_memory
        self._b24 = Growable(channels, est, self._step, zeros)
        self._b16 = Growable(channels, est * 2 // 3, self._step * 2 // 3, zeros)
        self.start = t if t is not None else Fraction(0)
        # NaN/inf survive resampling (NaN * 0 is NaN), so the 24 kHz output is checked rather
        # than converting every input frame a second time
        self._check_finite = frame.format.name in _FLOAT_FORMATS

    def _fill_gap(self, t: Fraction) -> None:
        """A hole in the timeline before ``t``: silence, so later audio keeps its time."""
        assert self.start is not None and self._b24 is not None and self._b16 is not None
        gap = t - (self.start + self._consumed_s)
        if gap <= _GAP_TOLERANCE_S:
            return
        if self._consumed_s + gap > self._max_s:  # checked before the silence is allocated
            raise too_long(f"audio timestamps jump by {float(gap):.1f} s: the track", self._consumed_s + gap,
                           self._cfg, self.uri)
        self.warnings.append(f"audio_gap:{float(gap):.3f}s")
        self._b24.pad(round(gap * CODEC_RATE))
        self._b16.pad(round(gap * ASR_RATE))
        self._consumed_s += gap

    def feed(self, frame: Any) -> None:
        if frame.samples == 0:
            return
        t = frame_time(frame)
        if self._r24 is None:
            self._start(frame, t)
        elif t is not None:
            self._fill_gap(t)
        self._consumed_s += Fraction(frame.samples, frame.sample_rate)
        if self._consumed_s > self._max_s:  # a file with no (or a false) declared duration
            raise too_long("the audio track", self._consumed_s, self._cfg, self.uri)
        try:
            self._append_24k(self._r24.resample(frame))
            for out in self._r16.resample(frame):
                self._b16.append(out.to_ndarray())  # type: ignore[union-attr]
        except ValueError as exc:  # layout/rate changed mid-stream: rare, treat as corrupt
            raise StageError(
                "decode", "corrupt_stream", f"audio format changed mid-stream: {exc}", source=self.uri
            ) from exc

    def finish(self, stats: PacketStats) -> DecodedAudio:
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
        return DecodedAudio(self.uri, self.start, w24, w16, self.warnings)
