"""Pixel frames: which stored form, measured. One 30 s window (150 frames of 80x80 RGB, one per 200 ms
chunk, picked by PTS by ``decode_session``) stored as

- ``npy``: the raw uint8 ``.npy`` member [N, 80, 80, 3] (what microturn writes);
- ``png``: one PNG member per frame (PIL, default settings; lossless);
- ``jpg95``: one JPEG member per frame (PIL, quality 95; lossy: for contrast);
- ``h264_crf18``: one H.264 clip per window (libx264, crf 18, yuv420p, in MP4; lossy: chroma at 40x40);
- ``ffv1``: one FFV1 clip per window (bgr0, in Matroska; lossless);
- ``npy_gz``: the ``.npy`` member gzipped alone (level 6): webdataset's decoder un-gzips a
  ``.gz`` member, but our member table has no compressed members (for contrast only).

Compressing the tar as a whole (``shard.tar.gz``) is not measured: a gzip stream has no random access,
so a loader could no longer seek to a sample or split a shard between workers.

For each form: ``bytes_per_media_hour`` (the window's tar bytes, 512-byte header and padding per
member, x 120 windows an hour), ``decode_fps`` (frames per second turning the member bytes back into a
uint8 [N, 80, 80, 3] array, 1 thread, best of ``--repeats``), ``max_abs_error`` against the decoded
frames (and ``psnr_db``, None when exact). ``loader_fps``: a plain ``webdataset.WebDataset(...).decode("rgb8")``
(no microturn) reading a tar of ``--windows`` such windows, for the forms its standard decoders read
(npy, png, jpg, and npy.gz, which its default gzip pre-handler opens); it has no standard decoder for
video clips (its ``torch_video`` handler needs torchvision), hence none for h264/ffv1.

Frames: ``real`` = every video in ../shared/media/video decoded in turn (80x80, crop) and concatenated
(scene cuts where one file ends), repeated to 150 frames if shorter; ``synth`` = a 30 s
``microturn.synth`` session (its drawn talking-head video).

    .venv/bin/python benchmarks/pixels.py [--repeats 5] [--windows 8]

Prints one JSON line last: the figures per source and form, the chosen form and ``ratio`` = its bytes
per media-hour / raw .npy's (1.0: the choice is raw .npy).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would come first on sys.path: put the repo there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from microturn.format import encode_npy  # noqa: E402

MEDIA = _HERE.parent / ".." / "shared" / "media"
SIZE = 80
WINDOW_FRAMES = 150  # 30 s at one frame per 200 ms chunk
WINDOWS_PER_HOUR = 3600 // 30
FPS = 5


# ---------------------------------------------------------------- frames


def _decoded_frames(row: dict) -> np.ndarray:
    from microturn.config import DecodeConfig
    from microturn.manifest import SessionSpec
    from microturn.pipeline.decode import decode_session

    media = decode_session(SessionSpec.model_validate(row), DecodeConfig(frame_width=SIZE, frame_height=SIZE))
    return np.zeros((0, SIZE, SIZE, 3), np.uint8) if media.video is None else np.asarray(media.video.frames_rgb)


def real_frames() -> tuple[np.ndarray, list[str]]:
    from microturn.errors import MicroturnError

    parts, used = [], []
    for path in sorted((MEDIA / "video").iterdir()):
        try:
            frames = _decoded_frames({"session_id": "bench", "video": {"uri": str(path.resolve())}})
        except MicroturnError as exc:  # a file our decode refuses is not a frame source
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        parts.append(frames)
        used.append(f"{path.name}:{len(frames)}")
    frames = np.concatenate(parts)
    return np.resize(frames, (WINDOW_FRAMES,) + frames.shape[1:]), used


def synth_frames(folder: Path) -> np.ndarray:
    from microturn.synth import manifest_row, synthesize_session

    truth = synthesize_session(folder / "session", "bench", seed=0, duration_s=30.0)
    row = manifest_row(truth, str(folder / "session"))
    return _decoded_frames({k: row[k] for k in ("session_id", "audio", "video") if row.get(k)})[:WINDOW_FRAMES]


# ---------------------------------------------------------------- forms: encode -> list of members, decode


def _image_members(frames: np.ndarray, fmt: str, **opts) -> list[bytes]:
    from PIL import Image

    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, fmt, **opts)
        out.append(buf.getvalue())
    return out


def _decode_images(members: list[bytes]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in members])


def _clip(frames: np.ndarray, codec: str, container: str, pix_fmt: str, options: dict) -> list[bytes]:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, pix_fmt
        stream.options = options
        stream.codec_context.thread_count = 1
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=pix_fmt)))
        out.mux(stream.encode(None))
    return [buf.getvalue()]


def _decode_clip(members: list[bytes]) -> np.ndarray:
    import av

    with av.open(io.BytesIO(members[0])) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])


FORMS: dict[str, tuple[Callable[[np.ndarray], list[bytes]], Callable[[list[bytes]], np.ndarray], str]] = {
    "npy": (lambda x: [encode_npy(x)], lambda m: np.load(io.BytesIO(m[0]), allow_pickle=False), "npy"),
    "png": (lambda x: _image_members(x, "PNG"), _decode_images, "png"),
    "jpg95": (lambda x: _image_members(x, "JPEG", quality=95), _decode_images, "jpg"),
    "h264_crf18": (lambda x: _clip(x, "libx264", "mp4", "yuv420p", {"crf": "18", "preset": "medium"}),
                   _decode_clip, "mp4"),
    "ffv1": (lambda x: _clip(x, "ffv1", "matroska", "bgr0", {}), _decode_clip, "mkv"),
    "npy_gz": (lambda x: [gzip.compress(encode_npy(x), compresslevel=6, mtime=0)],
               lambda m: np.load(io.BytesIO(gzip.decompress(m[0])), allow_pickle=False), "npy.gz"),
}
PLAIN_WEBDATASET = ("npy", "png", "jpg95", "npy_gz")  # forms webdataset's standard decoders read


def tar_bytes(members: list[bytes]) -> int:
    """Bytes the members take in a tar: a 512-byte header each, data padded to 512-byte blocks."""
    return sum(512 + -(-len(b) // 512) * 512 for b in members)


def measure_form(name: str, frames: np.ndarray, repeats: int) -> dict:
    encode, decode, _ = FORMS[name]
    members = encode(frames)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        back = decode(members)
        best = min(best, time.perf_counter() - t0)
    assert back.shape == frames.shape and back.dtype == np.uint8, (name, back.shape, back.dtype)
    diff = back.astype(np.float64) - frames
    mse = float(np.mean(diff**2))
    return {"members": len(members), "payload_bytes": sum(map(len, members)),
            "bytes_per_media_hour": tar_bytes(members) * WINDOWS_PER_HOUR,
            "decode_fps": round(len(frames) / best), "max_abs_error": int(np.abs(diff).max()),
            "psnr_db": round(float(10 * np.log10(255**2 / mse)), 1) if mse else None}


# ---------------------------------------------------------------- plain webdataset loader


def _write_tar(path: Path, name: str, frames: np.ndarray, windows: int) -> None:
    encode, _, ext = FORMS[name]
    members = encode(frames)
    with tarfile.open(path, "w") as tar:
        for w in range(windows):
            for i, data in enumerate(members):
                # one member per frame: "<key>.f0001.png" (webdataset's key ends at the first dot)
                suffix = ext if len(members) == 1 else f"f{i:04d}.{ext}"
                info = tarfile.TarInfo(f"win-{w:06d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def loader_fps(name: str, frames: np.ndarray, windows: int, folder: Path, repeats: int) -> int:
    """Frames per second through ``webdataset.WebDataset(tar).decode("rgb8")``, stacked per window."""
    import webdataset as wds

    path = folder / f"{name}.tar"
    _write_tar(path, name, frames, windows)
    best = float("inf")
    for attempt in range(repeats + 1):  # the first pass warms the page cache and the decoders: not counted
        t0 = time.perf_counter()
        count = 0
        for sample in wds.WebDataset(str(path), shardshuffle=False).decode("rgb8"):
            arrays = [v for k, v in sorted(sample.items()) if not k.startswith("__")]
            x = arrays[0] if len(arrays) == 1 else np.stack(arrays)
            assert x.shape == frames.shape and x.dtype == np.uint8, (name, x.shape, x.dtype)
            count += len(x)
        if attempt:
            best = min(best, time.perf_counter() - t0)
    return round(count / best)


def measure_source(frames: np.ndarray, windows: int, repeats: int, folder: Path) -> dict:
    out = {}
    for name in FORMS:
        out[name] = measure_form(name, frames, repeats)
        if name in PLAIN_WEBDATASET:
            out[name]["loader_fps"] = loader_fps(name, frames, windows, folder, repeats)
        print(f"  {name:11s} {out[name]}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--windows", type=int, default=8, help="windows in the tar the plain webdataset loader reads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        real, used = real_frames()
        synth = synth_frames(folder)
        result: dict = {"size": SIZE, "window_frames": WINDOW_FRAMES, "real_sources": used, "sources": {}}
        for label, frames in (("real", real), ("synth", synth)):
            assert frames.shape == (WINDOW_FRAMES, SIZE, SIZE, 3), frames.shape
            print(f"{label}: {frames.shape}", file=sys.stderr)
            result["sources"][label] = measure_source(frames, args.windows, args.repeats, folder)
    chosen = "npy"  # exact, no decode cost, read by webdataset's numpy decoder (docs/format.md, "Pixel frames")
    result["chosen"] = chosen
    result["ratio"] = {label: round(forms[chosen]["bytes_per_media_hour"] / forms["npy"]["bytes_per_media_hour"], 3)
                       for label, forms in result["sources"].items()}
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
