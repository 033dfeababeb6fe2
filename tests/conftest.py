"""Shared fixtures: real synthetic media written with PyAV (see microturn/synth/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

SHARED_MEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "media"


def make_corpus(dir: Path, sessions: int = 2, seed: int = 0, duration_s: float = 12.0, **kw: Any) -> Path:
    """Write a synthetic corpus into ``dir`` and return its manifest (``dir/sessions.jsonl``).

    Keywords go to ``microturn.synth.synthesize_corpus`` (video, av_offset_ms, layout, sample_rate,
    frame_size, fps, leakage_db, noise_db, vary_starts, audio_format). Each session folder holds
    ``truth.json``; the manifest row's ``meta["truth"]`` points to it (load with
    ``microturn.synth.load_truth``).
    """
    from microturn.synth import synthesize_corpus

    return synthesize_corpus(Path(dir), sessions, seed, duration_s, **kw)


@pytest.fixture(scope="session", autouse=True)
def _calibration_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Seeded codecs cache their calibration under $XDG_CACHE_HOME (default ~/.cache): tests keep it in a
    temporary folder shared by the session (and the processes it starts), never in the user's home."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(autouse=True)
def _no_outside_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never run on a cluster the user's shell points at: builds without an address start their own
    embedded Ray (tests that need a head start one of their own, tests/jobs/ray_head.py)."""
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of 2 synthetic 12 s sessions (seed 0, per-speaker WAVs + MP4 at 15 fps).

    Session ``synth-0-000`` has its video in sync; ``synth-0-001`` has video content lagging the audio
    by 120 ms (``truth.av_offset_ms``). Sources may start at stated offsets (manifest ``offset_s``,
    the MP4's video stream ``start_time``). Read-only: copy it before changing anything.
    """
    folder = tmp_path_factory.mktemp("synth_corpus")
    return make_corpus(folder, sessions=2, seed=0, duration_s=12.0, av_offset_ms=[0.0, 120.0])


@pytest.fixture
def corpus_factory() -> Callable[..., Path]:
    """``make_corpus`` as a fixture: ``from conftest import ...`` is unreliable when several test folders
    hold a conftest.py (pytest imports each as the module ``conftest``, the last one wins)."""
    return make_corpus
