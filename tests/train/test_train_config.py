"""Training configs load from YAML, validate shapes, and name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from microturn.config import ConfigError
from microturn.train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]


def test_bundled_configs_load():
    tiny = load_train_config(REPO / "configs" / "train_tiny.yaml")
    small = load_train_config(REPO / "configs" / "train_small.yaml")
    assert tiny.model.n_experts >= tiny.model.top_k
    assert 8 <= small.model.n_experts <= 16 and small.model.top_k == 2


def test_small_config_has_100_to_300m_parameters():
    from microturn.train.model import InteractionModel, count_parameters, parameter_counts

    cfg = load_train_config(REPO / "configs" / "train_small.yaml").replace(
        model={"audio_vocab": 1024, "text_vocab": 260, "frame_vocab": 1000, "frame_tokens": 64}
    )
    total = parameter_counts(cfg.model)["total"]
    assert 100e6 <= total <= 300e6
    # the formula is exact: compare with a real (but smaller) model
    small = cfg.replace(model={"d_model": 64, "n_heads": 4, "expert_hidden": 32, "depth_d_model": 32, "depth_heads": 2})
    assert count_parameters(InteractionModel(small.model)) == parameter_counts(small.model)["total"]


def test_unknown_keys_and_bad_shapes_are_named():
    with pytest.raises(ConfigError, match="model.n_expert: unknown key"):
        load_train_config(None, ["model.n_expert=4"])
    with pytest.raises(ConfigError, match="top_k"):
        load_train_config(None, ["model.n_experts=2", "model.top_k=3"])
    with pytest.raises(ConfigError, match="divisible"):
        load_train_config(None, ["model.d_model=66", "model.n_heads=4"])


def test_overrides_apply():
    cfg = load_train_config(REPO / "configs" / "train_tiny.yaml", ["run.max_steps=3", "data.roles=first"])
    assert cfg.run.max_steps == 3 and cfg.data.roles == "first"
