"""Does a model trained on our shards learn turn-taking? The whole loop, measured the way the field
measures it (Full-Duplex-Bench v1 definitions, docs/evaluation.md), on 2 CPU cores.

    .venv/bin/python benchmarks/turn_taking.py [--work DIR] [--sessions 96] [--heldout 8] [--duration 60]
                                               [--config configs/train_cpu.yaml] [--max-minutes 20] [--steps N]

1. ``microturn synth``: a training corpus and a held-out one (other seed: other voices, other plans);
2. ``microturn build --config configs/dmel.yaml`` of both (dMel + text, no weights anywhere);
3. ``microturn train``: the untrained model (``run.max_steps=0``: its initial weights, checkpointed) and
   ``configs/train_cpu.yaml`` on the training corpus, held-out corpus as its eval data; a training that
   runs past ``--max-minutes`` is reported as such (``within_budget: false``), not hidden;
4. ``microturn eval`` of the held-out corpus: the human baseline, then each run streamed in micro-turns.

Prints one JSON line last: the three rows (human, untrained, trained), the training wall time and steps,
and ``ratio`` = the trained model's ``tor_smooth`` over the untrained one's (same held-out sessions).
Takes about 30 minutes; corpora already built under ``--work`` are reused, runs are always fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "microturn.cli"]


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(a) for a in args), file=sys.stderr, flush=True)
    return subprocess.run([str(a) for a in args], check=True, cwd=REPO, **kw)


def corpus(work: Path, name: str, sessions: int, seed: int, duration: float) -> Path:
    """Synthesize and build one corpus (skipped when already built)."""
    out = work / name
    if (out / "dataset.json").exists():
        return out
    media = work / f"{name}-media"
    sh(CLI + ["synth", "--out", media, "--sessions", sessions, "--seed", seed, "--duration", duration, "--no-video"])
    sh(CLI + ["build", "--input", media / "sessions.jsonl", "--out", out, "--config", REPO / "configs" / "dmel.yaml",
              "--quiet"])  # fmt: skip
    return out


def train(run: Path, config: str, data: Path, heldout: Path, *extra: str) -> dict:
    """A fresh training run (a run folder left by an earlier call is replaced): its summary, wall time."""
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    done = sh(CLI + ["train", "--config", config, "--data", data, "--out", run, "--set", f"data.eval_data={heldout}",
                     *[a for x in extra for a in ("--set", x)]], stdout=subprocess.PIPE, text=True)  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": round(time.perf_counter() - t0, 1), "steps": summary["steps"],
            "final_loss": summary["final"].get("loss"), "eval": summary.get("eval")}  # fmt: skip


def evaluate(heldout: Path, run: Path | None = None) -> dict:
    args = CLI + ["eval", heldout, "--json"] + (["--run", run] if run else [])
    return json.loads(sh(args, stdout=subprocess.PIPE, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="folder for corpora and runs (default: a temp folder)")
    ap.add_argument("--sessions", type=int, default=96)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--config", default=str(REPO / "configs" / "train_cpu.yaml"))
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=None, help="override run.max_steps (a quick check of the script)")
    args = ap.parse_args()
    if args.work is None:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="microturn-turns-")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    data = corpus(work, "train", args.sessions, 0, args.duration)
    heldout = corpus(work, "heldout", args.heldout, 1000, args.duration)
    untrained = train(work / "run-untrained", args.config, data, heldout, "run.max_steps=0")
    trained = train(work / "run-trained", args.config, data, heldout,
                    *([f"run.max_steps={args.steps}"] if args.steps is not None else []))
    rows = {"human": evaluate(heldout), "untrained": evaluate(heldout, work / "run-untrained"),
            "trained": evaluate(heldout, work / "run-trained")}  # fmt: skip
    base = rows["untrained"].get("tor_smooth") or 0.0
    print(json.dumps({
        "benchmark": "turn_taking", "work": str(work), "config": Path(args.config).name,
        "sessions": args.sessions, "heldout_sessions": args.heldout, "duration_s": args.duration,
        "train": trained, "untrained_run": untrained,
        "within_budget": trained["wall_s"] <= 60 * args.max_minutes, **rows,
        "ratio": round((rows["trained"].get("tor_smooth") or 0.0) / base, 3) if base else None,
    }, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
