"""`microturn train-frame-codec` and `microturn train` reach the real training code."""

from __future__ import annotations

import json

import pytest

from cli_media import write_mp4


def test_train_frame_codec_writes_a_checkpoint_the_codec_loads(cli, tmp_path):
    import torch

    torch.set_num_threads(1)
    video = write_mp4(tmp_path / "v.mp4", frames=8)
    ckpt = tmp_path / "codec.pt"
    code, out, err = cli("train-frame-codec", "--input", video, "--out", ckpt, "--steps", "3",
                         "--set", "image_size=32", "--device", "cpu")
    assert code == 0, err
    assert "checkpoint" in out and ckpt.is_file()
    blob = torch.load(ckpt, weights_only=True)
    assert blob["config"]["image_size"] == 32 and blob["steps"] == 3


def test_train_frame_codec_rejects_a_bad_override(cli, tmp_path):
    video = write_mp4(tmp_path / "v.mp4", frames=2)
    code, _, err = cli("train-frame-codec", "--input", video, "--out", tmp_path / "c.pt", "--set", "downsample=3")
    assert code == 2 and "downsample" in err


@pytest.mark.slow
def test_train_runs_a_few_steps_on_the_corpus(cli, corpus, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", "--config", "configs/train_tiny.yaml", "--data", corpus, "--out", run,
                         "--set", "run.max_steps=2", "--set", "run.threads=2", "--set", "data.num_workers=0",
                         "--set", "data.eval_shards=0", "--set", "run.device=cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 2
    assert run.is_dir()
