"""Small real media files for the CLI tests, written with the stdlib wave module and PyAV."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, channels: int, seconds: float = 0.5, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tones = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((tones * 32767).astype("<i2").tobytes())
    return path


def write_flac(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    import av

    samples = (0.2 * np.sin(2 * np.pi * 330 * np.arange(int(seconds * rate)) / rate) * 32767).astype(np.int16)
    with av.open(str(path), "w") as c:
        s = c.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_mp4(path: Path, frames: int = 5) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            img = np.full((32, 32, 3), (40 * i) % 256, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path
