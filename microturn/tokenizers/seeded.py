"""Seeded weights for tokenizers that have no trained ones: built the same on every machine, and named
by a digest of what was built (so readers refuse to mix corpora made from different weights).

Building them calibrates on a seeded signal, which costs seconds at every worker start; ``cached_state``
keeps the result on disk (``tokenizers.cache_dir``), keyed by everything the weights depend on: the
recipe (the source of the modules that build them), the seed and shapes, the torch / numpy versions
and the CPU kernels. A cache file holds the state's digest too: an unreadable, mismatched or altered
file is ignored with a warning and rebuilt, so a cached state is the state the recipe builds here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = "microturn-seeded-state-v1"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run seeded weight construction on one thread: kernels split their sums differently per thread
    count, and untrained weights must be bit-identical in every process whatever its thread setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SeededState(NamedTuple):
    """A state dict and its ``state_digest``, computed once: a worker start hashes each state a single time."""

    tensors: dict[str, Any]
    digest: str


def state_digest(state: Mapping[str, Any]) -> str:
    """sha256 (hex) of a state dict's names and tensor bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        # The array's own memory, as bytes: no copy of the tensor (the same bytes ``tobytes`` gives).
        h.update(memoryview(tensor.detach().cpu().contiguous().numpy().reshape(-1)).cast("B"))
    return h.hexdigest()


def untrained_tag(seed: int, digest: str) -> str:
    """``untrained:<seed>@<8 hex>``: the seed, and the ``state_digest`` of the weights it produced.

    The seed alone does not pin the weights: a change in how seeded weights are built (or a CPU whose
    kernels round differently) would give other codes under the same name. The digest makes the
    fingerprint name the actual weights, so readers refuse to mix such corpora."""
    return f"untrained:{seed}@{digest[:8]}"


def recipe_digest(*source_files: str) -> str:
    """16 hex of the source files that build a seeded state: any edit to them invalidates its cache."""
    h = hashlib.sha256()
    for path in source_files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/microturn/calibration`` (``~/.cache/microturn/calibration``)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "microturn" / "calibration"


def cached_state(
    name: str, key: Mapping[str, Any], cache_dir: Optional[Path], build: Callable[[], dict[str, Any]]
) -> SeededState:
    """``build()``'s state dict and its digest, read from ``cache_dir`` (None: ``default_cache_dir()``)
    when a process with the same ``key``, library versions and CPU kernels saved it there; else built
    and saved."""
    import torch

    full_key = dict(key, torch=torch.__version__, numpy=np.__version__, machine=platform.machine(),
                    cpu=torch.backends.cpu.get_cpu_capability())
    key_text = json.dumps(full_key, sort_keys=True)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{name}-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.pt"
    cached = _read_cached(path, key_text)
    if cached is None:
        state = build()
        cached = SeededState(state, state_digest(state))
        _write_cached(path, key_text, cached)
    return cached


def _read_cached(path: Path, key_text: str) -> Optional[SeededState]:
    """The cached state, or None (with a warning when a file is there but cannot be trusted)."""
    import torch

    if not path.is_file():
        return None
    try:
        # Mapped, not read: the pages come from the page cache (shared by the workers of a node), no copy.
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, corrupt, or a pickle holding code
        log.warning("seeded state cache %s is unreadable (%s): rebuilding it", path, exc)
        return None
    problem = _cache_problem(blob, key_text)
    if problem:
        log.warning("seeded state cache %s %s: ignoring it and rebuilding", path, problem)
        return None
    return SeededState(dict(blob["state"]), blob["digest"])


def _cache_problem(blob: Any, key_text: str) -> Optional[str]:
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT or not isinstance(blob.get("state"), dict):
        return f"is not a {CACHE_FORMAT} file"
    if blob.get("key") != key_text:
        return "was saved under another key"
    if blob.get("digest") != state_digest(blob["state"]):
        return "does not match its digest"
    return None


def _write_cached(path: Path, key_text: str, cached: SeededState) -> None:
    """Atomic: readers see the old file or the whole new one (workers starting together may all write)."""
    import torch

    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # unique on a shared folder too
    blob = {"format": CACHE_FORMAT, "key": key_text, "digest": cached.digest, "state": cached.tensors}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a read-only or full disk only costs the next start its calibration
        log.warning("could not save the seeded state cache %s (%s)", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
