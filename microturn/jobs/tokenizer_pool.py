"""Tokenizer actors: the codecs loaded once per actor, on a GPU when the cluster has them.

Session tasks (CPU) decode and align, then hand a ``TokenizeInput`` (waves, frames, words: the only
time raw waves cross a process boundary) to one of these actors and wait for the ``Tokens``. A session goes to the least loaded actor (ties by a
hash of its id); the tokens do not depend on it (every actor holds the same models), nor on the other
sessions an actor gathers into the same call of its models.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional

from microturn.config import BuildConfig
from microturn.records import TokenizeInput, Tokens

log = logging.getLogger("microturn.tokenizer_pool")
CONTROL = "control"  # the actors' concurrency group for load() and info(): never queued behind tokenize()


@dataclass
class _Call:
    """One session waiting in an actor for its tokens."""

    inp: TokenizeInput
    done: bool = False
    tokens: Optional[Tokens] = None
    error: Optional[BaseException] = None


class TokenizerActor:
    """Holds one ``TokenizerSet``; Ray runs it as a threaded actor (``ray.remote(TokenizerActor)`` with
    ``max_concurrency``).

    Concurrent calls are gathered: while one thread runs the models, the sessions that arrive queue up,
    and the next thread free takes up to ``batch_sessions`` of them into one call of every
    representation (``tokenize_sessions``: EnCodec fills its batches with windows of all of them, so a
    GPU sees full batches however short each session is). A session's tokens do not depend on the
    others it came with (``AudioTokenizer.encode_many``)."""

    def __init__(self, tokenizer_cfg_json: str, torch_threads: int = 1, batch_sessions: int = 1) -> None:
        import torch

        from microturn.config import TokenizerConfig
        from microturn.pipeline.session import LocalTokenizer
        from microturn.tokenizers import load_tokenizers

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        cfg = TokenizerConfig.model_validate_json(tokenizer_cfg_json)
        self._local = LocalTokenizer(load_tokenizers(cfg))
        self._batch_sessions = max(1, batch_sessions)
        self._queue: list[_Call] = []
        self._running = 0  # sessions inside the models now
        self._busy = False
        self._cv = threading.Condition()
        self._calls: list[int] = []  # sessions per call of the models, in order (what batching achieved)

    def tokenize(self, inp: TokenizeInput) -> Tokens:
        call = _Call(inp)
        with self._cv:
            self._queue.append(call)
        while True:
            with self._cv:
                while not call.done and self._busy:
                    self._cv.wait()
                if call.done:
                    if call.error is not None:
                        raise call.error
                    assert call.tokens is not None
                    return call.tokens
                self._busy = True
                taken, self._queue = self._queue[: self._batch_sessions], self._queue[self._batch_sessions :]
                self._running = len(taken)
            try:
                self._run(taken)
            finally:
                with self._cv:
                    self._busy, self._running = False, 0
                    self._cv.notify_all()

    def _run(self, taken: list[_Call]) -> None:
        """Tokens for ``taken`` in one call; if that fails, one call per session (so that a bad session's
        error is its own, not its batch-mates')."""
        from microturn.pipeline.tokenize import tokenize_sessions

        try:
            results = tokenize_sessions([c.inp for c in taken], self._local.toks)
        except Exception as exc:
            if len(taken) == 1:
                taken[0].error, taken[0].done = exc, True
                return
        else:
            self._calls.append(len(taken))
            for c, tokens in zip(taken, results):
                c.tokens, c.done = tokens, True
            return
        for c in taken:
            try:
                c.tokens = tokenize_sessions([c.inp], self._local.toks)[0]
                self._calls.append(1)
            except Exception as exc:
                c.error = exc
            c.done = True

    def load(self) -> int:
        """Sessions queued or being tokenized here (the router sends a session to the least loaded)."""
        with self._cv:
            return len(self._queue) + self._running

    def info(self) -> dict[str, Any]:
        return {"describe": self._local.describe(), "members": self._local.members()}

    def batching(self) -> list[int]:
        """Sessions per call of the models so far."""
        with self._cv:
            return list(self._calls)


def start_pool(cfg: BuildConfig, cluster_gpus: float) -> list[Any]:
    """Start the actor pool, or return [] to tokenize inside the session tasks.

    ``job.tokenizer_actors`` > 0 asks for that many actors; 0 means one per GPU when the cluster has GPUs
    (and none on a CPU-only cluster, where tokenizing inside each session task scales best)."""
    import ray

    n = cfg.job.tokenizer_actors or (int(cluster_gpus) if cluster_gpus >= 1 else 0)
    if n == 0:
        return []
    gpus = cfg.job.gpus_per_tokenizer or (1.0 if cluster_gpus >= 1 else 0.0)
    batch = cfg.job.tokenizer_batch_sessions
    # threads for the sessions in the models and as many gathering for the next call; load() and info()
    # have a thread of their own, so that the router's question is answered however busy the actor is
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=cfg.job.max_retries, max_task_retries=cfg.job.max_retries,
                           max_concurrency=2 * batch, concurrency_groups={CONTROL: 1})(TokenizerActor)
    actors = [actor_cls.remote(cfg.tokenizers.model_dump_json(), 1, batch) for _ in range(n)]
    ray.get([a.info.remote() for a in actors])  # fail fast, here, if the models cannot load
    log.info("tokenizer pool: %d actor(s), %g GPU each", n, gpus)
    return actors


def actor_for(pool: list[Any], session_id: str, loads: Optional[list[int]] = None) -> Any:
    """The least loaded actor (``loads``: sessions queued in each); ties, or no loads, go by a hash of the
    session id, so that routing is reproducible when the pool is idle. The tokens never depend on it."""
    digest = hashlib.sha256(session_id.encode()).digest()
    first = int.from_bytes(digest[:4], "big") % len(pool)
    order = [(first + i) % len(pool) for i in range(len(pool))]
    if loads is None or len(loads) != len(pool):
        return pool[first]
    return pool[min(order, key=lambda i: loads[i])]


def pool_loads(pool: list[Any], timeout_s: float = 10.0) -> Optional[list[int]]:
    """Each actor's load, or None when they do not all answer in ``timeout_s`` (then: by hash)."""
    import ray

    try:
        return ray.get([a.load.options(concurrency_group=CONTROL).remote() for a in pool], timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return None


# Share of a session's budget one actor call may take when ``job.tokenizer_timeout_s`` is not set.
TOKENIZER_BUDGET_SHARE = 0.5


class TokenizerTimeout(RuntimeError):
    """A call to a tokenizer actor ran past its timeout; the actor was killed (Ray restarts it)."""


def tokenizer_timeout_s(cfg: BuildConfig, session_budget_s: Optional[float]) -> Optional[float]:
    """The timeout of one call to a tokenizer actor: ``job.tokenizer_timeout_s``, or else half the
    session's budget.

    Why not the whole budget: the driver's clock starts when it submits the session, before the task
    even reaches the actor, so a timeout equal to the budget would never fire before the driver's
    cut-off, and a hung actor would never be noticed (only its sessions cut off, one after another).
    Half leaves the session's other stages the other half; tokenizing runs far faster than that."""
    if cfg.job.tokenizer_timeout_s is not None:
        return cfg.job.tokenizer_timeout_s
    return None if session_budget_s is None else round(session_budget_s * TOKENIZER_BUDGET_SHARE, 3)


class PooledTokenizer:
    """The ``SessionTokenizer`` a session task uses when tokenization runs in the actor pool.

    Every call waits at most ``timeout_s``. Past it the actor is killed with ``no_restart=False``
    (Ray restarts it, up to ``job.max_retries`` times, so later sessions routed to it get a fresh one)
    and this session fails with ``TokenizerTimeout`` (quarantined as ``internal:TokenizerTimeout``,
    which ``--retry-failed`` runs again). Calls already queued on that actor fail with it and are
    retried by Ray (``max_task_retries``)."""

    def __init__(self, pool: list[Any], session_id: str, timeout_s: Optional[float] = None) -> None:
        self._actor = actor_for(pool, session_id, pool_loads(pool) if len(pool) > 1 else None)
        self._timeout_s = timeout_s
        info = self._call("info")
        self._describe, self._members = info["describe"], info["members"]

    def tokenize(self, inp: TokenizeInput) -> Tokens:
        return self._call("tokenize", inp)

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        call = getattr(self._actor, method)
        if method != "tokenize":  # a question, answered on the actor's control thread
            call = call.options(concurrency_group=CONTROL)
        try:
            return ray.get(call.remote(*args), timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError:
            log.warning("tokenizer actor call %s ran past %s s: restarting the actor", method, self._timeout_s)
            ray.kill(self._actor, no_restart=False)
            raise TokenizerTimeout(
                f"the tokenizer actor did not answer {method}() within {self._timeout_s:g} s "
                "(job.tokenizer_timeout_s; default half the session's budget); the actor was restarted"
            ) from None

    def describe(self) -> dict[str, dict[str, Any]]:
        return self._describe

    def members(self) -> list[dict[str, Any]]:
        return self._members
