"""Fixtures for the training tests: a corpus built by the real pipeline, and layouts derived from it.

``train_corpus`` is built once per test session by ``microturn.jobs.build.run_build`` from two generated
12 s conversations (windows of 10 chunks = 2 s, one shard per session: 2 shards of 6 samples; about a
minute on 2 cores, most of it model loading in Ray workers). Set MICROTURN_TRAIN_TEST_CORPUS to a corpus
built the same way to skip the build while iterating on these tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_corpus_util import derive_corpus

REPO = Path(__file__).resolve().parents[2]
BUILD_OVERRIDES = [
    "chunk.window_chunks=10",
    "chunk.hop_chunks=10",
    "shard.target_bytes=1000",  # closes a shard at every session boundary
    "job.num_cpus=2",
    "job.session_timeout_base_s=600",
]


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real built corpus (read-only): shard-000000.tar (session synth-0-000, 6 windows) and
    shard-000001.tar (synth-0-001, 6 windows); the last shard is held out for eval by default."""
    reuse = os.environ.get("MICROTURN_TRAIN_TEST_CORPUS")
    if reuse:
        return Path(reuse)
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("train_corpus")
    manifest = synthesize_corpus(root / "media", sessions=2, seed=0, duration_s=12.0)
    cfg = load_config(REPO / "configs" / "demo.yaml", BUILD_OVERRIDES)
    out = root / "corpus"
    summary = run_build(str(manifest), str(out), cfg, progress=False)
    assert summary.shards == 2 and summary.samples == 12, summary
    return out


@pytest.fixture(scope="session")
def audio_only_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real built corpus of one audio-only session: a 6 s two-channel call (one speaker per channel,
    no video, like a phone call), 2 s windows: 3 samples whose frames.npy is [0, h, w]."""
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("audio_only_corpus")
    manifest = synthesize_corpus(root / "media", sessions=1, seed=1, duration_s=6.0, video=False, layout="stereo")
    cfg = load_config(REPO / "configs" / "demo.yaml", BUILD_OVERRIDES)
    out = root / "corpus"
    summary = run_build(str(manifest), str(out), cfg, progress=False)
    assert summary.shards == 1 and summary.samples == 3, summary
    return out


@pytest.fixture(scope="session")
def tiny_overfit_corpus(train_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real windows in one shard, to memorise."""
    return derive_corpus(train_corpus, tmp_path_factory.mktemp("overfit_corpus"), [[0, 1]])


@pytest.fixture(scope="session")
def uneven_corpus(train_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real windows re-sharded unevenly: train shards of 6 and 2 windows, 4 held out."""
    return derive_corpus(train_corpus, tmp_path_factory.mktemp("uneven_corpus"), [range(6), [6, 7], range(8, 12)])


@pytest.fixture()
def tiny_cfg():
    """configs/train_tiny.yaml, shrunk further for unit tests."""
    from microturn.train.config import load_train_config

    return load_train_config(REPO / "configs" / "train_tiny.yaml", ["run.threads=1"])
