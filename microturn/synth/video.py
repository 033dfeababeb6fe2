"""The picture of a session's video: each half's brightness follows one speaker's loudness."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from microturn.synth.voice import TARGET_RMS

VIDEO_REF_RMS = 2.5 * TARGET_RMS  # loudness that maps to full brightness


def loudness_envelope(wave: np.ndarray, sample_rate: int, times_s: np.ndarray, window_s: float) -> np.ndarray:
    """float64 [len(times_s)]: RMS of ``wave`` over a window centred on each time (0 outside the wave).

    The video cue is drawn from this; tests use it on the decoded audio to check sync.
    """
    cs = np.concatenate([[0.0], np.cumsum(np.asarray(wave, dtype=np.float64) ** 2)])
    half = window_s / 2
    lo = np.clip(np.round((times_s - half) * sample_rate).astype(np.int64), 0, wave.size)
    hi = np.clip(np.round((times_s + half) * sample_rate).astype(np.int64), 0, wave.size)
    width = hi - lo
    return np.where(width > 0, np.sqrt((cs[hi] - cs[lo]) / np.maximum(width, 1)), 0.0)


def video_frames(
    rng: np.random.Generator,
    clean: Sequence[np.ndarray],
    sr: int,
    times_s: np.ndarray,
    frame_size: tuple[int, int],
    fps: int,
) -> np.ndarray:
    """uint8 [n, h * 3 // 2, w]: yuv420p frames (PyAV's layout: Y rows, then the U and V planes flat).

    Luma of the left half follows A's loudness and the right half B's, over a faint static texture;
    the halves are tinted (A cool, B warm) for people looking at the demo.
    """
    w, h = frame_size
    levels = np.stack([loudness_envelope(c, sr, times_s, 1.0 / fps) for c in clean], axis=1)  # [n, 2]
    luma = np.round(16.0 + 219.0 * np.clip(levels / VIDEO_REF_RMS, 0.0, 1.0)).astype(np.int16)
    left = np.arange(w) < w // 2
    rows = np.where(left[None, :], luma[:, :1], luma[:, 1:])  # [n, w]
    texture = rng.integers(-5, 6, size=(h, w), dtype=np.int16)
    y = rows[:, None, :] + texture[None]
    y[:, :, w // 2 - 1 : w // 2 + 1] = 16  # a dark divider
    left_c = np.arange(w // 2) < w // 4
    u = np.broadcast_to(np.where(left_c, 140, 112).astype(np.uint8), (h // 2, w // 2))
    v = np.broadcast_to(np.where(left_c, 118, 140).astype(np.uint8), (h // 2, w // 2))
    frames = np.empty((len(times_s), h * 3 // 2, w), dtype=np.uint8)
    frames[:, :h] = np.clip(y, 0, 255)
    frames[:, h:] = np.concatenate([u.ravel(), v.ravel()]).reshape(h // 2, w)
    return frames
