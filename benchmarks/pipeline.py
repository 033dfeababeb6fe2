"""End-to-end build throughput: our Ray job with 1 and 2 CPUs against a naive single-process script.

The naive script does the same core work the obvious way: PyAV decode of every audio source (resampled
to 24 kHz) and of the video at 5 fps, one stock ``model.encode`` per audio stream (EnCodec 24 kHz, 6 kbps,
default settings), and webdataset's ``ShardWriter`` for the samples. Ours also runs VAD, cross-talk
suppression, the frame codec, event labelling, checksums and atomic commits.

    .venv/bin/python benchmarks/pipeline.py [--input MANIFEST] [--sessions 10] [--duration 30] [--config YAML] [--repeats 3]

Each run is held to its CPUs by affinity (the process and all it starts: driver, Ray's own processes,
workers): ours on 1 CPU gets one core, ours on 2 CPUs and the naive script two, as a container limited
to that many CPUs would. ``ours_1cpu_unpinned`` is the 1-CPU build with Ray's slot count alone: on a
bigger machine its driver, Ray's own processes and the OS run on the other cores for free, which flatters
the 1-CPU side (on a 2-core machine, by 6%); its figure is reported beside the pinned one.

Last line: JSON with media-seconds per wall-second for each run, the 1->2 CPU scaling, peak memory of the
job (driver + Ray workers, sampled) and ``ratio`` = ours on 2 CPUs over the naive script; also both
figures without the time the embedded Ray took to start (``ray_start_s`` of each run: on a running
cluster a build does not pay it), so that the fixed cost of a short run is visible. With ``--repeats N``
the four runs take turns N times and each side reports its median run (and every wall time): this
machine's speed drifts by 20% and more between minutes, a single round can mislead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder would come first on sys.path: put the repo there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from microturn.clock import CODEC_RATE  # noqa: E402
from microturn.report.processes import tree_rss_mb  # noqa: E402


class PeakMemory:
    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            time.sleep(0.25)

    def __enter__(self) -> "PeakMemory":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def naive_build(manifest: Path, out: Path) -> float:
    """The obvious single-process script. Returns media seconds processed."""
    import av
    import torch
    import webdataset as wds
    from encodec import EncodecModel

    from microturn.tokenizers.audio import _seeded_state

    # The stock model with the same (seeded, untrained) weights our job uses: speed must not depend on
    # weight values (PyTorch's default init makes the LSTM run on denormals, several times slower).
    model = EncodecModel.encodec_model_24khz(pretrained=False)
    model.load_state_dict(_seeded_state(0, 8).tensors)
    model.eval()
    model.set_target_bandwidth(6.0)
    out.mkdir(parents=True, exist_ok=True)
    media_s = 0.0
    rows = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    with wds.ShardWriter(str(out / "naive-%06d.tar"), maxsize=512 * 1024 * 1024) as sink:
        for row in rows:
            waves = []
            for a in row["audio"]:
                uri = a["uri"] if os.path.isabs(a["uri"]) else str(manifest.parent / a["uri"])
                with av.open(uri) as c:
                    rs = av.AudioResampler(format="flt", layout="mono", rate=CODEC_RATE)
                    chunks = [f.to_ndarray() for fr in c.decode(audio=0) for f in rs.resample(fr)]
                    chunks += [f.to_ndarray() for f in rs.resample(None)]
                waves.append(np.concatenate(chunks, axis=1)[0])
            frames = []
            if row.get("video"):
                uri = row["video"]["uri"] if os.path.isabs(row["video"]["uri"]) else str(manifest.parent / row["video"]["uri"])
                with av.open(uri) as c:
                    next_t = 0.0
                    for fr in c.decode(video=0):
                        if fr.time is not None and fr.time >= next_t:
                            frames.append(fr.to_ndarray(format="rgb24", width=64, height=64))
                            next_t += 0.2
            n = max(len(w) for w in waves)
            media_s += n / CODEC_RATE
            codes = []
            for w in waves:
                x = torch.from_numpy(np.pad(w, (0, n - len(w)))).view(1, 1, -1)
                with torch.no_grad():
                    encoded = model.encode(x)
                codes.append(torch.cat([c for c, _ in encoded], dim=-1)[0].numpy().astype(np.int16))
            codes_arr = np.stack(codes)
            window = 50 * 15
            for i, start in enumerate(range(0, codes_arr.shape[-1], window)):
                buf = io.BytesIO()
                np.save(buf, codes_arr[..., start : start + window])
                sink.write({"__key__": f"{row['session_id']}-{i:06d}", "codes.npy": buf.getvalue(),
                            "frames.npy": _npy(np.stack(frames[i * 50 : (i + 1) * 50]) if frames[i * 50 : (i + 1) * 50] else np.zeros((0, 64, 64, 3), np.uint8))})
    return media_s


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def ours(manifest: Path, out: Path, cpus: int, config: Path) -> tuple[float, float, float]:
    """Our build on ``cpus`` CPUs: (media seconds, wall seconds, of which starting Ray)."""
    from microturn.config import load_config
    from microturn.jobs.build import run_build

    cfg = load_config(config, [f"job.num_cpus={cpus}"])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_build(str(manifest), str(out), cfg, progress=False)
    return summary.media_s_in, time.perf_counter() - t0, summary.ray_start_s


def naive(manifest: Path, out: Path) -> tuple[float, float, float]:
    """The naive script on 2 threads: (media seconds, wall seconds, 0: no Ray)."""
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    media_s = naive_build(manifest, out)
    return media_s, time.perf_counter() - t0, 0.0


# CPUs each run gets: its affinity (None: whatever the machine gives) and, for ours, Ray's slots.
SIDES = {"ours_1cpu": (1, 1), "ours_1cpu_unpinned": (None, 1), "ours_2cpu": (2, 2), "naive_2threads": (2, None)}


def pin_to_cpus(n: int) -> None:
    """Hold this process, and every process it starts from now on, to ``n`` of the CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < n:
        raise SystemExit(f"this benchmark needs {n} CPUs; this process may use {len(allowed)}")
    os.sched_setaffinity(0, allowed[:n])


def _side(side: str, manifest: Path, out: Path, config: Path) -> None:
    """One run, in a process of its own (``--side``): prints its figures as the last line."""
    pinned, slots = SIDES[side]
    if pinned is not None:
        pin_to_cpus(pinned)
    import av  # noqa: F401  (both sides import their libraries before the clock starts)
    import torch  # noqa: F401

    media_s, wall, ray_start = naive(manifest, out) if slots is None else ours(manifest, out, slots, config)
    print(json.dumps({"media_s": media_s, "wall_s": wall, "ray_start_s": ray_start}))


def _run_side(side: str, manifest: Path, tmp: Path, config: Path) -> tuple[float, float, float, float]:
    """(media seconds, wall seconds, peak MB of the process tree, seconds of Ray's start): a fresh
    process per run, so no run's memory holds another's models."""
    cmd = [sys.executable, __file__, "--side", side, "--input", str(manifest), "--out", str(tmp / side), "--config", str(config)]
    with PeakMemory() as mem:
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{side} failed:\n{res.stderr[-3000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return got["media_s"], got["wall_s"], mem.peak_mb, got["ray_start_s"]


def _median_run(runs: list[tuple[float, float, float, float]]) -> dict:
    """The run of median wall time (its media seconds, peak memory and Ray start), and every wall time."""
    media_s, wall, peak, ray_start = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
    return {"media_s": round(media_s, 2), "wall_s": round(wall, 2), "media_s_per_s": round(media_s / wall, 3),
            "peak_rss_mb": round(peak, 1), "ray_start_s": round(ray_start, 2), "walls_s": [round(r[1], 2) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="session manifest (default: generated)")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all four runs; each side's median is reported")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml",
                    help="our build's config (configs/dmel.yaml: dMel + text, no EnCodec)")
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        _side(args.side, args.input, args.out, args.config)
        return

    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-pipeline-"))
    manifest = args.input
    if manifest is None:
        from microturn.synth import synthesize_corpus

        manifest = synthesize_corpus(tmp / "media", sessions=args.sessions, seed=3, duration_s=args.duration)

    walls: dict[str, list[tuple[float, float, float, float]]] = {side: [] for side in SIDES}
    for r in range(max(1, args.repeats)):  # the sides take turns: a slow spell of the machine hits all of them
        for side in walls:
            media_s, wall, peak, ray_start = _run_side(side, manifest, tmp, args.config)
            walls[side].append((media_s, wall, peak, ray_start))
            print(f"round {r + 1}: {side}: {media_s:.1f} media-s in {wall:.1f} s = {media_s / wall:.2f}x realtime, "
                  f"peak {peak:.0f} MB", flush=True)
    results = {side: _median_run(runs) for side, runs in walls.items()}
    shutil.rmtree(tmp, ignore_errors=True)
    scaling = results["ours_2cpu"]["media_s_per_s"] / results["ours_1cpu"]["media_s_per_s"]
    scaling_unpinned = results["ours_2cpu"]["media_s_per_s"] / results["ours_1cpu_unpinned"]["media_s_per_s"]
    ratio = results["ours_2cpu"]["media_s_per_s"] / results["naive_2threads"]["media_s_per_s"]
    # Where the cluster already runs (``ray job submit``), a build does not start one: the same figures
    # without the embedded Ray's start (the workers' own start-up, imports and model loads, stays in).
    started = {side: results[side]["wall_s"] - results[side]["ray_start_s"] for side in ("ours_1cpu", "ours_2cpu")}
    print(json.dumps({"benchmark": "pipeline", "config": args.config.name, **results, "scaling_1_to_2_cpus": round(scaling, 3),
                      "scaling_unpinned_1cpu": round(scaling_unpinned, 3),
                      "scaling_without_ray_start": round(started["ours_1cpu"] / started["ours_2cpu"], 3),
                      "ratio_without_ray_start": round(results["naive_2threads"]["wall_s"] / started["ours_2cpu"], 3),
                      "baseline": "naive single-process script (PyAV + stock EnCodec encode + wds.ShardWriter)",
                      "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
