"""The embedded Ray a build starts: its workers get the job's environment, the driver's stays as it was,
it starts no process a one-node build never uses (API server, autoscaler) and a minimal dashboard agent,
and stopping it leaves none of its processes behind."""

from __future__ import annotations

import os

import ray

from microturn.jobs.build import (
    EMBEDDED_RAY_ENV,
    _UNUSED_ON_AN_EMBEDDED_HEAD,
    _init_ray,
    _stop_embedded_ray,
    embedded_ray_env_vars,
)


@ray.remote
def _worker_env() -> dict[str, str]:
    return {k: os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", *EMBEDDED_RAY_ENV)}


def test_an_embedded_ray_gives_its_workers_the_job_environment_and_stops_completely(build_cfg, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    for key in EMBEDDED_RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    cfg = build_cfg.model_copy(update={"job": build_cfg.job.model_copy(update={"num_cpus": 1})})
    node_methods = {name: getattr(ray._private.node.Node, name) for name in _UNUSED_ON_AN_EMBEDDED_HEAD}
    dependency_check = ray._private.utils.get_dashboard_dependency_error
    assert _init_ray(cfg, None) == "embedded"
    try:
        started = ray._private.worker._global_node.all_processes
        assert {"gcs_server", "raylet", "log_monitor"} <= set(started)
        assert not {"dashboard", "monitor"} & set(started)  # API server, autoscaler: nothing to serve or scale
        (raylet,) = started["raylet"]  # the raylet starts the agent with the command it was given
        (agent,) = [arg for arg in raylet.process.args if arg.startswith("--dashboard_agent_command=")]
        assert "--minimal" in agent.split()  # no job API, metrics servers or Prometheus export
        # Ray's own code is back: a head started later in this process (not ours) is left as Ray makes it
        assert {name: getattr(ray._private.node.Node, name) for name in node_methods} == node_methods
        assert ray._private.utils.get_dashboard_dependency_error is dependency_check
        processes = [info.process for infos in started.values() for info in infos]
        assert ray.get(_worker_env.remote(), timeout=120) == {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                                             **EMBEDDED_RAY_ENV}
        assert not {"HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", *EMBEDDED_RAY_ENV} & set(os.environ)
    finally:
        _stop_embedded_ray()
    assert not ray.is_initialized()
    assert all(p.poll() is not None for p in processes)


def test_the_embedded_rays_socket_polling_keeps_its_ten_second_budget_and_yields_to_the_users_settings():
    interval_ms = int(EMBEDDED_RAY_ENV["RAY_raylet_client_connect_timeout_milliseconds"])
    attempts = int(EMBEDDED_RAY_ENV["RAY_raylet_client_num_connect_attempts"])
    assert interval_ms <= 100 and interval_ms * attempts == 1000 * 10  # Ray's defaults: 1000 ms x 10
    assert embedded_ray_env_vars({}) == EMBEDDED_RAY_ENV
    assert embedded_ray_env_vars({"RAY_raylet_client_num_connect_attempts": "5"}) == {
        "RAY_raylet_client_connect_timeout_milliseconds": "50"}
