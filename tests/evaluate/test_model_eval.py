"""A trained run measured in micro-turns, end to end on real builds: `microturn eval --run` streams the
model over held-out sessions and refuses sessions it trained on; `microturn converse` writes what one
listens to and looks at; a run of zero steps is the untrained baseline. Two synthetic corpora are built
by the real pipeline (energy VAD, dMel + text) and a tiny dMel model is trained for a few steps: slow."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import pytest
from typer.testing import CliRunner

from microturn.clock import CODEC_RATE
from microturn.evaluate.fdb import METRICS

pytestmark = pytest.mark.slow

BUILD = ["align.vad=energy", "tokenizers.representations=[dmel, text]", "chunk.window_chunks=50",
         "chunk.hop_chunks=50", "job.num_cpus=2"]
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_experts=2", "model.expert_hidden=32",
        "data.batch_size=2", "data.window_chunks=4", "data.num_workers=0", "data.shuffle_buffer=4",
        "run.ckpt_every=0", "run.log_every=1", "run.threads=1"]


def build(root: Path, seed: int) -> Path:
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    synthesize_corpus(root / "media", sessions=1, seed=seed, duration_s=12.0, video=False)
    run_build(str(root / "media" / "sessions.jsonl"), str(root / "corpus"), load_config(None, BUILD), progress=False)
    return root / "corpus"


def cli(*args: str):
    from microturn.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model_eval")
    data, heldout = build(root / "train", 5), build(root / "heldout", 6)
    runs = {}
    for name, steps in (("trained", 3), ("untrained", 0)):
        sets = [*TINY, f"run.max_steps={steps}", f"data.eval_data={heldout}"]
        res = cli("train", "--config", "configs/train_cpu.yaml", "--data", data, "--out", root / name,
                  *[a for s in sets for a in ("--set", s)])  # fmt: skip
        assert res.exit_code == 0, res.output
        runs[name] = root / name
    return {"data": data, "heldout": heldout, **runs}


def test_a_run_streamed_over_held_out_sessions_reports_the_fdb_metrics_and_its_step_times(trained) -> None:
    res = cli("eval", trained["heldout"], "--run", trained["trained"], "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(METRICS) <= set(out) and out["sessions"] == 1 and out["skipped_trained"] == 0
    assert out["cases"]["tor_smooth"] > 0  # the recorded user does end turns in 12 s
    assert set(out["step_ms"]) == {"p50", "p99", "max"} and 0 < out["step_ms"]["p50"] <= out["step_ms"]["max"]
    assert 0.0 <= out["tor_smooth"] <= 1.0


def test_sessions_the_run_trained_on_are_refused(trained) -> None:
    res = cli("eval", trained["data"], "--run", trained["trained"], "--json")
    assert res.exit_code == 2
    said = " ".join(res.output.split())  # the message wraps at the terminal width
    assert "held out" in said and "1 trained on" in said


def test_a_run_of_zero_steps_is_the_untrained_baseline_and_streams_too(trained) -> None:
    assert list((trained["untrained"] / "checkpoints").glob("step-00000000*"))
    res = cli("eval", trained["heldout"], "--run", trained["untrained"], "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["sessions"] == 1


def test_converse_writes_a_stereo_conversation_a_picture_and_its_micro_turn_timing(trained, tmp_path) -> None:
    key = "synth-6-000-000000"
    res = cli("converse", "--run", trained["trained"], "--data", trained["heldout"], "--key", key, "--out", tmp_path,
              "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"key", "chunks", "step_ms", "budget_ms"} and out["budget_ms"] == 200
    assert out["chunks"] == 50 and out["step_ms"]["p50"] > 0  # 10 s of user: 50 micro-turns
    with wave.open(str(tmp_path / f"{key}.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, CODEC_RATE, 10 * CODEC_RATE)
    assert (tmp_path / f"{key}.png").stat().st_size > 20_000


def test_converse_refuses_a_sample_the_run_trained_on(trained, tmp_path) -> None:
    res = cli("converse", "--run", trained["trained"], "--data", trained["data"], "--key", "synth-5-000-000000",
              "--out", tmp_path)  # fmt: skip
    assert res.exit_code == 2 and "training data" in " ".join(res.output.split())
