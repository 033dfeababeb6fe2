"""Small real media files written with PyAV, shared by the test folders (import as tests.media_helpers)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest

SHARED_MEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "media"


def shared(*parts: str) -> Path:
    p = SHARED_MEDIA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared media not available: {p}")
    return p


def write_wav(path: Path, wave: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    """``wave``: float [channels, n] (or [n]) in -1..1. A ``.flac`` path gets FLAC, anything else WAV."""
    import av

    container = "flac" if path.suffix == ".flac" else "wav"
    if container == "flac":
        codec = "flac"

    wave = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    channels = wave.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    fmt = "flt" if codec == "pcm_f32le" else "s16"
    with av.open(str(path), "w", format=container) as out:
        st = out.add_stream(codec, rate=rate, layout=layout)
        for i in range(0, wave.shape[1], 4096):
            block = wave[:, i : i + 4096]
            data = block.T.reshape(1, -1)
            if fmt == "s16":
                data = np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
            frame.sample_rate = rate
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def read_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """A whole audio file as float64 [channels, samples] at ``rate`` (PyAV), for measurements."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="dblp", layout=stream.layout.name, rate=rate)
        parts = [f.to_ndarray() for frame in c.decode(stream) for f in resampler.resample(frame)]
        parts += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(parts, axis=1)


def f1(ref: np.ndarray, hyp: np.ndarray) -> float:
    """F1 of two activity masks (any shape): 2 TP / (|ref| + |hyp|)."""
    ref, hyp = ref.astype(bool), hyp.astype(bool)
    tp = float((ref & hyp).sum())
    return 2 * tp / max(float(ref.sum() + hyp.sum()), 1.0)


def burst(rate: int, duration_s: float, on: Sequence[tuple[float, float]], freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    """A silent track with tone bursts at the given (start_s, end_s) spans."""
    n = int(round(duration_s * rate))
    t = np.arange(n) / rate
    x = np.zeros(n, dtype=np.float32)
    for a, b in on:
        m = (t >= a) & (t < b)
        x[m] = amp * np.sin(2 * np.pi * freq * t[m])
    return x


def write_video(
    path: Path,
    n_frames: int,
    fps: int = 10,
    size: tuple[int, int] = (96, 64),
    audio: Optional[np.ndarray] = None,
    audio_rate: int = 16000,
    pts: Optional[Sequence[int]] = None,
    time_base: Fraction = Fraction(1, 1000),
    codec: str = "libx264",
) -> Path:
    """MP4 whose frame i has brightness 10*i (mod 250), so a test can tell which frame it got.
    ``pts`` (in ``time_base`` units) makes a variable-frame-rate file."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = time_base
        vs.codec_context.options = {"qp": "0"} if codec == "libx264" else {}
        ast = None
        if audio is not None:
            ast = out.add_stream("aac", rate=audio_rate, layout="mono")
        for i in range(n_frames):
            img = np.full((h, w, 3), (10 * i) % 250, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts[i] if pts is not None else round(Fraction(i, fps) / time_base)
            frame.time_base = time_base
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if ast is not None and audio is not None:
            for i in range(0, audio.shape[0], 1024):
                block = audio[None, i : i + 1024].astype(np.float32)
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="mono")
                fr.sample_rate = audio_rate
                fr.pts = i
                for p in ast.encode(fr):
                    out.mux(p)
            for p in ast.encode(None):
                out.mux(p)
    return path
