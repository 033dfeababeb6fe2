"""Ray failures are per session: each becomes a quarantine reason, never an aborted build (no cluster needed)."""

import inspect
from pathlib import Path

import pytest
import ray.exceptions as rex

from microturn.jobs.build import _is_transient, ray_failure, worker_env_vars

REPO = Path(__file__).resolve().parents[2]


def _instances():
    """One instance of every RayError subclass Ray defines that we can build without a live cluster."""
    for name, cls in sorted(vars(rex).items()):
        if not (inspect.isclass(cls) and issubclass(cls, rex.RayError)) or cls in (rex.RayError, rex.RayTaskError):
            continue
        for args in ((), ("pid 4242 at 10.0.0.7 died",)):
            try:
                yield name, cls(*args)
                break
            except Exception:  # noqa: BLE001 - constructors that need cluster objects
                continue


def test_every_per_task_ray_error_becomes_a_transient_quarantine_reason():
    seen = 0
    for name, exc in _instances():
        if name in ("AuthenticationError", "LocalRayletDiedError"):
            with pytest.raises(type(exc)):  # the cluster is gone: stop the build, keep its work
                ray_failure(exc, 2)
            continue
        reason, message = ray_failure(exc, 2)
        assert reason and message, name
        assert "4242" not in message and "10.0.0.7" not in message, "messages stay identical across runs"
        assert _is_transient({"status": "rejected", "rejection": {"reason": reason}}), name
        seen += 1
    assert seen >= 30
    assert ray_failure(rex.OutOfMemoryError("x"), 2)[0] == "out_of_memory"
    assert ray_failure(rex.WorkerCrashedError(), 2)[0] == "worker_crashed"
    assert ray_failure(rex.TaskCancelledError(), 2)[0] == "cancelled"
    assert ray_failure(rex.ObjectLostError("ab" * 14, "owner", "call site"), 2)[0] == "ray:ObjectLostError"


def test_an_error_raised_by_our_code_in_a_task_is_internal():
    err = rex.RayTaskError("run_one_session", "tb", ValueError("bad value"))
    assert ray_failure(err, 2) == ("internal:ValueError", "bad value")


def test_workers_never_get_credentials_through_runtime_env():
    env = worker_env_vars({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t",
                           "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
                           "MICROTURN_ANYTHING": "x"})
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MICROTURN_ANYTHING"} & set(env)


def test_fault_injection_is_not_in_the_production_code():
    """Crashes and hangs are injected by tests through run_build(session_hooks=...), not by an
    environment variable the production code reads."""
    source = "".join(p.read_text() for p in (REPO / "microturn").rglob("*.py"))
    assert "CRASH_ONCE" not in source and "_fault_injection_point" not in source
