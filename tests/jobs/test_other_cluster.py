"""An embedded build never joins someone else's Ray cluster that runs on the same machine."""

import subprocess
import sys

import pytest

from tests.jobs.ray_head import start_head
from tests.jobs.util import REPO

pytestmark = pytest.mark.slow


def test_embedded_build_starts_its_own_ray_beside_a_running_cluster(small_corpus_media, tmp_path):
    # The other cluster is the newest one of its temp root (RAY_TMPDIR/ray/ray_current_cluster), which
    # is exactly where a bare ray.init() looks for a cluster to join.
    other = start_head(num_cpus=1)
    try:
        env = {k: v for k, v in other.env.items() if not k.startswith("RAY_AUTH")}
        env["RAY_TMPDIR"] = str(other.folder)
        out = tmp_path / "corpus"
        res = subprocess.run(
            [sys.executable, "-m", "microturn.cli", "build", "--input", str(small_corpus_media), "--out", str(out),
             "--config", "configs/demo.yaml", "--quiet", "--num-cpus", "1",
             "--set", "chunk.window_chunks=10", "--set", "chunk.hop_chunks=10"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert (out / "dataset.json").exists()
        assert other.alive() and other.ray("status", "--address", other.gcs_address).returncode == 0
    finally:
        other.stop()
