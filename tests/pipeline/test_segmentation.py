"""The bundled segmentation model run by our code: pyannote's figures exactly, without importing pyannote
in the workers once the weights are cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microturn.align.segmentation import bundled_checkpoint, load_segmenter
from tests.media_helpers import read_audio

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def call() -> np.ndarray:
    import pyannote.audio

    sample = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    if not sample.exists():
        pytest.skip("pyannote sample not installed")
    return read_audio(sample, 16000)[0].astype(np.float32)  # a 30 s two-speaker call


def _pyannote_scores(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the VAD computed through pyannote's own Inference (before segmentation.py)."""
    import torch
    from pyannote.audio import Model
    from pyannote.audio.core.inference import Inference

    model = Model.from_pretrained(str(bundled_checkpoint()))
    model.eval()
    inference = Inference(model, duration=5.0, step=1.0, batch_size=8, device=torch.device("cpu"),
                          pre_aggregation_hook=lambda s: np.max(s, axis=-1, keepdims=True))
    out = inference({"waveform": torch.from_numpy(wave)[None], "sample_rate": 16000})
    window = out.sliding_window
    scores = np.asarray(out.data, dtype=np.float32).reshape(-1)
    return window.start + window.step * np.arange(scores.shape[0]) + window.duration / 2, scores


@pytest.mark.parametrize("seconds", [30.0, 7.0, 3.0077, 1.5])
def test_our_segmenter_gives_pyannotes_scores_bit_for_bit(call: np.ndarray, seconds: float) -> None:
    wave = call[: int(seconds * 16000)]  # whole windows, a padded last window, shorter than one window
    times, scores = _pyannote_scores(wave)
    ours = load_segmenter(None, "cpu")(wave)
    assert ours.scores.tobytes() == scores.tobytes()
    assert ours.times_s.tobytes() == times.tobytes()


def test_a_worker_loads_the_cached_weights_without_importing_pyannote(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    probe = ("import sys; from microturn.align.segmentation import load_segmenter; s = load_segmenter(); "
             "print(sorted(m for m in ('pyannote.audio', 'lightning') if m in sys.modules))")
    first = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "['lightning', 'pyannote.audio']"  # the first load reads the checkpoint
    assert list((tmp_path / "microturn" / "calibration").glob("segmentation-*.pt"))
    later = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == "[]"


def test_on_cuda_the_segmenter_runs_cudnn_in_full_fp32_and_deterministic():
    """cuDNN's default TF32 moved the speech scores by up to 0.12 on an H200 against the CPU; the segmenter
    turns it off for its own calls and leaves the process's settings as they were."""
    import torch

    from microturn.align.segmentation import _full_fp32

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with _full_fp32(torch.device("cuda")):
        assert torch.backends.cudnn.enabled and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
    with _full_fp32(torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 == before[0]
