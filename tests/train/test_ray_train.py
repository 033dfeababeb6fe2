"""Ray Train: the TorchTrainer recipe of docs/training.md (microturn.train.ray_train) on a local Ray with
two CPU workers (gloo). The loop's own checkpoints land in the run dir; a second fit resumes from them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from microturn.train.checkpoint import checkpoints, load_checkpoint
from microturn.train.ray_train import fit_on_ray, train_loop_per_worker

REPO = Path(__file__).resolve().parents[2]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def local_ray():
    import ray

    # address="local": a new embedded Ray, never a cluster someone else started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def test_the_docs_quote_the_recipe_verbatim():
    docs = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    for fn in (train_loop_per_worker, fit_on_ray):
        assert inspect.getsource(fn) in docs, f"docs/training.md no longer shows {fn.__name__} as it is"


@pytest.mark.slow
def test_two_cpu_workers_checkpoint_and_a_second_fit_resumes(train_corpus, local_ray, tiny_cfg, tmp_path):
    run, records = tmp_path / "run", tmp_path / "ray_results"
    # warmup of 1 step: from step 2 on the lr follows the cosine of max_steps, which tells the two fits apart
    run_cfg = {"max_steps": 4, "log_every": 1, "ckpt_every": 2, "eval_every": 0, "timeout_s": 120}
    cfg = tiny_cfg.replace(optim={"warmup_steps": 1}, run=run_cfg)
    fit_on_ray(cfg, str(train_corpus), run, workers=2, storage_path=records)
    assert [p.name for p in checkpoints(run)] == ["step-00000002.pt", "step-00000004.pt"]  # the loop's own
    before = read_metrics(run)
    assert [m["step"] for m in before] == [1, 2, 3, 4]

    fit_on_ray(cfg.replace(run={"max_steps": 8}), str(train_corpus), run, workers=2, storage_path=records)
    after = read_metrics(run)
    assert [m["step"] for m in after] == list(range(1, 9))
    # resumed at step 4: the first fit's lines are kept as they were (a fit from step 0 rewrites them), the
    # lr jumps back up from the 4-step schedule's floor into the 8-step one (within one run it only falls)
    assert after[:4] == before
    assert after[3]["lr"] < after[4]["lr"]
    per_step = before[0]["tokens_seen"]  # both ranks' examples
    assert [m["tokens_seen"] for m in after] == [step * per_step for step in range(1, 9)]
    assert [p.name for p in checkpoints(run)] == ["step-00000006.pt", "step-00000008.pt"]
    loaders = load_checkpoint(run / "checkpoints" / "step-00000008.pt", torch.device("cpu"))["loaders"]
    assert [s["rank"] for s in loaders] == [0, 1] and all(s["batches_seen"] == 8 for s in loaders), loaders
