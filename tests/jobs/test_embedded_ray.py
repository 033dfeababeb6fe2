"""The embedded Ray a build starts: its workers get the job's environment, the driver's stays as it was,
and stopping it leaves none of its processes behind."""

from __future__ import annotations

import os

import ray

from microturn.jobs.build import _init_ray, _stop_embedded_ray


@ray.remote
def _worker_env() -> dict[str, str]:
    return {k: os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}


def test_an_embedded_ray_gives_its_workers_the_job_environment_and_stops_completely(build_cfg, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    cfg = build_cfg.model_copy(update={"job": build_cfg.job.model_copy(update={"num_cpus": 1})})
    assert _init_ray(cfg, None) == "embedded"
    try:
        processes = [info.process for infos in ray._private.worker._global_node.all_processes.values() for info in infos]
        assert processes  # GCS, raylet, agents, monitor: started by this process
        assert ray.get(_worker_env.remote(), timeout=120) == {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        assert "HF_HUB_OFFLINE" not in os.environ and "TOKENIZERS_PARALLELISM" not in os.environ
    finally:
        _stop_embedded_ray()
    assert not ray.is_initialized()
    assert all(p.poll() is not None for p in processes)
