"""Crafted media for the resource-limit tests: small files whose timestamps claim hours.

They are written as live Matroska (no duration in the header, as a stream recorder leaves it), so the
probe cannot see their true span and decode must enforce ``max_duration_s`` itself. A RIFF WAV cannot
carry such timestamps (its demuxer derives them from byte positions); these files hold the same PCM
a WAV does and are named ``.wav``: FFmpeg reads what the bytes are, not what the name says.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np


def pcm_with_timestamp_jump(path: Path, jump_s: float, rate: int = 16000, seconds: float = 4.0) -> Path:
    """Mono PCM: ``seconds`` of tone whose second half is stamped ``jump_s`` later than it plays."""
    import av

    block = 1600
    blocks = int(seconds * rate) // block
    with av.open(str(path), "w", format="matroska", options={"live": "1"}) as out:
        st = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        st.time_base = Fraction(1, rate)
        pts = 0
        for i in range(blocks):
            data = (np.sin(np.arange(block) / 10) * 8000).astype(np.int16)[None]
            fr = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = rate, pts, Fraction(1, rate)
            for p in st.encode(fr):
                out.mux(p)
            pts += block + (round(jump_s * rate) if i == blocks // 2 - 1 else 0)
        for p in st.encode(None):
            out.mux(p)
    return path


def video_with_times(path: Path, pts_ms: Sequence[int], last_duration_ms: int, size: tuple[int, int] = (64, 48)) -> Path:
    """MPEG-4 video, frame i at ``pts_ms[i]``; the last packet claims to last ``last_duration_ms``."""
    import av

    tb = Fraction(1, 1000)
    w, h = size
    with av.open(str(path), "w", format="matroska", options={"live": "1"}) as out:
        vs = out.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = tb
        packets = []
        for i, pts in enumerate(pts_ms):
            fr = av.VideoFrame.from_ndarray(np.full((h, w, 3), (10 * i) % 250, np.uint8), format="rgb24")
            fr.pts, fr.time_base = pts, tb
            packets += list(vs.encode(fr))
        packets += list(vs.encode(None))
        packets[-1].duration = last_duration_ms
        for p in packets:
            out.mux(p)
    return path
