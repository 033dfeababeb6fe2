"""The driver's scheduler on a real embedded Ray: what it does with finished and late tasks, and the
tokenizer actors' timeout."""

import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _scheduler(out, cfg, session_ids):
    from microturn.jobs.build import _Plan, _Scheduler
    from microturn.jobs.progress import Progress
    from microturn.manifest import SessionSpec

    specs = [SessionSpec.model_validate({"session_id": sid, "audio": [{"uri": f"/nowhere/{sid}.wav"}]})
             for sid in session_ids]
    plan = _Plan(str(out), str(out / "_work"), specs, [], len(specs), {}, 0, [])
    (out / "_work" / "sessions").mkdir(parents=True)
    return _Scheduler(plan, cfg, [], 1, (), Progress(len(specs), False)), specs


def _finished_flights(ray, sched, specs, *, started_s_ago, budget_s):
    """Put one task per spec in flight that has already finished, submitted ``started_s_ago``."""
    from microturn.jobs.budget import SessionBudget
    from microturn.jobs.build import _Flight

    @ray.remote(num_cpus=0)
    def finished(sid):
        return {"status": "ok", "session_id": sid, "media_s": 8.0}

    refs = [finished.remote(s.session_id) for s in specs]
    ray.get(refs)
    for ref, spec in zip(refs, specs):
        sched.pending[ref] = _Flight(spec, SessionBudget(budget_s, 8.0, budget_s, 0.0), time.monotonic() - started_s_ago)


def test_a_session_that_finished_past_its_budget_is_collected_not_cancelled(ray_local, build_cfg, tmp_path):
    """The task finished (its part is written) but the driver looks only after its budget: it is an ok
    session, not a timeout."""
    sched, specs = _scheduler(tmp_path, build_cfg, ["s1"])
    _finished_flights(ray_local, sched, specs, started_s_ago=100.0, budget_s=1.0)
    assert sched.cut_off() == ["s1"]
    assert sched.plan.outcomes["s1"]["status"] == "ok"
    assert not (tmp_path / "_work" / "sessions" / "s1.reject.json").exists()


def test_collect_takes_every_finished_task_at_once(ray_local, build_cfg, tmp_path):
    sched, specs = _scheduler(tmp_path, build_cfg, ["a", "b", "c"])
    _finished_flights(ray_local, sched, specs, started_s_ago=0.0, budget_s=600.0)
    assert sorted(sched.collect(wait_s=5.0)) == ["a", "b", "c"]
    assert not sched.pending


def test_the_default_tokenizer_timeout_fires_before_the_drivers_cut_off(build_cfg):
    from microturn.jobs.tokenizer_pool import tokenizer_timeout_s

    assert tokenizer_timeout_s(build_cfg, 1000.0) < 1000.0
    set_ = build_cfg.model_copy(update={"job": build_cfg.job.model_copy(update={"tokenizer_timeout_s": 30.0})})
    assert tokenizer_timeout_s(set_, 1000.0) == 30.0


def test_a_hung_tokenizer_actor_times_out_and_is_restarted(ray_local):
    from microturn.jobs.tokenizer_pool import CONTROL, PooledTokenizer, TokenizerTimeout
    from tests.jobs.faults import HangingTokenizer

    ray = ray_local
    actor = ray.remote(num_cpus=0, max_restarts=1, concurrency_groups={CONTROL: 1})(HangingTokenizer).remote()
    first_pid = ray.get(actor.info.remote())["pid"]
    tok = PooledTokenizer([actor], "s", timeout_s=2.0)
    with pytest.raises(TokenizerTimeout, match="within 2 s"):
        tok.tokenize(None)
    deadline = time.monotonic() + 120
    while True:  # the restarted actor answers again, from a new process
        try:
            pid = ray.get(actor.info.remote(), timeout=10)["pid"]
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert pid != first_pid
