"""What every representation of a session (a codec, a frame tokenizer, text, ...) offers the pipeline.

A representation turns a session's waves, frames and words into arrays on the 200 ms grid and names
the tar members that hold them. The format's member table (``microturn.format``) is built from the
configured representations, so writer, reader, validator, loader and the CLI learn a new member from
here. Adding one: a module in ``microturn/tokenizers/`` with a class that has these attributes, an
entry in ``REPRESENTATIONS`` (``microturn/tokenizers/__init__.py``) and in the config, and tests.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.format import MemberSpec
from microturn.records import TokenizeInput


class Representation(Protocol):
    """One way of putting a session on the grid.

    - ``name``: the key of its fingerprint in meta.json and of its entry in dataset.json ("audio"...);
    - ``frame_rate``: steps per second; must tile a 200 ms chunk exactly (``check_tiles``);
    - ``members``: the tar members it writes (suffix, dtype, symbolic shape);
    - ``fill``: the value that pads each frame-grid member past the end of a session;
    - ``tokenize``: batched encode, one dict of member arrays (and a small report) per session;
    - ``decode``: tokens back to something a person can look at or listen to;
    - ``describe``: its dataset.json entry (fingerprint, vocabulary, shape facts readers check).
    """

    name: str
    fingerprint: str
    frame_rate: Fraction
    vocab_size: int
    members: tuple[MemberSpec, ...]
    fill: Mapping[str, int]

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]: ...

    def decode(self, tokens: np.ndarray) -> Any: ...

    def describe(self) -> dict[str, Any]: ...

    def window_meta(self) -> dict[str, Any]: ...


def check_tiles(rep: Representation) -> int:
    """Steps of ``rep`` per chunk; raises ``ValueError`` naming it when its rate does not tile 200 ms."""
    try:
        return GRID.steps_per_chunk(rep.frame_rate)
    except ValueError as exc:
        raise ValueError(f"representation {rep.name!r}: {exc}") from exc


def session_frames(inp: TokenizeInput) -> tuple[int, int]:
    """(codec frames of the padded session, frames holding real audio)."""
    return GRID.padded_samples(inp.num_samples) // GRID.hop, GRID.valid_frames(inp.num_samples)


__all__ = ["Representation", "check_tiles", "session_frames"]
