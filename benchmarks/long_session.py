"""Does an hours-long session fit its time budget with the shipped config, no overrides? (issue 17)

    .venv/bin/python benchmarks/long_session.py [--minutes 60] [--cpus 2] [--config configs/default.yaml] [--input MANIFEST]

Makes a two-speaker session of ``--minutes`` by looping a real recording, one voice per channel
(../shared/media/dialogue/michaelandsickmichael.wav, 52 s, 16 kHz), into one stereo WAV; builds it with
``microturn build --config CONFIG --num-cpus CPUS`` and nothing else; samples the resident memory of
the build's processes every second from /proc. ``--input``: build that manifest instead (e.g. an hour of
``microturn synth --duration 3600``, which has video), ``--minutes`` then only names it.

Prints one JSON line last: wall time of the build and of the session, the session's budget, peak RSS
of the largest worker (sampled, and its high-water mark) and of all the build's processes together,
and ``ratio`` = budget / the session's wall time (> 1: it fits; the margin is the ratio).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder would come first on sys.path: keep it off (no script here may shadow a module)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from microturn.manifest import write_manifest  # noqa: E402
from microturn.report.processes import process_tree, rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "media" / "dialogue" / "michaelandsickmichael.wav"


def looped_dialogue(out: Path, minutes: float) -> Path:
    """A stereo 16 kHz WAV of ``minutes``: the source dialogue repeated, written block by block."""
    import av

    planar = av.AudioResampler(format="s16p", layout="stereo", rate=16000)
    with av.open(str(SOURCE)) as src:
        frames = [g for f in src.decode(audio=0) for g in planar.resample(f)] + list(planar.resample(None))
    pcm = np.concatenate([f.to_ndarray() for f in frames], axis=1)  # (2, n) int16
    total = int(minutes * 60 * 16000)
    with av.open(str(out), "w", format="wav") as dst:
        stream = dst.add_stream("pcm_s16le", rate=16000, layout="stereo")
        written = 0
        while written < total:
            block = pcm[:, : total - written]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T.reshape(1, -1)), format="s16", layout="stereo")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                dst.mux(packet)
            written += block.shape[1]
        for packet in stream.encode(None):
            dst.mux(packet)
    return out


def _looped_manifest(folder: Path, minutes: float) -> Path:
    wav = looped_dialogue(folder / "dialogue.wav", minutes)
    session_id = f"long-{minutes:g}min".replace(".", "_")  # ids hold no dots
    return write_manifest(folder / "sessions.jsonl", [{"session_id": session_id, "audio": [
        {"uri": str(wav), "channel": 0, "speaker": "A"}, {"uri": str(wav), "channel": 1, "speaker": "B"}]}])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    ap.add_argument("--input", type=Path, help="a manifest to build instead of the looped dialogue")
    args = ap.parse_args()
    if args.input is None and not SOURCE.exists():
        print(json.dumps({"skipped": f"{SOURCE} not found"}))
        return
    with tempfile.TemporaryDirectory(prefix="microturn-long-") as tmp:
        t = Path(tmp)
        manifest = args.input.resolve() if args.input is not None else _looped_manifest(t, args.minutes)
        out = t / "corpus"
        cmd = [sys.executable, "-m", "microturn.cli", "build", "--input", str(manifest), "--out", str(out),
               "--config", str(args.config), "--num-cpus", str(args.cpus)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak_worker = peak_total = hwm_worker = 0.0
        log: list[str] = []
        os.set_blocking(proc.stdout.fileno(), False)
        while proc.poll() is None:
            pids = process_tree(proc.pid)
            rss = {p: rss_mb(p) for p in pids}
            peak_total = max(peak_total, sum(rss.values()))
            worker_pids = [p for p in rss if "ray::" in _cmdline(p) or "default_worker" in _cmdline(p)]
            peak_worker = max([peak_worker, *(rss[p] for p in worker_pids)])
            hwm_worker = max([hwm_worker, *(rss_mb(p, "VmHWM:") for p in worker_pids)])
            for line in iter(proc.stdout.readline, ""):
                log.append(line)
                if line.startswith("[microturn]"):
                    print(line, end="", file=sys.stderr, flush=True)
            time.sleep(1.0)
        log.extend(proc.stdout.read().splitlines(keepends=True))
        wall = time.perf_counter() - t0
        stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    slow = (stats.get("slowest_sessions") or [{}])[0]
    result = {
        "benchmark": "long_session",
        "minutes": round(stats["media_s_in"] / 60, 2) if stats.get("media_s_in") else args.minutes,
        "input": str(args.input) if args.input is not None else "looped dialogue",
        "cpus": args.cpus,
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "exit_code": proc.returncode,
        "sessions_ok": stats.get("sessions_ok"),
        "rejects_by_reason": stats.get("rejects_by_reason"),
        "samples": stats.get("samples"),
        "build_wall_s": round(wall, 1),
        "session_wall_s": slow.get("wall_s"),
        "budget_s": slow.get("budget_s"),
        "realtime_factor": round(stats.get("media_s_in", args.minutes * 60) / slow["wall_s"], 2) if slow.get("wall_s") else None,
        "peak_worker_rss_mb": round(peak_worker, 1),  # sampled every second
        "peak_worker_hwm_mb": round(hwm_worker, 1),  # the kernel's high-water mark: the true peak
        "peak_total_rss_mb": round(peak_total, 1),
        "ratio": round(slow["budget_s"] / slow["wall_s"], 2) if slow.get("wall_s") else None,
    }
    if proc.returncode != 0:
        result["log_tail"] = "".join(log[-20:])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
