"""One sample: its members encoded for the tar, decoded back, and checked against the member table.

Every array member's dtype is the table's (never cast: a wrong dtype is a bug upstream) and its shape
binds the table's dimension symbols: S and F from meta.json, others from ``known`` (dataset.json's
tokenizers) or, failing that, they must agree across the members that use them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np

from microturn.clock import FRAMES_PER_CHUNK
from microturn.errors import FormatError
from microturn.format.codec import decode_json, decode_npy, encode_json, encode_npy, jsonable
from microturn.format.members import FORMAT_VERSION, MEMBERS, MemberSpec, MemberTable

EVENT_KINDS = ("turn", "gap", "pause", "overlap", "backchannel", "interruption")
# meta.json's required fields and their JSON types
_META_TYPES: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "session_id": (str,),
    "window_index": (int,),
    "start_frame": (int,),
    "start_sample": (int,),
    "num_frames": (int,),
    "valid_frames": (int,),
    "speakers": (list,),
    "fingerprints": (dict,),
    "stats": (dict,),
}
META_REQUIRED: tuple[str, ...] = tuple(_META_TYPES)


@dataclass(frozen=True)
class DecodedSample:
    """A sample as the member table describes it: ``arrays`` by suffix (``"codes.npy"``), read-only,
    with the table's dtypes and shapes (docs/format.md); words and events are window-relative."""

    key: str
    meta: dict[str, Any]
    arrays: Mapping[str, np.ndarray]
    words: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def num_streams(self) -> int:
        return len(self.meta["speakers"])

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])


def encode_sample(
    *,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    words: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    table: MemberTable = MEMBERS,
) -> dict[str, bytes]:
    """Encode one sample's members (suffix -> bytes, in tar order). ``arrays`` holds exactly the
    table's array members, with its dtypes; shapes are checked against each other."""
    _check_array_names(arrays, table)
    for spec in table.arrays:
        arr = arrays[spec.suffix]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
            got = getattr(arr, "dtype", type(arr).__name__)
            raise FormatError("bad_dtype", f"{spec.suffix} must be {spec.dtype}, got {got}")
    meta = jsonable(dict(meta))
    meta.setdefault("format_version", FORMAT_VERSION)
    problems = shape_problems(meta, arrays, table=table)
    if problems:
        raise FormatError(problems[0][0], "; ".join(m for _, m in problems))
    json_members = {"meta.json": meta, "words.json": jsonable(list(words)), "events.json": jsonable(list(events))}
    return {
        spec.suffix: encode_npy(arrays[spec.suffix]) if spec.kind == "npy" else encode_json(json_members[spec.suffix])
        for spec in table.values()
    }


def _check_array_names(arrays: Mapping[str, np.ndarray], table: MemberTable) -> None:
    want = {spec.suffix for spec in table.arrays}
    missing, unknown = sorted(want - set(arrays)), sorted(set(arrays) - want)
    if missing:
        raise FormatError("missing_member", f"missing {', '.join(missing)}")
    if unknown:
        raise FormatError("unknown_member", f"members not in the table: {', '.join(unknown)}")


def shape_problems(
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    table: MemberTable = MEMBERS,
    known: Optional[Mapping[str, int]] = None,
    frames_per_chunk: int = FRAMES_PER_CHUNK,
) -> list[tuple[str, str]]:
    """(code, message) for every array of the table whose dtype or shape disagrees with the grid the
    meta implies (S = len(speakers), F = num_frames), with ``known`` sizes (e.g. K, H, W), or with the
    other members sharing a symbol. ``arrays``: the array members to check (all of the table's, or
    those a reader asked for)."""
    speakers = meta.get("speakers")
    grid = (len(speakers) if isinstance(speakers, list) else None, meta.get("num_frames"), meta.get("valid_frames"))
    layout = tuple((suffix, arr.dtype.str, arr.shape) for suffix, arr in arrays.items())
    known_items = tuple(sorted(known.items())) if known else ()
    try:
        # samples of a corpus share a handful of layouts: check each once (a loader decodes thousands
        # of samples per second, and this check was a fifth of its time)
        return list(_layout_problems(table, layout, grid, known_items, frames_per_chunk))
    except TypeError:  # an unhashable meta value (a list where a number belongs): check without the cache
        return list(_layout_problems.__wrapped__(table, layout, grid, known_items, frames_per_chunk))


@functools.lru_cache(maxsize=1024)
def _layout_problems(table: MemberTable, layout: tuple, grid: tuple, known: tuple,
                     frames_per_chunk: int) -> tuple[tuple[str, str], ...]:
    shapes = {suffix: shape for suffix, _, shape in layout}
    dtypes = {suffix: np.dtype(dt) for suffix, dt, _ in layout}
    out: list[tuple[str, str]] = []
    specs = [spec for spec in table.arrays if spec.suffix in shapes]
    for spec in specs:
        if dtypes[spec.suffix] != np.dtype(spec.dtype):
            out.append(("bad_dtype", f"{spec.suffix} has dtype {dtypes[spec.suffix]}, expected {spec.dtype}"))
        if len(shapes[spec.suffix]) != len(spec.dims):
            out.append(("bad_shape", f"{spec.suffix} has shape {tuple(shapes[spec.suffix])}, expected "
                                     f"{len(spec.dims)} dims [{', '.join(spec.dims)}]"))
    if out:
        return tuple(out)
    S, F, valid = grid
    sizes = _bind_dims(S, F, shapes, specs, dict(known))
    for spec in specs:
        got = tuple(int(n) for n in shapes[spec.suffix])
        want = tuple(sizes[d] for d in spec.dims)
        if got != want:
            bound = ", ".join(f"{d}={sizes[d]}" for d in dict.fromkeys(spec.dims))
            out.append(("bad_shape", f"{spec.suffix} has shape {got}, the grid implies {want} ({bound})"))
    if isinstance(F, int) and F % frames_per_chunk:
        out.append(("bad_grid", f"num_frames {F} is not a whole number of {frames_per_chunk}-frame chunks"))
    if isinstance(F, int) and isinstance(valid, int) and not 0 < valid <= F:
        out.append(("bad_grid", f"valid_frames {valid} outside (0, {F}]"))
    return tuple(out)


def _bind_dims(S: Any, F: Any, shapes: Mapping[str, tuple], specs: Sequence[MemberSpec],
               known: Mapping[str, int]) -> dict[str, int]:
    """The size of every symbol: meta's S and F, then ``known``, then the first member (in table
    order) that uses a symbol still unbound."""
    sizes = {d: int(n) for d, n in known.items() if isinstance(n, int) and not isinstance(n, bool)}
    if isinstance(S, int):
        sizes["S"] = S
    if isinstance(F, int) and not isinstance(F, bool):
        sizes["F"] = F
    for spec in specs:
        for d, n in zip(spec.dims, shapes[spec.suffix]):
            sizes.setdefault(d, int(n))
    return sizes


def meta_type_problems(meta: Mapping[str, Any]) -> list[str]:
    """What is wrong with the types of meta.json's required fields (bools are not integers; speaker
    ids are strings), so that readers can index and compare them without guarding every use."""
    # JSON gives exact types: one pass of `type(...) is` answers the usual case (every field right)
    if all(type(meta.get(name, types[0])) is types[0] for name, types in _META_TYPES.items()) and all(
        type(s) is str for s in meta.get("speakers", ())
    ):
        return []
    out = []
    for name, types in _META_TYPES.items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, types) or isinstance(value, bool)):
            out.append(f"{name} is {type(value).__name__}, expected {types[0].__name__}")
    speakers = meta.get("speakers")
    if isinstance(speakers, list) and not all(isinstance(s, str) for s in speakers):
        out.append("speakers must be strings")
    return out


def decode_meta(data: bytes | memoryview, key: str = "") -> dict[str, Any]:
    """meta.json with every required field present and of its type, else ``FormatError("bad_meta")``."""
    meta = decode_json(data, where=f"{key}.meta.json")
    if not isinstance(meta, dict):
        raise FormatError("bad_meta", "meta.json is not an object", where=key)
    absent = [k for k in META_REQUIRED if k not in meta]
    if absent:
        raise FormatError("bad_meta", f"meta.json lacks {', '.join(absent)}", where=key)
    wrong = meta_type_problems(meta)
    if wrong:
        raise FormatError("bad_meta", f"meta.json: {'; '.join(wrong)}", where=key)
    return meta


@functools.lru_cache(maxsize=64)
def _wanted(table: MemberTable, only: Optional[frozenset[str]]) -> tuple[str, ...]:
    return tuple(s for s in table if only is None or s in only or s == "meta.json")


def decode_sample(
    members: Mapping[str, bytes | memoryview],
    key: str = "",
    *,
    table: MemberTable = MEMBERS,
    known: Optional[Mapping[str, int]] = None,
    only: Optional[Collection[str]] = None,
) -> DecodedSample:
    """Decode a sample's members (suffix -> bytes) as ``table`` describes them. Raises ``FormatError``
    on a missing member, an unreadable member, or a dtype/shape that disagrees with the grid (with
    ``known`` symbol sizes, e.g. ``{"K": 8}``, checked too). Members outside the table are ignored.

    ``only``: the members a reader uses (meta.json is always read): the others are neither required,
    decoded nor checked (a training loader reads 5 of 8 members; parsing words and events it never
    looks at would cost it a quarter of its throughput)."""
    wanted = _wanted(table, None if only is None else frozenset(only))
    missing = [s for s in wanted if s not in members]
    if missing:
        raise FormatError("missing_member", f"missing {', '.join(missing)}", where=key)
    meta = decode_meta(members["meta.json"], key)
    arrays = {spec.suffix: decode_npy(members[spec.suffix], where=f"{key}.{spec.suffix}")
              for spec in table.arrays if spec.suffix in wanted}
    words = decode_json(members["words.json"], where=f"{key}.words.json") if "words.json" in wanted else []
    events = decode_json(members["events.json"], where=f"{key}.events.json") if "events.json" in wanted else []
    problems = shape_problems(meta, arrays, table=table, known=known)
    if problems:
        raise FormatError(problems[0][0], "; ".join(m for _, m in problems), where=key)
    return DecodedSample(key=key, meta=meta, arrays=arrays, words=words, events=events)
