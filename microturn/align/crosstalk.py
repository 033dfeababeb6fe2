"""Cross-talk suppression for one-speaker-per-channel (or per-microphone) recordings.

Each microphone also picks up the other speakers, a few to a few tens of dB quieter, and a VAD run
per channel marks that leakage as speech. Rule: where several streams are detected at once, a stream
keeps a frame only if its (smoothed) level is within ``margin_db`` of the loudest detected stream at
that frame. Real overlap (both talking into their own microphones) is at comparable levels and
survives; leakage is ``margin_db`` or more below the talker's own channel and is removed.
"""

from __future__ import annotations

import numpy as np

from microturn.align.vad import clean_runs, frame_energy_db, smooth

SMOOTH_FRAMES = 15  # 200 ms: compare syllable-scale loudness, not single frames


def suppress_crosstalk(
    activity: np.ndarray,
    waves_24k: list[np.ndarray],
    margin_db: float,
    min_speech_ms: int = 0,
    min_silence_ms: int = 0,
) -> np.ndarray:
    """uint8 [streams, frames]: ``activity`` with leaked speech removed (see module docstring)."""
    streams, frames = activity.shape
    if streams < 2:
        return activity.copy()
    level = np.stack([smooth(frame_energy_db(w, frames), SMOOTH_FRAMES) for w in waves_24k])
    detected = activity.astype(bool)
    masked = np.where(detected, level, -np.inf)
    loudest = masked.max(axis=0)  # [frames]
    keep = detected & (level >= loudest[None, :] - margin_db)
    out = keep.astype(np.uint8)
    # the rule works frame by frame: tidy the edges it cut with the same run-length limits
    return np.stack([clean_runs(row, min_speech_ms, min_silence_ms) for row in out])
