"""Residual audio/video offset: correlate audio loudness with what the picture does.

Container timestamps place the video on the clock already (decode.py); this estimates what they
cannot see, a sync error in the content. Decode's single pass keeps, on request, a tiny luma grid of
every frame (``VideoTrace``, made by ``media/video.py``): brightness and motion per cell. This module
only computes; it opens no file.
For each candidate lag L (1 ms steps) the audio loudness of every stream is read at ``t - L`` for
every frame time t, over a window of one frame interval, and correlated with every cell feature;
the lag with the strongest correlation wins. Because loudness is evaluated at arbitrary times (not
at frame times), the estimate resolves well below one frame interval.

Sign: a positive offset means the video lags the audio (the picture at t shows what was heard at
t - offset). Confidence: the peak correlation (0..1), lowered when a distant lag correlates almost
as well (an ambiguous, periodic or static picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from microturn.clock import CODEC_RATE
from microturn.media import spill
from microturn.records import VideoTrace


@dataclass(frozen=True)
class OffsetEstimate:
    offset_sample: int  # positive: video lags audio
    confidence: float
    peak_correlation: float


def _zscore(x: np.ndarray, axis: int = 0) -> np.ndarray:
    x = x - x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, keepdims=True)
    return np.where(sd > 1e-9, x / np.maximum(sd, 1e-9), 0.0)


# Frames per pass: each pass holds [frames, lags] float64 arrays (8 MB at the default 1,001 lags) and the
# squared audio its frames reach (their span plus the lag range), never a whole session's.
BLOCK_FRAMES = 1024


def _block_loudness(wave: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """RMS over [c - half, c + half) (cut to the wave) for each centre (sample positions, any shape),
    from a cumulative power sum over only the span the centres reach; that span of a spilled wave goes
    back to the kernel once read."""
    n = wave.shape[0]
    lo = np.clip(centres - half, 0, n)
    hi = np.clip(centres + half, 0, n)
    first, last = int(lo.min()), int(hi.max())
    cum = np.zeros(last - first + 1)
    np.cumsum(np.square(wave[first:last], dtype=np.float64), out=cum[1:])
    spill.release(wave[first:last])
    width = np.maximum(hi - lo, 1)
    return np.sqrt(np.maximum(cum[hi - first] - cum[lo - first], 0.0) / width)


class _Moments:
    """Per lag: count, mean and squared deviations of one stream's loudness (Chan et al.'s pairwise
    update, so that a long session's variance keeps its precision) and its sums against each feature."""

    def __init__(self, lags: int, features: int) -> None:
        self.count = 0
        self.mean = np.zeros(lags)
        self.m2 = np.zeros(lags)
        self.cross = np.zeros((lags, features))

    def add(self, loudness: np.ndarray, feats: np.ndarray) -> None:
        """``loudness`` [frames, lags] of a block whose z-scored features are ``feats`` [frames, k]."""
        nb = loudness.shape[0]
        mean_b = loudness.mean(axis=0)
        m2_b = np.square(loudness - mean_b).sum(axis=0)
        total = self.count + nb
        delta = mean_b - self.mean
        self.mean += delta * (nb / total)
        self.m2 += m2_b + np.square(delta) * (self.count * nb / total)
        self.count = total
        self.cross += loudness.T @ feats

    def correlations(self, feature_sums: np.ndarray) -> np.ndarray:
        """[lags, k] Pearson correlations with the features (0 where the loudness does not vary)."""
        sd = np.sqrt(self.m2 / self.count)
        centred = self.cross - self.mean[:, None] * feature_sums[None, :]
        return np.where(sd[:, None] > 1e-9, centred / (self.count * np.maximum(sd, 1e-9))[:, None], 0.0)


def estimate_av_offset(
    waves_24k: Sequence[np.ndarray], trace: VideoTrace, max_offset_ms: float = 500.0, step_ms: float = 1.0,
    block_frames: int = BLOCK_FRAMES,
) -> Optional[OffsetEstimate]:
    """Best lag in ``[-max_offset_ms, +max_offset_ms]``; None when there is too little to compare.

    The frames are taken ``block_frames`` at a time, every lag at once: memory is bounded by the block,
    not by the session (a whole-session cumulative power sum was 0.69 GB per stream and hour)."""
    n = trace.times_sample.shape[0]
    if n < 8 or not waves_24k:
        return None
    intervals = np.diff(trace.times_sample)
    frame_len = int(np.median(intervals[intervals > 0])) if (intervals > 0).any() else CODEC_RATE // 25
    half = max(frame_len // 2, 1)
    feats = _zscore(trace.features.astype(np.float64))  # [n, k]
    keep = feats.std(axis=0) > 0
    if not keep.any():
        return None
    feats = feats[:, keep]
    lags_ms = np.arange(-max_offset_ms, max_offset_ms + step_ms / 2, step_ms)
    lag_samples = np.array([int(round(ms * CODEC_RATE / 1000)) for ms in lags_ms], dtype=np.int64)
    moments = [_Moments(lags_ms.shape[0], feats.shape[1]) for _ in waves_24k]
    for start in range(0, n, block_frames):
        block = slice(start, start + block_frames)
        centres = trace.times_sample[block, None].astype(np.int64) - lag_samples[None, :]  # [frames, lags]
        for wave, m in zip(waves_24k, moments):
            m.add(_block_loudness(wave, centres, half), feats[block])
    # loudness should raise brightness/motion: the best positive correlation of any stream and feature
    feature_sums = feats.sum(axis=0)
    best = np.max([m.correlations(feature_sums).max(axis=1) for m in moments], axis=0)
    k = int(np.argmax(best))
    peak = float(best[k])
    if not np.isfinite(peak) or peak <= 0:
        return None
    # ambiguity: the best correlation at lags farther than two frames from the peak
    far = np.abs(lags_ms - lags_ms[k]) > 2 * frame_len * 1000 / CODEC_RATE
    runner_up = float(best[far].max()) if far.any() else 0.0
    confidence = max(0.0, min(1.0, peak * (1.0 - max(runner_up, 0.0) / peak) * 2)) if peak > 0 else 0.0
    return OffsetEstimate(int(round(lags_ms[k] * CODEC_RATE / 1000)), round(confidence, 4), round(peak, 4))
