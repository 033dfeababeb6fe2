"""Small tone files for the CLI tests (the folder-manifest rules only care about names and channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.media_helpers import write_video
from tests.media_helpers import write_wav as _write_audio


def _tones(channels: int, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])


def write_wav(path: Path, channels: int, seconds: float = 0.5, rate: int = 16000) -> Path:
    return _write_audio(path, _tones(channels, seconds, rate), rate)


def write_flac(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    return _write_audio(path, _tones(1, seconds, rate), rate)


def write_mp4(path: Path, frames: int = 5) -> Path:
    return write_video(path, n_frames=frames, fps=5, size=(32, 32), codec="mpeg4")
