"""Training-loader throughput against two baselines over the same tars.

    .venv/bin/python benchmarks/loader.py [--input CORPUS_DIR] [--workers N] [--passes P]

* raw:   read every shard sequentially as bytes (the I/O ceiling; nothing parsed)
* wds:   a plain webdataset pipeline, ``wds.WebDataset(urls).decode()`` (its default decoders decode the
         same .npy/.json members; fine on our own benchmark data, never used by the trainer)
* ours:  microturn.train.loader.TrainLoader: local shards memory-mapped, tar headers parsed by slicing,
         members as read-only views, samples via format.decode_sample (never unpickles), role assignment,
         crop/pad to the configured window, batches laid out in preallocated arrays

Without --input a small corpus (format of docs/format.md, 30 s windows, 2 speakers, 8 codebooks, 8x8
video tokens) is written to a temporary folder first. Prints one JSON line last; ``ratio`` is ours over
raw in samples/s (goal >= 0.8), ``ratio_vs_wds`` ours over the plain webdataset pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder would come first on sys.path: put the repo and the test helpers there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "train"))


def build_corpus(root: Path, shards: int, per_shard: int) -> Path:
    from train_corpus_util import write_corpus

    return write_corpus(root, [per_shard] * shards, chunks=150, codebooks=8, frame_hw=(8, 8))


def bench_raw(uris: list[str], passes: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    nbytes = 0
    for _ in range(passes):
        for u in uris:
            with open(u, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    nbytes += len(chunk)
    return time.perf_counter() - t0, nbytes, passes


def bench_wds(uris: list[str], passes: int) -> tuple[float, int]:
    import webdataset as wds

    t0 = time.perf_counter()
    n = 0
    for _ in range(passes):
        ds = wds.WebDataset(uris, shardshuffle=False, empty_check=False).decode()
        for sample in ds:
            n += int(sample["codes.npy"].shape[0] > 0)
    return time.perf_counter() - t0, n


def bench_ours(data: str, samples: int, workers: int) -> tuple[float, int]:
    from microturn.train.config import load_train_config
    from microturn.train.corpus import read_corpus
    from microturn.train.loader import TrainLoader
    from microturn.train.loop import example_spec, resolve_config

    corpus = read_corpus(data)
    cfg = load_train_config(
        None,
        [f"data.num_workers={workers}", "data.roles=first", "data.batch_size=16", "data.window_chunks=150",
         "data.pin_memory=false", "data.shuffle_buffer=64", "model.codebooks=8"],
    )  # fmt: skip
    cfg = resolve_config(cfg, corpus)
    loader = TrainLoader(corpus.shard_uris, example_spec(cfg), cfg, expected_fp=cfg.fingerprints.model_dump())
    batches = max(1, samples // cfg.data.batch_size)
    next(loader)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    dt = time.perf_counter() - t0
    loader.close()
    return dt, batches * cfg.data.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", help="a built corpus folder (default: write a small one)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for ours (0 = in process)")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.input or str(build_corpus(Path(tmp) / "corpus", shards=4, per_shard=48))
        from microturn.train.corpus import read_corpus

        uris = list(read_corpus(data).shard_uris)
        total_bytes = sum(os.path.getsize(u) for u in uris)
        # warm the page cache so every contender reads from memory
        bench_raw(uris, 1)
        raw_s, nbytes, passes = bench_raw(uris, args.passes)
        wds_s, wds_n = bench_wds(uris, 1)
        samples = wds_n * args.passes
        ours_s, ours_n = bench_ours(data, samples, args.workers)

    per_sample = total_bytes / max(1, wds_n)
    raw_sps = samples / raw_s
    wds_sps = wds_n / wds_s
    ours_sps = ours_n / ours_s
    result = {
        "benchmark": "loader",
        "input": args.input or "generated: 4 shards x 48 windows of 30 s, 8 codebooks, 8x8 video tokens",
        "samples_per_shard_pass": wds_n,
        "bytes_per_sample": round(per_sample),
        "raw_samples_per_s": round(raw_sps, 1),
        "raw_mb_per_s": round(nbytes / raw_s / 1e6, 1),
        "wds_samples_per_s": round(wds_sps, 1),
        "wds_mb_per_s": round(wds_sps * per_sample / 1e6, 1),
        "ours_samples_per_s": round(ours_sps, 1),
        "ours_mb_per_s": round(ours_sps * per_sample / 1e6, 1),
        "ours_workers": args.workers,
        "ratio": round(ours_sps / raw_sps, 3),
        "ratio_vs_wds": round(ours_sps / wds_sps, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
