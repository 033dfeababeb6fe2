"""`ray job submit` against a real local head (127.0.0.1) builds a corpus that validates."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jobs.util import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head(tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
         "--disable-usage-stats", "--include-dashboard", "true"],
        check=True, capture_output=True, env=env, timeout=180,
    )
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_job_submission_builds_a_valid_corpus(ray_head, small_corpus_media, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from microturn.validate import validate_dataset

    out = tmp_path / "corpus"
    client = JobSubmissionClient(ray_head)
    entry = (
        f"{sys.executable} -m microturn.cli build --input {small_corpus_media} --out {out} "
        f"--config configs/demo.yaml --quiet --set chunk.window_chunks=10 --set chunk.hop_chunks=10"
    )
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git"]})
    deadline = time.time() + 420
    status = client.get_job_status(job)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "sessions in shards" in logs
    report = validate_dataset(str(out), deep=True)
    assert report.ok, report.problems
