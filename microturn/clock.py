"""The one module that owns time.

Every position inside microturn is an integer: samples at the codec rate (24 kHz), codec frames
(hop 320 samples -> 75 frames/s) or 200 ms chunks (4800 samples = 15 codec frames). Seconds appear
only at the edges (manifests, container timestamps, human output) and are converted here, through
exact rationals, with the rounding named at every call. Nothing accumulates floats.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Union

Rounding = Literal["floor", "ceil", "nearest"]
Seconds = Union[int, float, Fraction, str]

CODEC_RATE = 24_000  # EnCodec 24 kHz model
ASR_RATE = 16_000  # VAD / ASR / alignment models
HOP = 320  # EnCodec 24 kHz hop length in samples
FRAMES_PER_CHUNK = 15  # 15 codec frames = 200 ms
CHUNK_SAMPLES = HOP * FRAMES_PER_CHUNK  # 4800


def to_fraction(value: Seconds) -> Fraction:
    """Exact rational for a time given in seconds.

    Floats go through their shortest decimal repr, so ``0.3`` means 3/10 and not the binary
    neighbour just below it (which would floor to the wrong sample).
    """
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool):
        raise TypeError("a time cannot be a bool")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return Fraction(int(value))
    if isinstance(value, numbers.Real):  # float, numpy floats
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"time must be finite, got {value!r}")
        return Fraction(repr(value))
    if isinstance(value, str):
        return Fraction(value.strip())
    raise TypeError(f"cannot read a time from {type(value).__name__}")


def round_fraction(x: Fraction, rounding: Rounding) -> int:
    """Round an exact rational to an integer; 'nearest' rounds halves away from zero."""
    if rounding == "floor":
        return x.numerator // x.denominator
    if rounding == "ceil":
        return -((-x.numerator) // x.denominator)
    if rounding == "nearest":
        sign = -1 if x < 0 else 1
        ax = abs(x)
        return sign * ((2 * ax.numerator + ax.denominator) // (2 * ax.denominator))
    raise ValueError(f"unknown rounding {rounding!r}")


def rescale(position: int, from_rate: int, to_rate: int, rounding: Rounding = "floor") -> int:
    """Convert a sample position between sample rates exactly."""
    return round_fraction(Fraction(position * to_rate, from_rate), rounding)


@dataclass(frozen=True)
class Grid:
    """The sample / codec-frame / chunk grid. Defaults are the EnCodec 24 kHz grid."""

    sample_rate: int = CODEC_RATE
    hop: int = HOP
    frames_per_chunk: int = FRAMES_PER_CHUNK

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop", "frames_per_chunk"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Grid.{name} must be positive")

    @property
    def chunk_samples(self) -> int:
        return self.hop * self.frames_per_chunk

    @property
    def frame_rate(self) -> Fraction:
        """Codec frames per second (75 on the default grid)."""
        return Fraction(self.sample_rate, self.hop)

    @property
    def chunk_seconds(self) -> Fraction:
        return Fraction(self.chunk_samples, self.sample_rate)

    def steps_per_chunk(self, rate: Fraction) -> int:
        """How many steps of a ``rate`` (per second) stream fit one chunk; a rate whose steps do not
        tile a chunk exactly (Mimi's 12.5 Hz: 2.5 per 200 ms) cannot sit on this grid."""
        steps = Fraction(rate) * self.chunk_seconds
        if steps.denominator != 1 or steps <= 0:
            raise ValueError(f"{rate} steps/s gives {steps} steps per {self.chunk_seconds} s chunk: not a whole number")
        return int(steps)

    # seconds <-> samples (the edges)
    def seconds_to_samples(self, seconds: Seconds, rounding: Rounding = "nearest") -> int:
        return round_fraction(to_fraction(seconds) * self.sample_rate, rounding)

    def samples_to_seconds(self, samples: int) -> Fraction:
        return Fraction(samples, self.sample_rate)

    # samples <-> frames
    def sample_to_frame(self, sample: int, rounding: Rounding = "floor") -> int:
        return round_fraction(Fraction(sample, self.hop), rounding)

    def frame_to_sample(self, frame: int) -> int:
        return frame * self.hop

    # frames <-> chunks
    def frame_to_chunk(self, frame: int) -> int:
        return frame // self.frames_per_chunk

    def chunk_to_frame(self, chunk: int) -> int:
        return chunk * self.frames_per_chunk

    def chunk_to_sample(self, chunk: int) -> int:
        return chunk * self.chunk_samples

    def sample_to_chunk(self, sample: int, rounding: Rounding = "floor") -> int:
        return round_fraction(Fraction(sample, self.chunk_samples), rounding)

    def seconds_to_frames(self, seconds: Seconds, rounding: Rounding = "nearest") -> int:
        return round_fraction(to_fraction(seconds) * self.frame_rate, rounding)

    def frames_to_seconds(self, frames: int) -> Fraction:
        return Fraction(frames) / self.frame_rate

    # lengths
    def num_chunks(self, num_samples: int) -> int:
        """Chunks needed to cover ``num_samples`` (the last one may be partly padding)."""
        return self.sample_to_chunk(num_samples, "ceil")

    def padded_samples(self, num_samples: int) -> int:
        """Length in samples once padded up to whole chunks."""
        return self.chunk_to_sample(self.num_chunks(num_samples))

    def valid_frames(self, num_samples: int) -> int:
        """Codec frames that hold any real (non-padding) audio."""
        return self.sample_to_frame(num_samples, "ceil")


GRID = Grid()
