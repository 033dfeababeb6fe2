"""Checkpoints of a run: ``RUN_DIR/checkpoints/step-NNNNNNNN.pt`` holding model, optimizer, step, tokens
seen, every rank's loader state and the config. Written durably (temporary file, fsync, rename), read
with ``torch.load(weights_only=True)``, newest readable first."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from microturn import storage
from microturn.errors import TrainDataError
from microturn.train.config import TrainConfig
from microturn.train.loader import TrainLoader
from microturn.train.step import Dist

log = logging.getLogger(__name__)


def _checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def checkpoints(out_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest first. Temporary files (``.step-*.tmp-*``: a write that never
    finished) are never listed."""
    return sorted(_checkpoint_dir(out_dir).glob("step-*.pt"))


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(
    out_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, tokens_seen: int,
    loaders: list[dict[str, Any]], cfg: TrainConfig, keep: int,
) -> Path:  # fmt: skip
    """Commit a checkpoint durably, then prune: write a temporary file, fsync it, rename it to its
    final name, fsync the folder. Only then are checkpoints beyond the last ``keep`` deleted, so the
    previous one stays on disk until the new one would survive a crash or power loss."""
    folder = _checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens_seen": tokens_seen,
        "loaders": json.dumps(loaders),  # one state per rank
        "config": json.dumps(cfg.to_plain()),
    }
    with storage.atomic_writer(str(path)) as fh:  # tmp, fsync, rename, fsync of the folder
        torch.save(state, fh)
    for old in checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files left by a run that died while writing (never resumed from)."""
    partial = sorted(_checkpoint_dir(out_dir).glob(".step-*.pt.tmp-*"))
    for p in partial:
        log.warning("removing %s: a checkpoint write that never finished", p)
        p.unlink(missing_ok=True)
    return partial


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    state = torch.load(path, map_location=device, weights_only=True)
    state["loaders"] = json.loads(state["loaders"])
    state["config"] = json.loads(state["config"])
    return state


def _set_aside(path: Path) -> None:
    """Move an unreadable checkpoint out of the ``step-*.pt`` set: left there, it would sort as the
    newest and pruning after the next save would delete the good ones instead (several ranks may try
    at once: the first rename wins)."""
    try:
        os.replace(path, path.with_name(path.name + ".bad"))
    except OSError:
        pass


def load_latest_checkpoint(out_dir: Path, device: torch.device) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The newest checkpoint that loads, newest first: one that cannot be read (cut short by a crash
    before checkpoints were fsync'd, damaged on disk) is reported and the one before it used."""
    found = checkpoints(out_dir)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, device)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            log.warning("cannot resume from %s (%s: %s); set aside as %s.bad, trying the checkpoint before it",
                        path, type(exc).__name__, str(exc)[:200], path.name)  # fmt: skip
            _set_aside(path)
    if found:
        raise TrainDataError("bad_checkpoint", f"none of the {len(found)} checkpoints in "
                                               f"{_checkpoint_dir(out_dir)} can be read")  # fmt: skip
    return None, None


def loader_states(loader: TrainLoader, d: Dist) -> list[dict[str, Any]]:
    """Every rank's loader state, in rank order (a collective: all ranks call it)."""
    states = [loader.state_dict()]
    if d.world > 1:
        gathered: list[Any] = [None] * d.world
        dist.all_gather_object(gathered, json.dumps(states[0]))
        states = [json.loads(s) for s in gathered]
    return states
