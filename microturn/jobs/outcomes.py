"""A session's outcome on storage, and the Ray task that produces it (the worker side of the build).

Per session, under ``OUT/_work/sessions/``: ``<id>.tar`` (its samples), ``<id>.samples.json`` (the part's
index rows and byte range, ``pipeline.shard.write_part``) and ``<id>.json`` (summary, written last) when
it succeeded, or ``<id>.reject.json`` when it was rejected, by its task (bad data) or by the driver
(timeout, dead worker, other Ray failures). Every outcome records the config hash it was built with.

Which outcome counts is deterministic: a reject wins over a part. A task cut off at its timeout may
still finish and write its part after the driver wrote the timeout reject; that late part never wins on
the next run (``--retry-failed`` discards both and runs the session again).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Optional, Sequence

from microturn import storage
from microturn.config import BuildConfig
from microturn.manifest import SessionSpec, loads_json_text
from microturn.records import Rejection

WORK_DIR = "_work"
SESSIONS_DIR = "sessions"
PART_SUFFIXES = (".reject.json", ".json", ".samples.json", ".tar")

# Called with the session id when a task starts. Production passes none; tests pass fault doubles
# (a crash, a hang) through ``run_build(session_hooks=...)``.
SessionHook = Callable[[str], None]


class ConfigMismatch(RuntimeError):
    """The output holds work built with another config; resuming would mix two configs in one corpus."""


def sessions_uri(out_uri: str) -> str:
    return storage.join(out_uri, WORK_DIR, SESSIONS_DIR)


def part_uri(work_uri: str, session_id: str, suffix: str) -> str:
    return storage.join(work_uri, SESSIONS_DIR, f"{session_id}{suffix}")


def write_reject(work_uri: str, r: Rejection, config_hash: str) -> dict[str, Any]:
    outcome = {"status": "rejected", "session_id": r.session_id, "rejection": r.__dict__, "config_hash": config_hash}
    storage.write_bytes_atomic(
        part_uri(work_uri, r.session_id, ".reject.json"), json.dumps(outcome, sort_keys=True).encode()
    )
    return outcome


def read_outcome(work_uri: str, session_id: str) -> Optional[dict[str, Any]]:
    """The recorded outcome of a session from an earlier (possibly killed) run, if any.

    A reject wins over a part (see the module docstring); a summary without its part is no outcome."""
    reject = part_uri(work_uri, session_id, ".reject.json")
    if storage.exists(reject):
        return json.loads(storage.read_bytes(reject))
    summary = part_uri(work_uri, session_id, ".json")
    part = (part_uri(work_uri, session_id, suffix) for suffix in (".tar", ".samples.json"))
    if storage.exists(summary) and all(storage.exists(uri) for uri in part):
        return json.loads(storage.read_bytes(summary))
    return None


def discard_outcome(work_uri: str, session_id: str) -> None:
    for suffix in PART_SUFFIXES:
        storage.remove(part_uri(work_uri, session_id, suffix))


def check_config(out_uri: str, outcomes: dict[str, dict[str, Any]], config_hash: str) -> None:
    """Refuse to resume on work (session outcomes, or a finished corpus) built with another config."""
    stale = sorted(sid for sid, o in outcomes.items() if o.get("config_hash") != config_hash)
    finished = storage.join(out_uri, "dataset.json")
    old_hash = _finished_config_hash(finished) if storage.exists(finished) else None
    if not stale and old_hash in (None, config_hash):
        return
    what = f"{len(stale)} finished session(s) (e.g. {stale[0]})" if stale else "the finished corpus"
    raise ConfigMismatch(
        f"{out_uri} holds {what} built with another config (config hash {config_hash[:12]} now). Resuming "
        "would mix two configs in one corpus: re-run with --rebuild to discard the old work, or pick a new --out"
    )


def _finished_config_hash(dataset_json_uri: str) -> Optional[str]:
    """The config hash a finished corpus records; a dataset.json that cannot be read says nothing
    about its config, so resuming onto it is refused like a mismatch (``--rebuild`` starts anew)."""
    try:
        value = loads_json_text(storage.read_bytes(dataset_json_uri)).get("config_hash")
    except (ValueError, AttributeError) as exc:  # not JSON, too deep, not an object
        raise ConfigMismatch(
            f"{dataset_json_uri} cannot be read ({type(exc).__name__}), so the config of the corpus there is "
            "unknown: re-run with --rebuild to discard the old work, or pick a new --out"
        ) from None
    return value if isinstance(value, str) else None


def discard_all(out_uri: str) -> None:
    """``--rebuild``: remove every session outcome, shard and corpus file (the caller holds the lock)."""
    from microturn.format import DATASET_JSON, INDEX_PARQUET, QUARANTINE_PARQUET, SHARDS_DIR

    for folder in (sessions_uri(out_uri), storage.join(out_uri, SHARDS_DIR)):
        for name in storage.listdir(folder):
            storage.remove(storage.join(folder, name))
    for name in (DATASET_JSON, INDEX_PARQUET, QUARANTINE_PARQUET, "stats.json"):
        storage.remove(storage.join(out_uri, name))


def run_one_session(
    spec_json: str,
    cfg_json: str,
    work_uri: str,
    tokenizer_pool: Any = None,
    torch_threads: int = 1,
    budget_s: Optional[float] = None,
    hooks: Sequence[SessionHook] = (),
) -> dict[str, Any]:
    """Process one session and leave its outcome on storage; returns the outcome summary.

    Data problems become a reject marker. The outcome files are written atomically, so a worker killed
    here leaves nothing behind and the task is simply run again."""
    spec = SessionSpec.model_validate_json(spec_json)
    for hook in hooks:
        hook(spec.session_id)
    from microturn.pipeline.session import LocalTokenizer, process_session
    from microturn.pipeline.shard import write_part
    from microturn.records import StageError
    from microturn.tokenizers import load_tokenizers

    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    cfg = BuildConfig.model_validate_json(cfg_json)
    config_hash = cfg.config_hash()
    try:
        if tokenizer_pool is not None:
            from microturn.jobs.tokenizer_pool import PooledTokenizer, tokenizer_timeout_s

            tokenizer = PooledTokenizer(tokenizer_pool, spec.session_id, tokenizer_timeout_s(cfg, budget_s))
        else:  # cached per worker process: models load once, not once per session
            tokenizer = LocalTokenizer(load_tokenizers(cfg.tokenizers))
        write = functools.partial(write_part, part_uri(work_uri, spec.session_id, ".tar"))
        result = process_session(spec, cfg, tokenizer, write)
    except StageError as err:
        rejection = Rejection(spec.session_id, err.source or ";".join(spec.source_uris()), err.stage, err.reason, err.message)
        return write_reject(work_uri, rejection, config_hash)
    summary = result.summary()
    summary.update(status="ok", tokenizers=tokenizer.describe(), members=tokenizer.members(), config_hash=config_hash)
    storage.write_bytes_atomic(
        part_uri(work_uri, spec.session_id, ".json"), json.dumps(summary, sort_keys=True).encode()
    )
    return summary
