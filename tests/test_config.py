"""Config is validated at the edge: YAML + dotted overrides, errors name the key."""

from pathlib import Path

import pytest

from microturn.config import BuildConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    for name in ("demo.yaml", "default.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert isinstance(cfg, BuildConfig)


def test_dotted_override_changes_one_value():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["tokenizers.audio.bandwidth_kbps=3", "chunk.window_chunks=10"])
    assert cfg.tokenizers.audio.bandwidth_kbps == 3.0
    assert cfg.chunk.window_chunks == 10
    assert cfg.decode.frame_width == 80  # untouched values keep the file's


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  frame_widht: 3\n")
    with pytest.raises(ConfigError, match=r"decode\.frame_widht: unknown key"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"chunk\.window_chunks"):
        load_config(None, ["chunk.window_chunks=many"])
    with pytest.raises(ConfigError, match=r"tokenizers\.audio\.bandwidth_kbps"):
        load_config(None, ["tokenizers.audio.bandwidth_kbps=5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["chunk.window_chunks"])


def test_config_hash_ignores_job_settings_only():
    a = load_config(None)
    b = load_config(None, ["job.num_cpus=7"])
    c = load_config(None, ["chunk.hop_chunks=75"])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()


def test_yaml_round_trip(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["shard.prefix=part"])
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.dump_yaml())
    assert load_config(p) == cfg
