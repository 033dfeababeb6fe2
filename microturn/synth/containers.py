"""Writing a session's files with PyAV: WAV/FLAC audio, the MP4 with video and mixed audio, JSON.

Every file is byte-identical for given samples (bit-exact muxing and encoding, no timestamps or
encoder versions) and appears whole: written under a hidden ``.partial`` name, then renamed.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

_BITEXACT = {"fflags": "+bitexact"}  # no encoder version tags or creation times in the files
_CODEC_BITEXACT = {"flags": "+bitexact"}


def _pcm_frames(wave: np.ndarray, sr: int, block: int = 16384):
    """AudioFrames (packed s16) from float [channels, samples]."""
    import av

    ch = wave.shape[0]
    layout = "mono" if ch == 1 else "stereo"
    pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    for start in range(0, pcm.shape[1], block):
        part = np.ascontiguousarray(pcm[:, start : start + block].T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(part, format="s16", layout=layout)
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        yield frame


def write_audio_file(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write float [channels, samples] as 16-bit WAV or FLAC (by suffix), bit-exact."""
    import av

    fmt = {".wav": ("wav", "pcm_s16le"), ".flac": ("flac", "flac")}[path.suffix]
    tmp = path.with_name(f".{path.name}.partial")
    with av.open(str(tmp), "w", format=fmt[0], container_options=_BITEXACT) as out:
        stream = out.add_stream(fmt[1], rate=sample_rate, layout="mono" if wave.shape[0] == 1 else "stereo")
        stream.format = "s16"
        stream.options = dict(_CODEC_BITEXACT)
        for frame in _pcm_frames(wave, sample_rate):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)


def _video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(
    path: Path, frames: np.ndarray, fps: int, start_frame: int, mixed: np.ndarray, sample_rate: int
) -> None:
    """MP4 with yuv420p ``frames`` [n, h*3/2, w] from PTS ``start_frame`` (at 1/fps) and mono AAC audio
    from PTS 0; H.264, or MPEG-4 Part 2 where this FFmpeg lacks libx264."""
    import av

    tmp = path.with_name(f".{path.name}.partial")
    codec = _video_codec()
    with av.open(str(tmp), "w", format="mp4", container_options=_BITEXACT) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1] * 2 // 3
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, fps)
        vs.codec_context.gop_size = 2 * fps
        opts = {**_CODEC_BITEXACT, "threads": "1"}
        if codec == "libx264":
            opts.update(preset="veryfast", crf="20")
        else:
            vs.bit_rate = 400_000
        vs.options = opts
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        aus.bit_rate = 64_000
        aus.options = {**_CODEC_BITEXACT, "aac_coder": "fast"}  # 3x faster than twoloop, same size
        # Interleave roughly by time so the file streams well.
        audio_frames = list(_float_frames(mixed, sample_rate))
        ai = 0
        for i, img in enumerate(frames):
            vt = (start_frame + i) / fps
            while ai < len(audio_frames) and audio_frames[ai].pts / sample_rate <= vt:
                out.mux(aus.encode(audio_frames[ai]))
                ai += 1
            vf = av.VideoFrame.from_ndarray(img, format="yuv420p")
            vf.pts = start_frame + i
            vf.time_base = Fraction(1, fps)
            out.mux(vs.encode(vf))
        for f in audio_frames[ai:]:
            out.mux(aus.encode(f))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    os.replace(tmp, path)


def _float_frames(wave: np.ndarray, sr: int, block: int = 4096):
    """AudioFrames (planar float, mono) from float [samples]."""
    import av

    x = np.clip(wave, -1.0, 1.0).astype(np.float32)
    for start in range(0, x.size, block):
        block_x = np.ascontiguousarray(x[None, start : start + block])
        frame = av.AudioFrame.from_ndarray(block_x, format="fltp", layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        yield frame


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as sorted, indented JSON (so equal objects give equal bytes)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)

