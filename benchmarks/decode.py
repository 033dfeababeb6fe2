"""Decode benchmark: our decode of one media file (audio at 24 kHz + 16 kHz, video frames at the
chunk rate resized to 64x64 RGB) against a baseline doing the same work.

Baseline: the FFmpeg CLI (``ffmpeg -vf fps=5,scale=64:64`` + audio resampling) when a system
``ffmpeg`` exists, else PyAV's plain decode loop (no threading, every frame converted, frames picked
afterwards). Each side runs in its own process (so peak RSS is its own), best of ``--repeats``.

    .venv/bin/python benchmarks/decode.py [--input PATH] [--repeats 3]

Prints one JSON line last: seconds per side, ``ratio`` = baseline time / our time (> 1: ours is
faster), peak RSS of each side, and which baseline ran.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO / ".." / "shared" / "media" / "video" / "flipping_a_pancake.mkv"
WIDTH = HEIGHT = 64


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(path: str) -> dict:
    sys.path.insert(0, str(REPO))
    from microturn.config import DecodeConfig
    from microturn.manifest import SessionSpec
    from microturn.pipeline.decode import decode_session

    spec = SessionSpec.model_validate({"session_id": "bench", "video": {"uri": path}})
    t0 = time.perf_counter()
    out = decode_session(spec, DecodeConfig(frame_width=WIDTH, frame_height=HEIGHT))
    dt = time.perf_counter() - t0
    frames = 0 if out.video is None else int(out.video.frames_rgb.shape[0])
    return {"seconds": dt, "frames": frames, "media_s": out.num_samples / 24000, "peak_rss_mb": _peak_rss_mb()}


def run_pyav_plain(path: str) -> dict:
    """The straightforward PyAV loop: decode everything single-threaded, convert every frame."""
    import av
    import numpy as np

    t0 = time.perf_counter()
    with av.open(path) as c:
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24", width=WIDTH, height=HEIGHT))
            times.append(float(f.time))
    with av.open(path) as c:
        r24 = av.AudioResampler(format="fltp", layout="mono", rate=24000)
        r16 = av.AudioResampler(format="fltp", layout="mono", rate=16000)
        a24, a16 = [], []
        for f in c.decode(audio=0):
            a24 += [o.to_ndarray() for o in r24.resample(f)]
            a16 += [o.to_ndarray() for o in r16.resample(f)]
        a24 += [o.to_ndarray() for o in r24.resample(None)]
        a16 += [o.to_ndarray() for o in r16.resample(None)]
    audio = np.concatenate(a24, axis=1)
    t = np.asarray(times)
    chunks = np.arange(int(np.ceil(audio.shape[1] / 4800)))
    idx = np.clip(np.searchsorted(t, chunks * 0.2, side="right") - 1, 0, len(frames) - 1)
    picked = np.stack([frames[i] for i in idx])
    dt = time.perf_counter() - t0
    return {"seconds": dt, "frames": int(picked.shape[0]), "peak_rss_mb": _peak_rss_mb()}


def run_ffmpeg(path: str) -> dict:
    ff = shutil.which("ffmpeg")
    assert ff is not None
    t0 = time.perf_counter()
    video = subprocess.run(
        [ff, "-v", "error", "-i", path, "-an", "-vf", f"fps=5,scale={WIDTH}:{HEIGHT}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    for rate in (24000, 16000):
        subprocess.run([ff, "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"], capture_output=True, check=True)
    dt = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": dt, "frames": len(video) // (WIDTH * HEIGHT * 3), "peak_rss_mb": usage}


def make_input(folder: Path, seconds: int = 60) -> Path:
    """A 640x360 30 fps H.264 + AAC file (when no --input and no shared media)."""
    import av
    import numpy as np

    path = folder / "bench.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 640, 360, "yuv420p"
        ast = out.add_stream("aac", rate=48000, layout="mono")
        rng = np.random.default_rng(0)
        for i in range(seconds * 30):
            img = np.full((360, 640, 3), (i * 3) % 255, np.uint8)
            img[:, (i * 7) % 600 : (i * 7) % 600 + 40] = 255
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        wave = (0.1 * rng.standard_normal(seconds * 48000)).astype(np.float32)
        for k in range(0, wave.size, 1024):
            f = av.AudioFrame.from_ndarray(wave[None, k : k + 1024].copy(), format="fltp", layout="mono")
            f.sample_rate, f.pts = 48000, k
            for p in ast.encode(f):
                out.mux(p)
        for p in ast.encode(None):
            out.mux(p)
    return path


def _worker(kind: str, path: str, repeats: int) -> dict:
    fn = {"ours": run_ours, "pyav_plain": run_pyav_plain, "ffmpeg_cli": run_ffmpeg}[kind]
    results = [fn(path) for _ in range(repeats)]
    best = min(results, key=lambda r: r["seconds"])
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["ours", "pyav_plain", "ffmpeg_cli"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, str(args.input), args.repeats)))
        return
    tmp = None
    path = args.input
    if path is None:
        if DEFAULT_INPUT.exists():
            path = DEFAULT_INPUT.resolve()
        else:
            tmp = tempfile.TemporaryDirectory()
            path = make_input(Path(tmp.name))
    baseline = "ffmpeg_cli" if shutil.which("ffmpeg") else "pyav_plain"
    figures = {}
    for kind in ("ours", baseline):
        res = subprocess.run(
            [sys.executable, __file__, "--worker", kind, "--input", str(path), "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures[kind] = json.loads(res.stdout.strip().splitlines()[-1])
    ours, base = figures["ours"], figures[baseline]
    line = {
        "benchmark": "decode",
        "input": str(path),
        "media_s": round(ours["media_s"], 3),
        "baseline": baseline,
        "baseline_note": "system ffmpeg CLI" if baseline == "ffmpeg_cli" else "no system ffmpeg: PyAV plain decode loop",
        "ours_s": round(ours["seconds"], 4),
        "baseline_s": round(base["seconds"], 4),
        "ours_frames": ours["frames"],
        "baseline_frames": base["frames"],
        "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        "realtime_x": round(ours["media_s"] / ours["seconds"], 1),
        "ratio": round(base["seconds"] / ours["seconds"], 3),
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(line))


if __name__ == "__main__":
    main()
