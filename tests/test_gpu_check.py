"""benchmarks/gpu_check.py on a machine without CUDA: a quick, exact answer and exit status 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the full GPU check")
def test_without_cuda_prints_cuda_false_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == '{"cuda": false}'


def test_the_streaming_part_runs_both_model_variants_on_the_cpu():
    """The part the GPU run will do, on the CPU with the tiny model: micro-turn timings of the codes
    model and of its encoder-free variant (dMel + pixels)."""
    import json

    proc = subprocess.run([sys.executable, str(SCRIPT), "--part", "streaming", "--device", "cpu", "--train-config",
                           str(SCRIPT.parents[1] / "configs" / "train_tiny.yaml"), "--stream-turns", "3"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for variant in ("codes_tokens", "dmel_pixels"):
        assert out[variant]["turns"] == 3, out
        assert 0 < out[variant]["step_ms"]["p50"] <= out[variant]["step_ms"]["max"]
