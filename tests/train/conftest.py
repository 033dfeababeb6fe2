"""Fixtures for the training tests: small corpora in the format of docs/format.md.

Until the pipeline's shard writer is wired in, ``write_corpus`` (train_corpus_util.py) writes shards
with a plain ``webdataset.TarWriter`` (members and meta.json as docs/format.md lists them, dataset.json
with fingerprints and vocab sizes). To train on a corpus built by ``microturn.jobs.build`` instead,
change ``train_corpus`` to build one and return its output folder: every test takes only a dataset dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_corpus_util import write_corpus


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three uneven shards (6, 3, 4 samples): the last one is held out for eval by default."""
    return write_corpus(tmp_path_factory.mktemp("train_corpus"), [6, 3, 4])


@pytest.fixture(scope="session")
def tiny_overfit_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two samples in one shard, to memorise."""
    return write_corpus(tmp_path_factory.mktemp("overfit_corpus"), [2], seed=3)


@pytest.fixture()
def tiny_cfg():
    """configs/train_tiny.yaml, shrunk further for unit tests."""
    from microturn.train.config import load_train_config

    repo = Path(__file__).resolve().parents[2]
    return load_train_config(repo / "configs" / "train_tiny.yaml", ["run.threads=1"])
