"""The build job: a session manifest in, a validated WebDataset corpus out, on Ray.

Execution model (Ray Core; why not Ray Data: see docs/architecture.md):

* one Ray task per session runs every stage (``pipeline.session.process_session``) and writes the
  session's samples to a *part* (``_work/sessions/<id>.tar``, atomic) plus a small summary, or a
  reject marker with the reason. A part that exists is never recomputed: that is the resume state.
* the driver keeps a bounded number of tasks in flight (backpressure), cuts off sessions that run
  past ``job.session_timeout_s``, and feeds finished parts to the shard sink **in session-id
  order**, so which sample lands in which shard depends only on the data, never on timing or worker
  count. Shards hold whole sessions and are committed atomically with a marker listing them.
* at the end: index.parquet, quarantine.parquet, dataset.json, stats.json. Every manifest row is in
  a shard or in quarantine; the job fails only for reasons that are not about one input.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from microturn import storage
from microturn.config import BuildConfig
from microturn.manifest import SessionSpec, load_manifest
from microturn.records import Rejection

log = logging.getLogger("microturn.build")

WORK_DIR = "_work"
SESSIONS_DIR = "sessions"


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


# ---------------------------------------------------------------- the worker side


def part_uri(work_uri: str, session_id: str, suffix: str) -> str:
    return storage.join(work_uri, SESSIONS_DIR, f"{session_id}{suffix}")


def run_one_session(
    spec_json: str, cfg_json: str, work_uri: str, tokenizer_pool: Any = None, torch_threads: int = 1
) -> dict[str, Any]:
    """Process one session and leave its outcome on storage; returns the outcome summary.

    Data problems become a reject marker. The outcome files are written atomically, so a worker killed
    here leaves nothing behind and the task is simply run again.
    """
    from microturn.pipeline.session import LocalTokenizer, process_session
    from microturn.pipeline.shard import write_part
    from microturn.records import StageError
    from microturn.tokenizers import load_tokenizers

    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    spec = SessionSpec.model_validate_json(spec_json)
    cfg = BuildConfig.model_validate_json(cfg_json)
    try:
        if tokenizer_pool is not None:
            from microturn.jobs.tokenizer_pool import PooledTokenizer

            tokenizer = PooledTokenizer(tokenizer_pool, spec.session_id)
        else:  # cached per worker process: models load once, not once per session
            tokenizer = LocalTokenizer(load_tokenizers(cfg.tokenizers))
        result = process_session(spec, cfg, tokenizer)
    except StageError as err:
        rejection = Rejection(spec.session_id, err.source or ";".join(spec.source_uris()), err.stage, err.reason, err.message)
        return _write_reject(work_uri, rejection)
    _fault_injection_point(spec.session_id)
    write_part(part_uri(work_uri, spec.session_id, ".tar"), result.samples)
    summary = result.summary()
    summary["status"] = "ok"
    summary["tokenizers"] = tokenizer.describe()
    storage.write_bytes_atomic(
        part_uri(work_uri, spec.session_id, ".json"), json.dumps(summary, sort_keys=True).encode()
    )
    return summary


def _fault_injection_point(session_id: str) -> None:
    """Crash-test hook: ``MICROTURN_CRASH_ONCE=<session_id>:<marker file>`` kills this worker process
    (as an OOM kill or a lost node would) the first time that session reaches this point. Used by the
    tests that prove a killed worker changes nothing in the output."""
    spec = os.environ.get("MICROTURN_CRASH_ONCE", "")
    sid, _, marker = spec.partition(":")
    if sid == session_id and marker and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(137)


def _write_reject(work_uri: str, r: Rejection) -> dict[str, Any]:
    outcome = {"status": "rejected", "session_id": r.session_id, "rejection": r.__dict__}
    storage.write_bytes_atomic(
        part_uri(work_uri, r.session_id, ".reject.json"), json.dumps(outcome, sort_keys=True).encode()
    )
    return outcome


def read_outcome(work_uri: str, session_id: str) -> Optional[dict[str, Any]]:
    """The recorded outcome of a session from an earlier (possibly killed) run, if any."""
    for suffix in (".json", ".reject.json"):
        uri = part_uri(work_uri, session_id, suffix)
        if storage.exists(uri):
            outcome = json.loads(storage.read_bytes(uri))
            if outcome.get("status") == "ok" and not storage.exists(part_uri(work_uri, session_id, ".tar")):
                return None  # summary without its part: recompute
            return outcome
    return None


# ---------------------------------------------------------------- the driver side


def _init_ray(cfg: BuildConfig, address: Optional[str]) -> bool:
    """Connect to a cluster (address, or RAY_ADDRESS inside `ray job submit`) or start an embedded one.
    Returns True when we started Ray here (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or cfg.job.address or os.environ.get("RAY_ADDRESS")
    env_vars = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env_vars.update({k: v for k, v in os.environ.items() if k.startswith(("MICROTURN_", "AWS_"))})
    env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True, configure_logging=False)
        return True
    num_cpus = cfg.job.num_cpus or os.cpu_count() or 1
    # Small machines: cap the object store; results are small summaries, parts go to storage.
    store = (cfg.job.object_store_mb or 512) * 1024 * 1024
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=store,
        runtime_env=env,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


class _Progress:
    """Live progress: a rich bar on a terminal, a log line every 10 s otherwise (Ray job logs)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.media_s, self.t0 = total, 0, 0.0, time.perf_counter()
        self.enabled = enabled
        self._last_log = 0.0
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), transient=False,
            )
            self._task = self._bar.add_task("sessions", total=total, rate="")
            self._bar.start()

    def advance(self, media_s: float) -> None:
        self.done += 1
        self.media_s += media_s
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = f"{self.media_s / 3600:.3f} h media, {self.media_s / elapsed:.1f}x realtime"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=rate)
        elif self.enabled and (time.perf_counter() - self._last_log > 10 or self.done == self.total):
            self._last_log = time.perf_counter()
            left = self.total - self.done
            eta = elapsed / self.done * left if self.done else float("nan")
            print(f"[microturn] {self.done}/{self.total} sessions, {rate}, ETA {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _remote_session_fn(cfg: BuildConfig):
    import ray

    return ray.remote(num_cpus=1, max_retries=cfg.job.max_retries, retry_exceptions=False)(run_one_session)


def _failure_outcome(spec: SessionSpec, reason: str, message: str, work_uri: str) -> dict[str, Any]:
    r = Rejection(spec.session_id, ";".join(spec.source_uris()), "job", reason, message)
    return _write_reject(work_uri, r)


def run_build(
    manifest_uri: str,
    out_uri: str,
    cfg: BuildConfig,
    *,
    address: Optional[str] = None,
    progress: bool = True,
    retry_failed: bool = False,
    on_session_done: Optional[Callable[[str], None]] = None,
) -> BuildSummary:
    """Build (or resume building) the corpus for ``manifest_uri`` under ``out_uri``.

    With ``retry_failed`` a resumed build runs again the sessions an earlier run rejected for reasons
    that are not about their data (``internal:*`` errors, ``timeout``, ``worker_crashed``)."""
    import ray

    from microturn.pipeline.shard import ShardSink, finalize_dataset, read_part

    t0 = time.perf_counter()
    sessions, row_problems = load_manifest(manifest_uri)
    sessions.sort(key=lambda s: s.session_id)
    rejections = [
        Rejection(p.session_id or f"row-{p.line}", f"{manifest_uri}:{p.line}", "manifest", "invalid_row", p.message)
        for p in row_problems
    ]
    storage.makedirs(out_uri)
    work_uri = storage.join(out_uri, WORK_DIR)
    storage.makedirs(storage.join(work_uri, SESSIONS_DIR))
    storage.cleanup_temporaries(storage.join(work_uri, SESSIONS_DIR))
    storage.cleanup_temporaries(storage.join(out_uri, "shards"))
    storage.write_bytes_atomic(storage.join(out_uri, "config.yaml"), cfg.dump_yaml().encode())

    outcomes: dict[str, dict[str, Any]] = {}
    for spec in sessions:
        prior = read_outcome(work_uri, spec.session_id)
        if prior is not None and retry_failed and _is_transient(prior):
            storage.remove(part_uri(work_uri, spec.session_id, ".reject.json"))
            prior = None
        if prior is not None:
            outcomes[spec.session_id] = prior
    resumed = len(outcomes)
    todo = [s for s in sessions if s.session_id not in outcomes]
    log.info("%d sessions (%d done earlier, %d to run), %d bad manifest rows", len(sessions), resumed, len(todo), len(rejections))

    # Shards already committed by an earlier run hold a prefix of the ok sessions, in order.
    sink = ShardSink.resume(out_uri, cfg.shard)
    in_committed = sink.sessions_committed
    order = [s.session_id for s in sessions]
    cursor = 0

    def drain() -> None:
        """Feed every finished session at the head of the order to the sink."""
        nonlocal cursor
        while cursor < len(order) and order[cursor] in outcomes:
            sid = order[cursor]
            cursor += 1
            if outcomes[sid]["status"] != "ok" or sid in in_committed:
                continue
            sink.add_session(read_part(part_uri(work_uri, sid, ".tar")))

    started_ray = False
    bar = _Progress(len(todo), progress)
    try:
        drain()
        if todo:
            started_ray = _init_ray(cfg, address)
            from microturn.jobs.tokenizer_pool import start_pool

            task = _remote_session_fn(cfg)
            resources = ray.cluster_resources()
            pool = start_pool(cfg, resources.get("GPU", 0.0))
            # Pool actors hold a CPU each; the session tasks get the rest.
            cpus = max(1, int(resources.get("CPU", 1)) - len(pool))
            max_in_flight = cfg.job.max_in_flight or cpus
            cfg_json = cfg.model_dump_json()
            pending: dict[Any, tuple[SessionSpec, float]] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < max_in_flight:
                    spec = queue.pop(0)
                    ref = task.remote(spec.model_dump_json(), cfg_json, work_uri, pool or None)
                    pending[ref] = (spec, time.monotonic())
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec, _start = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        outcome = _failure_outcome(spec, "internal:" + type(exc.cause).__name__, str(exc.cause), work_uri)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                        outcome = _failure_outcome(spec, "worker_crashed", f"worker died {cfg.job.max_retries + 1} times: {exc}", work_uri)
                    outcomes[spec.session_id] = outcome
                    bar.advance(float(outcome.get("media_s", 0.0)))
                    if on_session_done:
                        on_session_done(spec.session_id)
                now = time.monotonic()
                for ref, (spec, start) in list(pending.items()):
                    if now - start > cfg.job.session_timeout_s:
                        ray.cancel(ref, force=True)
                        pending.pop(ref)
                        outcomes[spec.session_id] = _failure_outcome(
                            spec, "timeout", f"session ran longer than {cfg.job.session_timeout_s:g} s", work_uri
                        )
                        bar.advance(0.0)
                drain()
        drain()
    except BaseException:
        sink.abort()  # the open shard stays invisible; committed ones are kept for the next run
        raise
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()

    ok = [sid for sid in order if outcomes.get(sid, {}).get("status") == "ok"]
    for sid in order:
        if outcomes.get(sid, {}).get("status") == "rejected":
            rejections.append(Rejection(**outcomes[sid]["rejection"]))
    stage_s: dict[str, float] = {}
    for sid in ok:
        for k, v in outcomes[sid].get("stage_s", {}).items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    doc = finalize_dataset(
        out_uri,
        sink,
        config_hash=cfg.config_hash(),
        tokenizers=_agreed_tokenizers([outcomes[s] for s in ok]),
        rejections=rejections,
        sessions_in=len(sessions) + len(row_problems),
    )
    summary = BuildSummary(
        out_uri=out_uri,
        sessions_in=len(sessions) + len(row_problems),
        sessions_ok=len(ok),
        quarantined=len(rejections),
        media_s_in=sum(float(outcomes[s].get("media_s", 0.0)) for s in order if s in outcomes),
        media_s_out=sum(float(outcomes[s]["media_s"]) for s in ok),
        samples=doc["totals"]["samples"],
        shards=doc["totals"]["shards"],
        shard_bytes=doc["totals"]["bytes"],
        wall_s=time.perf_counter() - t0,
        resumed_sessions=resumed,
        rejects_by_reason=_count_reasons(rejections),
        stage_s={k: round(v, 3) for k, v in sorted(stage_s.items())},
    )
    storage.write_bytes_atomic(
        storage.join(out_uri, "stats.json"), json.dumps(summary.to_json(), indent=2, sort_keys=True).encode()
    )
    return summary


def _is_transient(outcome: dict[str, Any]) -> bool:
    """A reject that says nothing about the data: a bug, a timeout or a dead worker."""
    if outcome.get("status") != "rejected":
        return False
    reason = outcome["rejection"]["reason"]
    return reason.startswith("internal:") or reason in ("timeout", "worker_crashed")


def _count_reasons(rejections: list[Rejection]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejections:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return dict(sorted(counts.items()))


def _agreed_tokenizers(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """All sessions must have been tokenized by the same tokenizers (same fingerprints)."""
    seen = {json.dumps(o.get("tokenizers", {}), sort_keys=True) for o in outcomes}
    if len(seen) > 1:
        raise RuntimeError(f"sessions were tokenized with different tokenizers: {sorted(seen)}")
    return json.loads(seen.pop()) if seen else {}
