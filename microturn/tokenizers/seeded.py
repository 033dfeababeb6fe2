"""Seeded weights for tokenizers that have no trained ones: built the same on every machine, and named
by a digest of what was built (so readers refuse to mix corpora made from different weights)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator


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


def untrained_tag(seed: int, module: Any) -> str:
    """``untrained:<seed>@<8 hex>``: the seed, and a digest of the weights it produced.

    The seed alone does not pin the weights: a change in how seeded weights are built (or a CPU whose
    kernels round differently) would give other codes under the same name. The digest makes the
    fingerprint name the actual weights, so readers refuse to mix such corpora."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"untrained:{seed}@{h.hexdigest()[:8]}"
