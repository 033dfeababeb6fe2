from pathlib import Path

import pytest

from tests.jobs.util import REPO


@pytest.fixture(scope="session")
def small_corpus_media(tmp_path_factory) -> Path:
    """Three short generated conversations (real mp4 + per-speaker wav files); returns the manifest."""
    from microturn.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("jobs_media")
    return synthesize_corpus(out, sessions=3, seed=11, duration_s=8.0)


@pytest.fixture(scope="session")
def build_cfg():
    from microturn.config import load_config

    # 2 s samples so even short sessions make several samples; tiny shards so there are several.
    return load_config(
        REPO / "configs" / "demo.yaml",
        ["chunk.window_chunks=10", "chunk.hop_chunks=10", "shard.target_bytes=60000", "job.session_timeout_base_s=300"],
    )


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
