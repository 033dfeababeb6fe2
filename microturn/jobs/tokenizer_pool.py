"""Tokenizer actors: the codecs loaded once per actor, on a GPU when the cluster has them.

Session tasks (CPU) decode and align, then hand a ``TokenizeInput`` (waves, frames, words: the only
time raw waves cross a process boundary) to one of these actors and wait for the ``Tokens``. Which actor serves a session is a pure function of its id, so the routing is
reproducible; the tokens do not depend on it (every actor holds the same models).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

from microturn.config import BuildConfig
from microturn.records import TokenizeInput, Tokens

log = logging.getLogger("microturn.tokenizer_pool")


class TokenizerActor:
    """Holds one ``TokenizerSet``; Ray runs it as an actor (``ray.remote(TokenizerActor)``)."""

    def __init__(self, tokenizer_cfg_json: str, torch_threads: int = 1) -> None:
        import torch

        from microturn.config import TokenizerConfig
        from microturn.pipeline.session import LocalTokenizer
        from microturn.tokenizers import load_tokenizers

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        cfg = TokenizerConfig.model_validate_json(tokenizer_cfg_json)
        self._local = LocalTokenizer(load_tokenizers(cfg))

    def tokenize(self, inp: TokenizeInput) -> Tokens:
        return self._local.tokenize(inp)

    def info(self) -> dict[str, Any]:
        return {"describe": self._local.describe(), "members": self._local.members()}


def start_pool(cfg: BuildConfig, cluster_gpus: float) -> list[Any]:
    """Start the actor pool, or return [] to tokenize inside the session tasks.

    ``job.tokenizer_actors`` > 0 asks for that many actors; 0 means one per GPU when the cluster has GPUs
    (and none on a CPU-only cluster, where tokenizing inside each session task scales best)."""
    import ray

    n = cfg.job.tokenizer_actors or (int(cluster_gpus) if cluster_gpus >= 1 else 0)
    if n == 0:
        return []
    gpus = cfg.job.gpus_per_tokenizer or (1.0 if cluster_gpus >= 1 else 0.0)
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=cfg.job.max_retries, max_task_retries=cfg.job.max_retries)(TokenizerActor)
    actors = [actor_cls.remote(cfg.tokenizers.model_dump_json()) for _ in range(n)]
    ray.get([a.info.remote() for a in actors])  # fail fast, here, if the models cannot load
    log.info("tokenizer pool: %d actor(s), %g GPU each", n, gpus)
    return actors


def actor_for(pool: list[Any], session_id: str) -> Any:
    digest = hashlib.sha256(session_id.encode()).digest()
    return pool[int.from_bytes(digest[:4], "big") % len(pool)]


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
        self._actor = actor_for(pool, session_id)
        self._timeout_s = timeout_s
        info = self._call("info")
        self._describe, self._members = info["describe"], info["members"]

    def tokenize(self, inp: TokenizeInput) -> Tokens:
        return self._call("tokenize", inp)

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self._actor, method).remote(*args), timeout=self._timeout_s)
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
