"""`ray job submit` to a local head with token authentication on (Ray's secure default) builds a
corpus that validates, the way docs/cluster.md tells users to do it; the test stops only what it
started, and another Ray cluster on the machine keeps running."""

import json
import re
import shlex
import sys
import time

import pytest

from tests.jobs.ray_head import start_head
from tests.jobs.util import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def bystander():
    """Somebody else's Ray cluster on the same machine: it must outlive the test's own head."""
    head = start_head(num_cpus=1)
    yield head
    head.stop()


@pytest.fixture
def ray_head(tmp_path):
    head = start_head(num_cpus=2)
    # A stale token from an earlier cluster in the client's home must not matter: the token path the
    # head was started with takes precedence over ~/.ray/auth_token.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("stale-token-of-another-cluster")
    head.env = {**head.env, "HOME": str(home)}
    yield head
    head.stop()


def _wait_for_job(head, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        res = head.ray("job", "status", "--address", head.dashboard_url, job_id)
        m = re.search(r"Job '\S+' (succeeded|failed|was stopped)", res.stdout + res.stderr)
        if m:
            return m.group(1)
        status = (res.stdout + res.stderr)[-300:]
        time.sleep(2)
    return f"not finished after {timeout_s:.0f} s: {status}"


def test_job_submission_with_token_auth_builds_a_valid_corpus(bystander, ray_head, small_corpus_media, tmp_path):
    from microturn.validate import validate_dataset

    out = tmp_path / "corpus"
    entry = (
        f"{shlex.quote(sys.executable)} -m microturn.cli build --input {small_corpus_media} --out {out} "
        "--config configs/demo.yaml --quiet --set chunk.window_chunks=10 --set chunk.hop_chunks=10"
    )
    res = ray_head.ray(
        "job", "submit", "--address", ray_head.dashboard_url, "--submission-id", "microturn-test",
        "--no-wait", "--runtime-env-json", json.dumps({"working_dir": str(REPO), "excludes": [".venv", ".git"]}),
        "--", *shlex.split(entry),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    outcome = _wait_for_job(ray_head, "microturn-test", 420)
    logs = ray_head.ray("job", "logs", "--address", ray_head.dashboard_url, "microturn-test").stdout
    assert outcome == "succeeded", logs[-3000:]
    assert "sessions in shards" in logs
    report = validate_dataset(str(out), deep=True)
    assert report.ok, report.problems

    ray_head.stop()
    assert not ray_head.session_pids(), "the test's head left processes behind"
    assert bystander.alive() and len(bystander.session_pids()) > 3, "the other cluster was stopped"
    res = bystander.ray("status", "--address", bystander.gcs_address)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_client_without_the_token_is_refused(ray_head):
    """Token auth really is on: the same request without credentials is turned away."""
    env = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    res = ray_head.ray("job", "list", "--address", ray_head.dashboard_url, env=env)
    assert res.returncode != 0
    assert "Authentication" in res.stdout + res.stderr
