"""The build job: a session manifest in, a validated WebDataset corpus out, on Ray.

Execution model (Ray Core; why not Ray Data: see docs/architecture.md):

* the build holds an exclusive lock on its output (``jobs.lock``): one writer per corpus.
* one Ray task per session runs every stage (``jobs.outcomes.run_one_session``) and writes the
  session's samples to a *part* (``_work/sessions/<id>.tar``, atomic) plus its index rows and a small summary, or a
  reject marker with the reason. A part that exists is never recomputed: that is the resume state, and
  it records the config hash it was built with (a resume under another config is refused).
* the driver keeps a bounded number of tasks in flight (backpressure), gives each session a time
  budget that scales with its probed length (``jobs.budget``) and cuts off the ones that run past it,
  and feeds finished parts to the shard sink **in session-id order**, so which sample lands in which
  shard depends only on the data, never on timing or worker count. Shards hold whole sessions and are
  committed atomically with a marker listing them.
* at the end: index.parquet, quarantine.parquet, dataset.json, stats.json. Every manifest row is in
  a shard or in quarantine; the job fails only for reasons that are not about one input. Every per-task
  Ray failure (a crash, an OOM kill, a lost object...) is a quarantine row, not an aborted build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

from microturn import storage
from microturn.config import BuildConfig
from microturn.jobs.budget import SessionBudget, session_budget
from microturn.jobs.lock import output_lock
from microturn.jobs.outcomes import (
    WORK_DIR,
    SessionHook,
    check_config,
    discard_all,
    discard_outcome,
    part_uri,
    read_outcome,
    run_one_session,
    sessions_uri,
    write_reject,
)
from microturn.jobs.progress import Progress, Running
from microturn.manifest import SessionSpec, load_manifest
from microturn.process_env import environment
from microturn.records import Rejection

log = logging.getLogger("microturn.build")

SLOWEST_SHOWN = 5
TRANSIENT_REASONS = ("timeout", "worker_crashed", "out_of_memory", "cancelled")
# Environment variables the workers get through runtime_env: only ones that are not secrets. Credentials
# reach the workers the way they reach any process on a node (instance roles, the nodes' environment,
# ~/.aws): see docs/cluster.md. Ray stores runtime_env in its GCS and shows it in its dashboard.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_ENDPOINT")


@dataclass
class BuildSummary:
    out_uri: str
    sessions_in: int
    sessions_ok: int
    quarantined: int
    media_s_in: float
    media_s_out: float
    samples: int
    shards: int
    shard_bytes: int
    wall_s: float
    resumed_sessions: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)
    slowest_sessions: list[dict[str, Any]] = field(default_factory=list)  # run by this build, slowest first
    decoders: dict[str, int] = field(default_factory=dict)  # finished sessions by video decoder ("software", "cuda")
    pictures_left_out: int = 0  # video pictures exact picking did not decode (no chunk takes them, none refers to them)
    ray_start_s: float = 0.0  # of wall_s: starting an embedded Ray or connecting to a cluster (0: the caller's Ray)

    @property
    def throughput(self) -> float:
        """Media seconds per wall second."""
        return self.media_s_in / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["throughput_media_s_per_s"] = round(self.throughput, 3)
        d["media_hours_in"] = round(self.media_s_in / 3600, 6)
        d["media_hours_out"] = round(self.media_s_out / 3600, 6)
        return d


@dataclass
class _Plan:
    """What this run has to do: the sessions in order, the outcomes already on storage, the rest."""

    out_uri: str
    work_uri: str
    sessions: list[SessionSpec]
    rejections: list[Rejection]  # bad manifest rows
    rows_in: int
    outcomes: dict[str, dict[str, Any]]
    resumed: int
    todo: list[SessionSpec]


def run_build(
    manifest_uri: str,
    out_uri: str,
    cfg: BuildConfig,
    *,
    address: Optional[str] = None,
    progress: bool = True,
    retry_failed: bool = False,
    rebuild: bool = False,
    on_session_done: Optional[Callable[[str], None]] = None,
    session_hooks: Sequence[SessionHook] = (),
) -> BuildSummary:
    """Build (or resume building) the corpus for ``manifest_uri`` under ``out_uri``.

    Raises ``OutputLocked`` when another build writes ``out_uri``, ``ConfigMismatch`` when the work
    already there was built with another config (``rebuild`` discards it). With ``retry_failed`` a
    resumed build runs again the sessions an earlier run rejected for reasons that are not about their
    data (``internal:*`` errors, timeouts, dead workers, other Ray failures). ``session_hooks`` run at the
    start of every session task (fault injection in tests)."""
    from microturn.pipeline.shard import ShardSink

    t0 = time.perf_counter()
    storage.makedirs(out_uri)
    with output_lock(out_uri):
        plan = _plan(manifest_uri, out_uri, cfg, retry_failed=retry_failed, rebuild=rebuild)
        sink = ShardSink.resume(out_uri, cfg.shard)
        feeder = _InOrderFeeder(plan, sink)
        ray_stop = _RayStop()
        try:
            try:
                timings, ray_start_s = _schedule(plan, cfg, feeder, ray_stop, address=address, progress=progress,
                                                 on_session_done=on_session_done, hooks=tuple(session_hooks))
            except BaseException:
                sink.abort()  # the open shard stays invisible; committed ones are kept for the next run
                raise
            summary = _summarise(plan, cfg, sink, timings, time.perf_counter() - t0, ray_start_s)
        except BaseException:
            ray_stop.wait(raise_error=False)  # the error that stopped the build is the one to see
            raise
        ray_stop.wait()  # Ray is down (or disconnected) before the build returns
        return summary


# ---------------------------------------------------------------- plan


def _plan(manifest_uri: str, out_uri: str, cfg: BuildConfig, *, retry_failed: bool, rebuild: bool) -> _Plan:
    sessions, row_problems = load_manifest(manifest_uri)
    sessions.sort(key=lambda s: s.session_id)
    rejections = [
        Rejection(p.session_id or f"row-{p.line}", f"{manifest_uri}:{p.line}", "manifest", "invalid_row", p.message)
        for p in row_problems
    ]
    work_uri = storage.join(out_uri, WORK_DIR)
    if rebuild:
        discard_all(out_uri)
    storage.makedirs(sessions_uri(out_uri))
    storage.cleanup_temporaries(sessions_uri(out_uri))
    storage.cleanup_temporaries(storage.join(out_uri, "shards"))
    storage.cleanup_temporaries(out_uri)

    outcomes: dict[str, dict[str, Any]] = {}
    for spec in sessions:
        prior = read_outcome(work_uri, spec.session_id)
        if prior is not None and retry_failed and _is_transient(prior):
            discard_outcome(work_uri, spec.session_id)  # the reject and any late part of a cut-off task
            prior = None
        if prior is not None:
            outcomes[spec.session_id] = prior
    check_config(out_uri, outcomes, cfg.config_hash())
    storage.write_bytes_atomic(storage.join(out_uri, "config.yaml"), cfg.dump_yaml().encode())
    todo = [s for s in sessions if s.session_id not in outcomes]
    log.info("%d sessions (%d done earlier, %d to run), %d bad manifest rows",
             len(sessions), len(outcomes), len(todo), len(rejections))
    return _Plan(out_uri, work_uri, sessions, rejections, len(sessions) + len(row_problems), outcomes,
                 len(outcomes), todo)


class _InOrderFeeder:
    """Feeds finished sessions to the shard sink in session-id order, whatever order they finish in."""

    def __init__(self, plan: _Plan, sink: Any) -> None:
        self.plan, self.sink = plan, sink
        self.order = [s.session_id for s in plan.sessions]
        self.cursor = 0
        # Shards already committed by an earlier run hold a prefix of the ok sessions, in order.
        self.in_committed = sink.sessions_committed

    def drain(self) -> None:
        outcomes = self.plan.outcomes
        while self.cursor < len(self.order) and self.order[self.cursor] in outcomes:
            sid = self.order[self.cursor]
            self.cursor += 1
            if outcomes[sid]["status"] == "ok" and sid not in self.in_committed:
                self.sink.add_part(part_uri(self.plan.work_uri, sid, ".tar"))


# ---------------------------------------------------------------- schedule


def worker_env_vars(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment the session tasks get (a cluster's through the runtime_env, an embedded Ray's
    from its raylet): never a credential."""
    environ = dict(os.environ) if environ is None else environ
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: environ[k] for k in FORWARDED_ENV if k in environ})
    return env


# Ray's processes wait this long between attempts to connect to a local socket (raylet, object store),
# and make this many attempts (Ray's defaults: 1000 ms x 10). The raylet connects to its own object
# store while that store's thread is still starting; losing that race cost a whole second in 3 of 8
# starts on 2 cores (the node started in 1.0 s, 2.0 s with the wait). Polled every 50 ms, the loss is
# 50 ms, and the whole wait a process allows stays 10 s.
EMBEDDED_RAY_ENV = {"RAY_raylet_client_connect_timeout_milliseconds": "50",
                    "RAY_raylet_client_num_connect_attempts": "200"}


def embedded_ray_env_vars(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """``EMBEDDED_RAY_ENV`` for the Ray a build starts, less what the environment already sets: a user's
    own Ray settings win."""
    environ = dict(os.environ) if environ is None else environ
    return {k: v for k, v in EMBEDDED_RAY_ENV.items() if k not in environ}


# What ray.init starts on a head node that an embedded build never uses (methods of Ray's private
# ``Node``; Ray itself runs without either: a head whose API server failed to start only warns):
# - the API server (dashboard.py): started even with include_dashboard=False, then with only its usage
#   statistics module, and ray.init waits for it before it starts the raylet: 0.5-0.8 s of every build
#   (measured on 2 cores; 0.7 CPU-s);
# - the autoscaler's monitor: a one-node cluster of fixed size has nothing to scale, and its 0.4 CPU-s
#   of imports compete with the raylet's agents, which the node waits for (0.2 s).
# A build that connects to a cluster (``ray job submit``) gets that cluster's dashboard and job API.
_UNUSED_ON_AN_EMBEDDED_HEAD = ("start_api_server", "start_monitor")


def _minimal_dashboard_agent() -> ImportError:
    # Ray starts its dashboard agent with --minimal when this says the dashboard's dependencies are
    # missing (a Ray installed without ray[default]). A minimal agent serves no job HTTP API, metrics
    # gRPC or Prometheus export, none of which an embedded build uses, and reports those ports as
    # absent at once. A full agent first imports aiohttp, grpc and opentelemetry and starts its servers,
    # and the raylet registers the node only after it has their ports: 0.2 s of every start on 2 cores
    # (0.25 s on 1), and three listening ports fewer.
    return ImportError("an embedded build runs the dashboard agent minimal")


@contextlib.contextmanager
def _without_unused_head_processes() -> Iterator[None]:
    """While the block runs, a Ray head started in this process starts neither of
    ``_UNUSED_ON_AN_EMBEDDED_HEAD`` and a minimal dashboard agent; what this Ray lacks is left as it is."""
    from ray._private import node, utils

    wanted = [(node.Node, name, _not_started) for name in _UNUSED_ON_AN_EMBEDDED_HEAD]
    wanted.append((utils, "get_dashboard_dependency_error", _minimal_dashboard_agent))
    patches = [(owner, name, replacement) for owner, name, replacement in wanted if name in vars(owner)]
    saved = [(owner, name, vars(owner)[name]) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _not_started(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


def _init_ray(cfg: BuildConfig, address: Optional[str]) -> Optional[Literal["connected", "embedded"]]:
    """Connect to a cluster (address, or RAY_ADDRESS inside `ray job submit`) or start an embedded one.
    Returns how: "connected", "embedded" (started here: ours to stop), None (the caller's Ray)."""
    import ray

    if ray.is_initialized():
        return None
    address = address or cfg.job.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env_vars()}, log_to_driver=True,
                 configure_logging=False)
        return "connected"
    num_cpus = cfg.job.num_cpus or os.cpu_count() or 1
    # Small machines: cap the object store; results are small summaries, parts go to storage.
    store = (cfg.job.object_store_mb or 512) * 1024 * 1024
    # The embedded raylet hands its own environment to every worker it starts, so the variables go
    # there, not into a runtime_env: a runtime_env would keep the workers Ray starts with the driver
    # idle (they have no runtime_env) and make the first task wait ~0.6 s for a worker of its own.
    # address="local": always a new embedded instance. Without it ray.init() joins the newest cluster
    # started on this machine (/tmp/ray/ray_current_cluster), someone else's cluster included.
    with environment({**embedded_ray_env_vars(), **worker_env_vars()}), _without_unused_head_processes():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=store,
            log_to_driver=True,
            configure_logging=False,
        )
    return "embedded"


def _stop_embedded_ray() -> None:
    """``ray.shutdown`` with the autoscaler's monitor stopped first, where one runs: on SIGTERM it
    reports to the GCS, which shutdown has already stopped, and so waits out its 1 s grace before the
    SIGKILL."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    try:
        if node is not None:
            node.kill_monitor(check_alive=False)
    except Exception as exc:  # noqa: BLE001  (a private API: another Ray may differ; shutdown still works)
        log.debug("could not stop Ray's monitor first: %r", exc)
    ray.shutdown()


@dataclass
class _Flight:
    spec: SessionSpec
    budget: SessionBudget
    start: float  # time.monotonic() at submission

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class _Scheduler:
    """Keeps ``max_in_flight`` session tasks running, collects their outcomes, cuts off the ones that
    run past their budget. Every outcome, whatever happened, lands in ``plan.outcomes``."""

    def __init__(self, plan: _Plan, cfg: BuildConfig, pool: list[Any], max_in_flight: int,
                 hooks: tuple[SessionHook, ...], bar: Progress) -> None:
        import ray

        self.plan, self.cfg, self.pool, self.max_in_flight, self.hooks, self.bar = plan, cfg, pool, max_in_flight, hooks, bar
        self.task = ray.remote(num_cpus=1, max_retries=cfg.job.max_retries, retry_exceptions=False)(run_one_session)
        self.cfg_json = cfg.model_dump_json()
        self.queue = list(plan.todo)
        self.pending: dict[Any, _Flight] = {}
        self.timings: list[dict[str, Any]] = []

    def busy(self) -> bool:
        return bool(self.queue or self.pending)

    def submit(self) -> None:
        while self.queue and len(self.pending) < self.max_in_flight:
            spec = self.queue.pop(0)
            budget = session_budget(spec, self.cfg)  # probes headers: cheap, and overlaps running tasks
            ref = self.task.remote(spec.model_dump_json(), self.cfg_json, self.plan.work_uri, self.pool or None,
                                   1, budget.seconds, self.hooks)
            self.pending[ref] = _Flight(spec, budget, time.monotonic())

    def collect(self, wait_s: float = 1.0) -> list[str]:
        """Outcomes of every task that finished (waiting up to ``wait_s`` for a first one); returns their
        session ids."""
        import ray

        if not self.pending:
            return []
        ready, rest = ray.wait(list(self.pending), num_returns=1, timeout=wait_s)
        if ready and rest:  # and every other one that is ready too, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return self._take(ready)

    def _take(self, refs: list[Any]) -> list[str]:
        import ray

        done = []
        for ref in refs:
            flight = self.pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:
                outcome = self._reject(flight, *ray_failure(exc, self.cfg.job.max_retries))
            self._finish(flight, outcome)
            done.append(flight.spec.session_id)
        return done

    def cut_off(self) -> list[str]:
        """Cancel the tasks past their budget; they are quarantined as ``timeout``. A task that finished
        (even just now, past its budget) is collected instead: a finished session is never cancelled."""
        import ray

        late = [ref for ref, f in self.pending.items() if f.elapsed() > f.budget.seconds]
        if not late:
            return []
        finished, late = ray.wait(late, num_returns=len(late), timeout=0)
        done = self._take(finished)
        for ref in late:
            ray.cancel(ref, force=True)
            flight = self.pending.pop(ref)
            self._finish(flight, self._reject(flight, "timeout", flight.budget.timeout_message()))
            done.append(flight.spec.session_id)
        return done

    def running(self) -> list[Running]:
        return [Running(f.spec.session_id, f.elapsed(), f.budget.seconds, f.budget.media_s) for f in self.pending.values()]

    def _reject(self, flight: _Flight, reason: str, message: str) -> dict[str, Any]:
        spec = flight.spec
        r = Rejection(spec.session_id, ";".join(spec.source_uris()), "job", reason, message)
        return write_reject(self.plan.work_uri, r, self.cfg.config_hash())

    def _finish(self, flight: _Flight, outcome: dict[str, Any]) -> None:
        self.plan.outcomes[flight.spec.session_id] = outcome
        status = outcome["status"] if outcome["status"] == "ok" else outcome["rejection"]["reason"]
        self.timings.append({"session_id": flight.spec.session_id, "wall_s": round(flight.elapsed(), 3),
                             "budget_s": flight.budget.seconds, "media_s": flight.budget.media_s, "outcome": status})
        self.bar.advance(float(outcome.get("media_s", 0.0)))


# Errors that say the cluster itself is gone or refuses us: no session can succeed, so the build stops
# (its finished work is kept for the resume) instead of quarantining every remaining session.
_CLUSTER_FATAL = ("AuthenticationError", "LocalRayletDiedError")


def ray_failure(exc: Exception, max_retries: int) -> tuple[str, str]:
    """(reason, message) of the quarantine row for a session whose task failed in Ray.

    Messages are fixed texts (plus the error of our own code for ``internal:*``), never Ray's own
    text, which names process ids and addresses: quarantine.parquet stays identical across runs. The
    full error goes to the log."""
    import ray.exceptions as rex

    if type(exc).__name__ in _CLUSTER_FATAL:
        raise exc
    log.warning("session task failed in Ray: %r", exc)
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause
        return "internal:" + type(cause).__name__, str(cause) or repr(cause)
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError)):
        return "worker_crashed", f"the worker process died {max_retries + 1} time(s) (killed, crashed, or its node was lost)"
    if isinstance(exc, rex.OutOfMemoryError):
        return "out_of_memory", ("Ray's memory monitor killed the task (the node ran out of memory); lower "
                                 "job.max_in_flight or give the nodes more memory, then re-run with --retry-failed")
    if isinstance(exc, rex.TaskCancelledError):
        return "cancelled", "the task was cancelled"
    return f"ray:{type(exc).__name__}", f"Ray failed the task with {type(exc).__name__} (see the driver log)"


def _schedule(plan: _Plan, cfg: BuildConfig, feeder: _InOrderFeeder, ray_stop: _RayStop, *, address: Optional[str],
              progress: bool, on_session_done: Optional[Callable[[str], None]],
              hooks: tuple[SessionHook, ...]) -> tuple[list[dict[str, Any]], float]:
    """Run every session of ``plan.todo`` and feed the sink as the order allows; returns the timings and
    the seconds Ray took to start (or to connect). Ray is stopped (or disconnected) through ``ray_stop``,
    which the caller waits for."""
    feeder.drain()
    if not plan.todo:
        return [], 0.0
    import ray

    from microturn.jobs.tokenizer_pool import start_pool

    bar = Progress(len(plan.todo), progress)
    t0 = time.perf_counter()
    ray_by = _init_ray(cfg, address)
    ray_start_s = time.perf_counter() - t0
    try:
        resources = ray.cluster_resources()
        pool = start_pool(cfg, resources.get("GPU", 0.0))
        # Pool actors hold a CPU each; the session tasks get the rest.
        cpus = max(1, int(resources.get("CPU", 1)) - len(pool))
        # Never more in flight than CPUs to run them: a queued task's budget clock (started at
        # submission) would run while it waits for a CPU.
        sched = _Scheduler(plan, cfg, pool, min(cfg.job.max_in_flight or cpus, cpus), hooks, bar)
        while sched.busy():
            sched.submit()
            finished = sched.collect() + sched.cut_off()
            bar.tick(sched.running())
            for sid in finished:
                if on_session_done:
                    on_session_done(sid)
            feeder.drain()
        feeder.drain()
        return sched.timings, ray_start_s
    finally:
        bar.close()
        if ray_by == "embedded":
            ray_stop.begin(_stop_embedded_ray)
        elif ray_by == "connected":
            ray_stop.begin(ray.shutdown)


class _RayStop:
    """Stops Ray on a thread of its own while the driver writes the corpus files, which need nothing from
    Ray: an embedded Ray takes 0.3-0.6 s to stop (its processes are asked to exit one after the other),
    about twice what the index, quarantine and summary take."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def begin(self, stop: Callable[[], None]) -> None:
        def run() -> None:
            try:
                stop()
            except BaseException as exc:  # noqa: BLE001  (handed to the thread that waits)
                self._error = exc

        self._thread = threading.Thread(target=run, name="microturn-ray-stop")
        self._thread.start()

    def wait(self, raise_error: bool = True) -> None:
        """Until Ray has stopped; its error, if any, is raised (or logged, with ``raise_error=False``)."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread, error, self._error = None, self._error, None
        if error is not None:
            if raise_error:
                raise error
            log.warning("stopping Ray failed too: %r", error)


# ---------------------------------------------------------------- summarise


def _summarise(plan: _Plan, cfg: BuildConfig, sink: Any, timings: list[dict[str, Any]], wall_s: float,
               ray_start_s: float) -> BuildSummary:
    from microturn.pipeline.shard import finalize_dataset

    outcomes = plan.outcomes
    order = [s.session_id for s in plan.sessions]
    ok = [sid for sid in order if outcomes.get(sid, {}).get("status") == "ok"]
    rejections = list(plan.rejections)
    rejections += [Rejection(**outcomes[sid]["rejection"]) for sid in order
                   if outcomes.get(sid, {}).get("status") == "rejected"]
    doc = finalize_dataset(
        plan.out_uri,
        sink,
        config_hash=cfg.config_hash(),
        tokenizers=_agreed([outcomes[s] for s in ok], "tokenizers", {}),
        members=_agreed([outcomes[s] for s in ok], "members", []),
        rejections=rejections,
        sessions_in=plan.rows_in,
    )
    summary = BuildSummary(
        out_uri=plan.out_uri,
        sessions_in=plan.rows_in,
        sessions_ok=len(ok),
        quarantined=len(rejections),
        media_s_in=sum(float(outcomes[s].get("media_s", 0.0)) for s in order if s in outcomes),
        media_s_out=sum(float(outcomes[s]["media_s"]) for s in ok),
        samples=doc["totals"]["samples"],
        shards=doc["totals"]["shards"],
        shard_bytes=doc["totals"]["bytes"],
        wall_s=wall_s,
        resumed_sessions=plan.resumed,
        rejects_by_reason=_count_reasons(rejections),
        stage_s=_stage_seconds([outcomes[s] for s in ok]),
        decoders=_decoder_counts([outcomes[s] for s in ok]),
        pictures_left_out=sum(outcomes[s].get("stats", {}).get("decoder", {}).get("left_out", 0) for s in ok),
        slowest_sessions=sorted(timings, key=lambda t: (-t["wall_s"], t["session_id"]))[:SLOWEST_SHOWN],
        ray_start_s=round(ray_start_s, 3),
    )
    storage.write_bytes_atomic(
        storage.join(plan.out_uri, "stats.json"), json.dumps(summary.to_json(), indent=2, sort_keys=True).encode()
    )
    return summary


def _stage_seconds(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    stage_s: dict[str, float] = {}
    for o in outcomes:
        for k, v in o.get("stage_s", {}).items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    return {k: round(v, 3) for k, v in sorted(stage_s.items())}


def _decoder_counts(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    """Sessions per decoder: the device type or "software", "+skip_nonref" when frames were skipped
    ("unrecorded": outcomes written before decoders were recorded)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        d = o.get("stats", {}).get("decoder")
        key = "unrecorded" if d is None else (d["hwaccel"] or "software") + ("+skip_nonref" if d["skip_nonref"] else "")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _is_transient(outcome: dict[str, Any]) -> bool:
    """A reject that says nothing about the data: a bug, a timeout, a dead worker, another Ray failure."""
    if outcome.get("status") != "rejected":
        return False
    reason = outcome["rejection"]["reason"]
    return reason.startswith(("internal:", "ray:")) or reason in TRANSIENT_REASONS


def _count_reasons(rejections: list[Rejection]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejections:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return dict(sorted(counts.items()))


def _agreed(outcomes: list[dict[str, Any]], key: str, empty: Any) -> Any:
    """All sessions must have been tokenized the same way (same tokenizers, same member table)."""
    seen = {json.dumps(o.get(key, empty), sort_keys=True) for o in outcomes}
    if len(seen) > 1:
        raise RuntimeError(f"sessions were tokenized with different {key}: {sorted(seen)}")
    return json.loads(seen.pop()) if seen else empty
