"""The training loop end to end on CPU: it learns, resumes exactly, and runs under DDP with uneven shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microturn.errors import TrainDataError
from microturn.train.checkpoint import load_checkpoint
from microturn.train.loop import main, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_well_below_its_start_when_overfitting_two_samples(tiny_cfg, tiny_overfit_corpus, tmp_path):
    cfg = tiny_cfg.replace(
        data={"roles": "first", "batch_size": 2, "shuffle_buffer": 0, "eval_shards": 0, "window_chunks": 4},
        run={"max_steps": 80, "log_every": 1, "ckpt_every": 0},
        optim={"lr": 1e-2, "warmup_steps": 5},
    )
    summary = train(cfg, str(tiny_overfit_corpus), tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    start = metrics[0]["loss"]
    end = min(m["loss"] for m in metrics[-5:])
    assert summary["steps"] == 80
    assert end < 0.4 * start, (start, end)
    assert metrics[-1]["loss_text"] < 0.3 * metrics[0]["loss_text"]
    assert metrics[-1]["loss_audio"] < 0.5 * metrics[0]["loss_audio"]


def test_metrics_checkpoints_and_eval_are_written(tiny_cfg, train_corpus, tmp_path):
    cfg = tiny_cfg.replace(run={"max_steps": 6, "log_every": 2, "ckpt_every": 3, "eval_every": 3, "eval_batches": 1})
    summary = train(cfg, str(train_corpus), tmp_path / "run")
    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [2, 4, 6]
    for m in metrics:
        for key in ("loss", "loss_text", "loss_audio", "tokens_per_s", "expert_load_min", "expert_load_max",
                    "z_loss", "lr", "grad_norm", "tokens_seen"):  # fmt: skip
            assert key in m, key
        assert m["tokens_per_s"] > 0 and 0 <= m["expert_load_min"] <= m["expert_load_max"] <= 1
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 6] and all(e["eval_loss"] > 0 for e in evals)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step-00000003.pt", "step-00000006.pt"]
    state = load_checkpoint(run / "checkpoints" / "step-00000006.pt", torch.device("cpu"))
    assert state["step"] == 6 and state["tokens_seen"] == summary["tokens_seen"] > 0
    assert len(state["loaders"]) == 1 and state["loaders"][0]["batches_seen"] == 6
    assert state["config"]["fingerprints"]["audio"]
    assert "audio_vocab: 1024" in (run / "config.yaml").read_text()


def test_stopping_and_resuming_reproduces_the_uninterrupted_run(tiny_cfg, train_corpus, tmp_path):
    cfg = tiny_cfg.replace(run={"max_steps": 8, "log_every": 1, "ckpt_every": 4, "eval_every": 0})
    train(cfg, str(train_corpus), tmp_path / "straight")
    # stop after step 4 (a run whose config ends there), then start again with the full config
    train(cfg.replace(run={"max_steps": 4}), str(train_corpus), tmp_path / "resumed")
    first_half = read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in first_half] == [1, 2, 3, 4]
    train(cfg, str(train_corpus), tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == list(range(1, 9))
    # the lr schedule depends on max_steps: steps 1-4 of the short run differ; 5-8 must be identical
    for a, b in zip(straight[4:], resumed[4:]):
        assert a["loss"] == b["loss"] and a["loss_audio"] == b["loss_audio"], (a["step"], a["loss"], b["loss"])


def test_a_run_resumed_from_an_earlier_checkpoint_logs_each_step_once(tiny_cfg, train_corpus, tmp_path):
    """A run killed after step 6 with its last checkpoint at step 4 logged 5 and 6 already; the resumed
    run logs them again, so the earlier lines past the checkpoint go."""
    cfg = tiny_cfg.replace(run={"max_steps": 6, "log_every": 1, "ckpt_every": 4, "eval_every": 0})
    run = tmp_path / "run"
    train(cfg, str(train_corpus), run)
    for ckpt in (run / "checkpoints").glob("step-*.pt"):
        if ckpt.name != "step-00000004.pt":
            ckpt.unlink()  # as if the run had died before writing them
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    train(cfg.replace(run={"max_steps": 8}), str(train_corpus), run)
    assert [m["step"] for m in read_metrics(run)] == list(range(1, 9))


def test_resume_refuses_a_corpus_from_other_tokenizers(tiny_cfg, train_corpus, tmp_path):
    from train_corpus_util import FINGERPRINTS, write_corpus

    cfg = tiny_cfg.replace(run={"max_steps": 2, "log_every": 1})
    train(cfg, str(train_corpus), tmp_path / "run")
    other = write_corpus(tmp_path / "other", [3, 2], fingerprints=dict(FINGERPRINTS, audio="encodec_24khz/3kbps/x"))
    with pytest.raises(TrainDataError, match="fingerprint_mismatch"):
        train(cfg.replace(run={"max_steps": 4}), str(other), tmp_path / "run")


def test_main_runs_from_the_command_line_arguments(train_corpus, tmp_path, capsys):
    rc = main(["--config", str(REPO / "configs" / "train_tiny.yaml"), "--data", str(train_corpus),
               "--out", str(tmp_path / "run"), "run.max_steps=2", "run.log_every=1", "data.eval_shards=0"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["checkpoint"]).is_file()


def _positions_per_example(run: Path, window_chunks: int) -> int:
    from microturn.train.config import load_train_config
    from microturn.train.model import InteractionModel

    cfg = load_train_config(run / "config.yaml")
    return InteractionModel(cfg.model).layout(window_chunks).length


@pytest.mark.slow
def test_two_ddp_ranks_with_uneven_shards_finish_without_hanging(uneven_corpus, tmp_path):
    # real windows in train shards of 6 and 2 (the third is held out): one rank runs through its shard
    # three times as often as the other
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "microturn.train.loop", "--config", str(REPO / "configs" / "train_tiny.yaml"),
        "--data", str(uneven_corpus), "--out", str(run),
        "run.max_steps=8", "run.log_every=2", "run.ckpt_every=4", "run.eval_every=4", "run.eval_batches=2",
        "run.timeout_s=60", "data.shuffle_buffer=0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    # tokens count both ranks' batches: 2 steps x positions per example x 4 examples x 2 ranks
    per_step = _positions_per_example(run, 4) * 4 * 2
    assert metrics[0]["tokens_seen"] == 2 * per_step and metrics[-1]["tokens_seen"] == 8 * per_step
    state = load_checkpoint(run / "checkpoints" / "step-00000008.pt", torch.device("cpu"))
    loaders = state["loaders"]
    assert [s["rank"] for s in loaders] == [0, 1] and all(s["batches_seen"] == 8 for s in loaders)
    # with seed 0, rank 1 is dealt the 2-window shard in epochs 0-4: it wraps into later epochs sooner
    epochs = [s["positions"]["0"][0] for s in loaders]
    assert epochs[0] < epochs[1], epochs


def test_the_module_entry_point_trains_on_a_built_corpus(train_corpus, tmp_path):
    """`python -m microturn.train.loop --config configs/train_tiny.yaml --data CORPUS --out RUN` as is."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "microturn.train.loop", "--config", str(REPO / "configs" / "train_tiny.yaml"),
           "--data", str(train_corpus), "--out", str(run)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(5, 31, 5))  # train_tiny: 30 steps, logged every 5
    assert all(m["loss"] > 0 and m["tokens_per_s"] > 0 for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert summary["steps"] == 30 and Path(summary["checkpoint"]).name == "step-00000030.pt"
    assert summary["eval"]["eval_loss"] > 0  # the second shard is held out
    resolved = (run / "config.yaml").read_text()
    assert "encodec24k/6kbps/K8/V1024/untrained:0" in resolved and "frame_tokens: 64" in resolved
