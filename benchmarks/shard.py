"""Shard writing throughput: microturn's ShardSink (sha256 + atomic commit + markers) against
webdataset's own ShardWriter writing the same samples into the same number of shards.

    .venv/bin/python benchmarks/shard.py [--samples N] [--repeats R] [--shard-mb MB]

Prints one JSON line last: MB/s of each, and ``ratio`` = ours / webdataset (> 1: ours is faster).
``mb_per_s_ours_from_parts``: the build's own path, each session's part (written beforehand, untimed)
copied into the shards as it is by ``ShardSink.add_part``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path: put the repo there instead (tests.factories).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from microturn.clock import CODEC_RATE  # noqa: E402
from microturn.config import ChunkConfig, ShardConfig  # noqa: E402
from microturn.pipeline.shard import ShardSink, write_part  # noqa: E402
from tests.factories import random_tokenized_session  # noqa: E402


def make_sessions(samples: int) -> list:
    """Sessions of 5 minutes (10 windows of 30 s each), ~100 kB per sample as the default config writes."""
    sessions, made, i = [], 0, 0
    while made < samples:
        tok = random_tokenized_session(f"bench{i:04d}", CODEC_RATE * 300, seed=i)
        s = tok.samples([], ChunkConfig())[: samples - made]
        sessions.append(s)
        made += len(s)
        i += 1
    return sessions


def ours(out: Path, sessions: list, target_bytes: int) -> int:
    sink = ShardSink(str(out), ShardConfig(target_bytes=target_bytes))
    for s in sessions:
        sink.add_session(s)
    return sum(info.bytes for info in sink.close())


def ours_from_parts(out: Path, parts: list[str], target_bytes: int) -> int:
    sink = ShardSink(str(out), ShardConfig(target_bytes=target_bytes))
    for part in parts:
        sink.add_part(part)
    return sum(info.bytes for info in sink.close())


def theirs(out: Path, sessions: list, target_bytes: int) -> int:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=target_bytes, maxcount=10**9, verbose=0,
                         mtime=0) as sink:
        for s in sessions:
            for sample in s:
                sink.write({"__key__": sample.key, **sample.members})
    return sum(p.stat().st_size for p in out.glob("*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-mb", type=float, default=16.0)
    args = ap.parse_args()
    sessions = make_sessions(args.samples)
    target = int(args.shard_mb * 1024 * 1024)
    best = {"ours": float("inf"), "webdataset": float("inf"), "ours_from_parts": float("inf")}
    sizes = {}
    root = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    try:
        parts = [str(root / "parts" / f"{i:04d}.tar") for i in range(len(sessions))]
        for part, samples in zip(parts, sessions):
            write_part(part, samples)
        runs = (("ours", ours, sessions), ("webdataset", theirs, sessions), ("ours_from_parts", ours_from_parts, parts))
        for r in range(args.repeats):
            for name, fn, data in runs:  # alternate: same disk, same cache state
                out = root / f"{name}-{r}"
                t0 = time.perf_counter()
                sizes[name] = fn(out, data, target)
                best[name] = min(best[name], time.perf_counter() - t0)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mbps = {k: sizes[k] / best[k] / 1e6 for k in best}
    print(json.dumps({
        "benchmark": "shard_write",
        "samples": args.samples,
        "bytes_ours": sizes["ours"],
        "bytes_webdataset": sizes["webdataset"],
        "seconds_ours": round(best["ours"], 4),
        "seconds_webdataset": round(best["webdataset"], 4),
        "mb_per_s_ours": round(mbps["ours"], 1),
        "mb_per_s_webdataset": round(mbps["webdataset"], 1),
        "mb_per_s_ours_from_parts": round(mbps["ours_from_parts"], 1),
        "ours_adds": ["sha256 per shard", "tmp+fsync+rename commit", "commit marker with index rows"],
        "ratio": round(mbps["ours"] / mbps["webdataset"], 3),
    }))


if __name__ == "__main__":
    main()
