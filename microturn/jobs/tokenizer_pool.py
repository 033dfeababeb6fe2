"""Tokenizer actors: the codecs loaded once per actor, on a GPU when the cluster has them.

Session tasks (CPU) decode and align, then hand the aligned session to one of these actors and wait
for the tokens. Which actor serves a session is a pure function of its id, so the routing is
reproducible; the tokens do not depend on it (every actor holds the same models).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

from microturn.config import BuildConfig
from microturn.records import AlignedSession, TokenizedSession

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

    def tokenize(self, aligned: AlignedSession) -> TokenizedSession:
        return self._local.tokenize(aligned)

    def info(self) -> dict[str, Any]:
        return {"text_pad_id": self._local.text_pad_id, "describe": self._local.describe()}


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


class PooledTokenizer:
    """The ``SessionTokenizer`` a session task uses when tokenization runs in the actor pool.

    Every call waits at most ``timeout_s`` (``ray.exceptions.GetTimeoutError`` past it), so a hung or
    overloaded actor fails this session, with a reason, instead of holding its task forever."""

    def __init__(self, pool: list[Any], session_id: str, timeout_s: Optional[float] = None) -> None:
        import ray

        self._actor = actor_for(pool, session_id)
        self._timeout_s = timeout_s
        info = ray.get(self._actor.info.remote(), timeout=timeout_s)
        self.text_pad_id = info["text_pad_id"]
        self._describe = info["describe"]

    def tokenize(self, aligned: AlignedSession) -> TokenizedSession:
        import ray

        return ray.get(self._actor.tokenize.remote(aligned), timeout=self._timeout_s)

    def describe(self) -> dict[str, dict[str, Any]]:
        return self._describe
