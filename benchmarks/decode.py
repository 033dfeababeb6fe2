"""Decode benchmark: our decode of one session (audio at 24 kHz + 16 kHz, video frames at the
chunk rate resized to 64x64 RGB) against a baseline doing the same work.

Input: a media file (``--input``; decoded as a video-only session whose audio is the video's own
track, or as one mixed audio track when it has no video), or a generated conversation
(``--synth-seconds N``: microturn.synth, two per-speaker WAVs + an MP4). Default: the shared
flipping_a_pancake.mkv, else a generated 60 s H.264 file.

Baseline: the FFmpeg CLI (``ffmpeg -vf fps=5,scale=64:64`` + audio resampled to 24 kHz and 16 kHz)
when a system ``ffmpeg`` exists, else PyAV's plain decode loop (no threading, every frame converted,
frames picked afterwards). Each run is its own process (so peak RSS is its own); the two sides
alternate, ``--repeats`` rounds, and the best time of each side counts (other processes on the
machine only ever add time); medians are printed too.

    .venv/bin/python benchmarks/decode.py [--input PATH | --synth-seconds 60] [--repeats 3] [--av-offset]

``--av-offset``: ours also keeps what the A/V offset estimate needs (the luma trace of every frame and
the frame candidates, ``decode_session(trace=True, candidates=True)``), still in its one pass over the
file; the baseline does not change.

Prints one JSON line last: seconds per side, ``ratio`` = baseline time / our time (> 1: ours is
faster; the goal is >= 0.8, ours within 1.25x of the baseline), peak RSS of each side, and which
baseline ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would come first on sys.path: put the repo there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from microturn.clock import ASR_RATE, CHUNK_SAMPLES, CODEC_RATE  # noqa: E402

REPO = _HERE.parent
DEFAULT_INPUT = REPO / ".." / "shared" / "media" / "video" / "flipping_a_pancake.mkv"
WIDTH = HEIGHT = 64


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(row: dict) -> tuple[list[str], str | None]:
    """The files whose audio is decoded (the video's own when the row lists none) and the video."""
    video = row["video"]["uri"] if row.get("video") else None
    audio = list(dict.fromkeys(a["uri"] for a in row.get("audio") or [])) or [video]
    return audio, video  # type: ignore[return-value]


def run_ours(row: dict, av_offset: bool = False) -> dict:
    import av  # noqa: F401  (imported before the clock starts, as the baselines do)

    from microturn.config import DecodeConfig
    from microturn.manifest import SessionSpec
    from microturn.pipeline.decode import decode_session

    spec = SessionSpec.model_validate(row)
    t0 = time.perf_counter()
    out = decode_session(spec, DecodeConfig(frame_width=WIDTH, frame_height=HEIGHT), trace=av_offset, candidates=av_offset)
    dt = time.perf_counter() - t0
    frames = 0 if out.video is None else int(out.video.frames_rgb.shape[0])
    return {"seconds": dt, "frames": frames, "media_s": out.num_samples / CODEC_RATE, "peak_rss_mb": _peak_rss_mb()}


def run_pyav_plain(row: dict) -> dict:
    """The straightforward PyAV loop: decode everything single-threaded, convert every frame."""
    import av
    import numpy as np

    audio_paths, video_path = _plan(row)
    t0 = time.perf_counter()
    longest = 0
    for path in audio_paths:
        with av.open(path) as c:
            r24 = av.AudioResampler(format="fltp", layout="mono", rate=CODEC_RATE)
            r16 = av.AudioResampler(format="fltp", layout="mono", rate=ASR_RATE)
            a24, a16 = [], []
            for f in c.decode(audio=0):
                a24 += [o.to_ndarray() for o in r24.resample(f)]
                a16 += [o.to_ndarray() for o in r16.resample(f)]
            a24 += [o.to_ndarray() for o in r24.resample(None)]
            a16 += [o.to_ndarray() for o in r16.resample(None)]
        longest = max(longest, np.concatenate(a24, axis=1).shape[1])
    picked = np.zeros((0,))
    if video_path is not None:
        with av.open(video_path) as c:
            frames, times = [], []
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24", width=WIDTH, height=HEIGHT))
                times.append(float(f.time))
        t = np.asarray(times)
        chunks = np.arange(int(np.ceil(longest / CHUNK_SAMPLES)))
        idx = np.clip(np.searchsorted(t, chunks * 0.2, side="right") - 1, 0, len(frames) - 1)
        picked = np.stack([frames[i] for i in idx])
    dt = time.perf_counter() - t0
    return {"seconds": dt, "frames": int(picked.shape[0]), "peak_rss_mb": _peak_rss_mb()}


def run_ffmpeg(row: dict) -> dict:
    ff = shutil.which("ffmpeg")
    assert ff is not None
    audio_paths, video_path = _plan(row)
    t0 = time.perf_counter()
    frames = 0
    if video_path is not None:
        video = subprocess.run(
            [ff, "-v", "error", "-i", video_path, "-an", "-vf", f"fps=5,scale={WIDTH}:{HEIGHT}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True,
            check=True,
        ).stdout
        frames = len(video) // (WIDTH * HEIGHT * 3)
    for path in audio_paths:
        for rate in (CODEC_RATE, ASR_RATE):
            subprocess.run([ff, "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"], capture_output=True, check=True)
    dt = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": dt, "frames": frames, "peak_rss_mb": usage}


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


def _row_for(path: Path) -> dict:
    from microturn.media.container import open_container

    with open_container(str(path)) as c:
        has_video = bool(c.streams.video)
    if has_video:
        return {"session_id": "bench", "video": {"uri": str(path)}}
    return {"session_id": "bench", "audio": [{"uri": str(path)}]}


def _synth_row(folder: Path, seconds: float) -> dict:
    from microturn.synth import manifest_row, synthesize_session

    truth = synthesize_session(folder / "session", "bench", seed=0, duration_s=seconds)
    row = manifest_row(truth, str(folder / "session"))
    return {k: row[k] for k in ("session_id", "audio", "video") if row.get(k)}


def _worker(kind: str, row: dict, av_offset: bool) -> dict:
    if kind == "ours":
        return run_ours(row, av_offset)
    return {"pyav_plain": run_pyav_plain, "ffmpeg_cli": run_ffmpeg}[kind](row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path)
    ap.add_argument("--synth-seconds", type=float, help="decode a generated conversation of this length instead")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--av-offset", action="store_true", help="ours also keeps the A/V offset's trace and frame candidates")
    ap.add_argument("--worker", choices=["ours", "pyav_plain", "ffmpeg_cli"], help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, json.loads(args.row), args.av_offset)))
        return
    tmp = tempfile.TemporaryDirectory()
    try:
        if args.synth_seconds:
            row, label = _synth_row(Path(tmp.name), args.synth_seconds), f"synth:{args.synth_seconds:g}s"
        else:
            path = args.input
            if path is None:
                path = DEFAULT_INPUT.resolve() if DEFAULT_INPUT.exists() else make_input(Path(tmp.name))
            row, label = _row_for(Path(path)), str(path)
        baseline = "ffmpeg_cli" if shutil.which("ffmpeg") else "pyav_plain"
        runs: dict[str, list[dict]] = {"ours": [], baseline: []}
        for _ in range(max(1, args.repeats)):  # alternate the sides: load from others hits both
            for kind in runs:
                res = subprocess.run(
                    [sys.executable, __file__, "--worker", kind, "--row", json.dumps(row)] + (["--av-offset"] if args.av_offset else []),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        tmp.cleanup()
    ours, base = (min(runs[k], key=lambda r: r["seconds"]) for k in ("ours", baseline))
    med_ours = statistics.median(r["seconds"] for r in runs["ours"])
    med_base = statistics.median(r["seconds"] for r in runs[baseline])
    line = {
        "benchmark": "decode",
        "input": label,
        "av_offset": args.av_offset,
        "media_s": round(ours["media_s"], 3),
        "baseline": baseline,
        "baseline_note": "system ffmpeg CLI" if baseline == "ffmpeg_cli" else "no system ffmpeg: PyAV plain decode loop",
        "repeats": len(runs["ours"]),
        "ours_s": round(ours["seconds"], 4),
        "baseline_s": round(base["seconds"], 4),
        "ours_median_s": round(med_ours, 4),
        "baseline_median_s": round(med_base, 4),
        "ours_frames": ours["frames"],
        "baseline_frames": base["frames"],
        "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["ours"]), 1),
        "baseline_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[baseline]), 1),
        "realtime_x": round(ours["media_s"] / ours["seconds"], 1),
        "ratio_median": round(med_base / med_ours, 3),
        "goal_ratio": 0.8,
        "ratio": round(base["seconds"] / ours["seconds"], 3),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
