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


def _loudness_at(cum: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """RMS over [c - half, c + half) for each centre (sample positions), from a cumulative power sum."""
    n = cum.shape[0] - 1
    lo = np.clip(centres - half, 0, n)
    hi = np.clip(centres + half, 0, n)
    width = np.maximum(hi - lo, 1)
    return np.sqrt(np.maximum(cum[hi] - cum[lo], 0.0) / width)


def estimate_av_offset(
    waves_24k: Sequence[np.ndarray], trace: VideoTrace, max_offset_ms: float = 500.0, step_ms: float = 1.0
) -> Optional[OffsetEstimate]:
    """Best lag in ``[-max_offset_ms, +max_offset_ms]``; None when there is too little to compare."""
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
    cums = [np.concatenate([[0.0], np.cumsum(np.square(w, dtype=np.float64))]) for w in waves_24k]
    lags_ms = np.arange(-max_offset_ms, max_offset_ms + step_ms / 2, step_ms)
    best = np.zeros(lags_ms.shape[0])
    for i, lag_ms in enumerate(lags_ms):
        centres = trace.times_sample - int(round(lag_ms * CODEC_RATE / 1000))
        audio = np.stack([_loudness_at(c, centres, half) for c in cums], axis=1)  # [n, streams]
        corr = _zscore(audio).T @ feats / n  # [streams, k] Pearson correlations
        best[i] = np.max(corr)  # loudness should raise brightness/motion: positive correlation
    k = int(np.argmax(best))
    peak = float(best[k])
    if not np.isfinite(peak) or peak <= 0:
        return None
    # ambiguity: the best correlation at lags farther than two frames from the peak
    far = np.abs(lags_ms - lags_ms[k]) > 2 * frame_len * 1000 / CODEC_RATE
    runner_up = float(best[far].max()) if far.any() else 0.0
    confidence = max(0.0, min(1.0, peak * (1.0 - max(runner_up, 0.0) / peak) * 2)) if peak > 0 else 0.0
    return OffsetEstimate(int(round(lags_ms[k] * CODEC_RATE / 1000)), round(confidence, 4), round(peak, 4))
