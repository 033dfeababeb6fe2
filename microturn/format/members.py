"""The member table: which tar members a sample holds, their encodings, dtypes and symbolic shapes.

One table drives the writer, the reader, the validator and the report commands. It is the format's
core members (meta, speech activity, words, events: what every corpus holds whatever its
representations) plus the members each representation contributes (codec codes, text tokens, video
frame tokens, ...). Shapes are written in dimension symbols that the reader binds per sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Sequence

from microturn.errors import FormatError

FORMAT_NAME = "microturn"
FORMAT_VERSION = 1
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")

# Dimension symbols (docs/format.md): S speaker streams (len(meta.speakers)), F codec frames of the window
# (meta.num_frames), K codebooks, N video frames in the window, H x W the frame codec's token grid, M mel
# channels. S and F come from meta.json, others from dataset.json's tokenizers when it states them, and
# otherwise must agree across the members that use them. A representation may add its own: one capital
# letter, so a shape reads like the comments ("[S, K, F]").
_DIM_RE = re.compile(r"^[A-Z]$")
FRAME_INDEX = "frame_chunks.npy"  # the core member that says which chunk each video frame belongs to


@dataclass(frozen=True)
class MemberSpec:
    """One member ``<key>.<suffix>``. ``dims`` is the array's shape in symbols (``()`` for JSON);
    ``order`` places it in the tar (then the suffix breaks ties); ``tokenizer`` names the dataset.json
    ``tokenizers`` entry whose ``vocab_size`` bounds the values (None: no vocabulary)."""

    suffix: str
    kind: Literal["json", "npy"]
    dtype: Optional[str]  # numpy dtype name for arrays, None for JSON
    dims: tuple[str, ...]
    meaning: str
    order: int
    tokenizer: Optional[str] = None

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem:
            raise FormatError("bad_member_spec", problem, where=self.suffix)

    def to_json(self) -> dict[str, Any]:
        """The entry of dataset.json's ``members`` list."""
        out = {"suffix": self.suffix, "kind": self.kind, "dtype": self.dtype, "dims": list(self.dims),
               "order": self.order, "meaning": self.meaning}
        return out if self.tokenizer is None else {**out, "tokenizer": self.tokenizer}


def _spec_problem(spec: MemberSpec) -> str:
    stem, dot, ext = spec.suffix.rpartition(".")
    if not dot or not stem or ext != spec.kind or not re.fullmatch(r"[a-z0-9_]+", stem):
        return f"suffix {spec.suffix!r} must be '<lowercase name>.{spec.kind}'"
    if spec.kind == "json" and (spec.dtype is not None or spec.dims):
        return "a JSON member has no dtype or dims"
    if spec.kind == "npy" and spec.dtype not in _ARRAY_DTYPES:
        return f"dtype {spec.dtype!r} is not one of {sorted(_ARRAY_DTYPES)}"
    if not all(isinstance(d, str) and _DIM_RE.fullmatch(d) for d in spec.dims):
        return f"dims {spec.dims!r} must be single capital letters"
    if isinstance(spec.order, bool) or not isinstance(spec.order, int):
        return f"order {spec.order!r} is not an integer"
    return ""


# Fixed-width integer and float dtypes only: anything numpy's standard .npy decoder reads without pickles.
_ARRAY_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32"})


class MemberTable(Mapping[str, MemberSpec]):
    """The members of a sample by suffix, iterated in tar order (``order``, then suffix)."""

    def __init__(self, specs: Iterable[MemberSpec]):
        ordered = sorted(specs, key=lambda m: (m.order, m.suffix))
        self._specs = {m.suffix: m for m in ordered}
        self._hash = hash(tuple(ordered))  # tables key the readers' caches: hash once
        if len(self._specs) != len(ordered):
            seen = [m.suffix for m in ordered]
            twice = sorted({s for s in seen if seen.count(s) > 1})
            raise FormatError("bad_member_spec", f"members declared twice: {twice}")
        missing = [m.suffix for m in CORE_MEMBERS if self._specs.get(m.suffix) != m]
        if missing:
            raise FormatError("bad_member_spec", f"the format's own members are missing or changed: {missing}")

    def __getitem__(self, suffix: str) -> MemberSpec:
        return self._specs[suffix]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"MemberTable({list(self._specs)})"

    def __hash__(self) -> int:  # equal tables (Mapping equality: same specs) hash alike
        return self._hash

    @property
    def order(self) -> tuple[str, ...]:
        """Member suffixes in tar order."""
        return tuple(self._specs)

    @property
    def arrays(self) -> tuple[MemberSpec, ...]:
        """The ``.npy`` members, in tar order."""
        return tuple(m for m in self._specs.values() if m.kind == "npy")

    def to_json(self) -> list[dict[str, Any]]:
        """dataset.json's ``members`` list (``member_table_from_json`` reads it back)."""
        return [m.to_json() for m in self._specs.values()]


# Owned by the format: every corpus holds these, whatever its representations. The orders leave room
# between them so a representation's members can sit where today's tars put them.
CORE_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec("meta.json", "json", None, (), "session, window offsets, sources, fingerprints, stats", 0),
    MemberSpec("activity.npy", "npy", "uint8", ("S", "F"), "speech activity per stream, 0/1", 20),
    MemberSpec("words.json", "json", None, (), "words with window-relative frames", 40),
    # which chunk each picked video frame belongs to: the index every video-frame member ([N, ...]:
    # frame-codec tokens, pixels) shares, whichever of them a corpus holds
    MemberSpec(FRAME_INDEX, "npy", "int32", ("N",), "window-relative chunk of each frame", 60),
    MemberSpec("events.json", "json", None, (), "turn-taking events with window-relative frames", 70),
)
# Format version 1's representation members (EnCodec codes, text tokens, frame codec tokens): what a
# corpus whose dataset.json lists no members holds; those representations declare exactly these.
DEFAULT_REPRESENTATION_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec("codes.npy", "npy", "int16", ("S", "K", "F"), "audio codec codes per speaker stream", 10,
               tokenizer="audio"),
    MemberSpec("text.npy", "npy", "int32", ("S", "F"), "text tokens per stream on the frame grid", 30,
               tokenizer="text"),
    MemberSpec("frames.npy", "npy", "int16", ("N", "H", "W"), "frame-codec tokens of video frames", 50,
               tokenizer="frames"),
)


def member_table(representation_members: Sequence[MemberSpec] = DEFAULT_REPRESENTATION_MEMBERS) -> MemberTable:
    """The core members plus those of the representations (refused: a representation member that is
    JSON, since the format decodes JSON members itself, or one that takes a core member's suffix)."""
    json_members = [m.suffix for m in representation_members if m.kind != "npy"]
    if json_members:
        raise FormatError("bad_member_spec", f"representation members must be .npy arrays: {json_members}")
    return MemberTable((*CORE_MEMBERS, *representation_members))


MEMBERS: MemberTable = member_table()  # the table of corpora whose dataset.json lists no members


def member_table_from_json(entries: Any, *, where: str = "") -> MemberTable:
    """The table a dataset.json ``members`` list declares (every member, core ones included)."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FormatError("bad_dataset_json", "members is not a list of objects", where=where)
    core = {m.suffix: m for m in CORE_MEMBERS}
    specs = []
    for i, e in enumerate(entries):
        dims = e.get("dims")
        try:
            spec = MemberSpec(e.get("suffix"), e.get("kind"), e.get("dtype"),
                              tuple(dims) if isinstance(dims, list) else dims, str(e.get("meaning", "")),
                              e.get("order", i), e.get("tokenizer"))
        except (FormatError, TypeError, AttributeError) as exc:
            raise FormatError("bad_dataset_json", f"members[{i}]: {getattr(exc, 'message', exc)}",
                              where=where) from None
        known = core.get(spec.suffix)
        if known is not None and replace(spec, meaning=known.meaning) == known:
            spec = known  # the meaning is documentation: a core member keeps the format's own words
        specs.append(spec)
    try:
        return MemberTable(specs)
    except FormatError as exc:
        raise FormatError("bad_dataset_json", f"members: {exc.message}", where=where) from None


def sample_key(session_id: str, window_index: int) -> str:
    key = f"{session_id}-{window_index:06d}"
    if not KEY_RE.fullmatch(key):
        raise FormatError("bad_key", f"session id {session_id!r} gives key {key!r} (letters, digits, _ and - only)")
    return key


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/abc-000001.meta.json"`` -> ``("dir/abc-000001", "meta.json")`` (WebDataset's rule)."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot:
        return name, ""
    return (f"{folder}/{stem}" if folder else stem), suffix
