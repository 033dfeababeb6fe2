"""A small real corpus for the CLI tests: 2 generated conversations of 12 s, built by the real job.

Samples are 5 s (25 chunks), shards hold whole sessions and are small, so the corpus has one shard per
session. Built once per test session (it starts an embedded Ray: about a minute on 2 cores). Set
MICROTURN_TEST_CORPUS to a corpus built the same way to skip the build while iterating on these tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from microturn.storage import read_parquet

REPO = Path(__file__).resolve().parents[2]
BUILD_OVERRIDES = [
    "chunk.window_chunks=25",
    "chunk.hop_chunks=25",
    "shard.target_bytes=50000",
    "job.num_cpus=2",
    "job.session_timeout_base_s=600",
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The built corpus folder (read-only for tests: copy it before changing anything)."""
    reuse = os.environ.get("MICROTURN_TEST_CORPUS")
    if reuse:
        return Path(reuse)
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("cli_corpus")
    manifest = synthesize_corpus(root / "media", sessions=2, seed=0, duration_s=12.0)
    cfg = load_config(REPO / "configs" / "demo.yaml", BUILD_OVERRIDES)
    out = root / "corpus"
    run_build(str(manifest), str(out), cfg, progress=False)
    return out


@pytest.fixture
def corpus_copy(corpus, tmp_path) -> Path:
    """A private copy of the corpus to corrupt."""
    dst = tmp_path / "corpus"
    shutil.copytree(corpus, dst, ignore=shutil.ignore_patterns("_work"))
    return dst


@pytest.fixture(scope="session")
def index_rows(corpus) -> list[dict]:
    return read_parquet(corpus / "index.parquet").to_pylist()


@pytest.fixture
def cli():
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from microturn.cli import app

    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture(autouse=True)
def _offline_and_wide(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables do not truncate keys in captured output
    yield
