"""The one module that owns the sample format (docs/format.md): member names, dtypes and shapes,
encoding and decoding of a sample, the tar layout, and our reader.

A sample is a set of tar members ``<key>.<suffix>``; WebDataset splits a member name at the first dot
of its basename, so keys never hold dots. Arrays are ``.npy`` written without pickles and JSON is UTF-8
with sorted keys, so any WebDataset reader with the standard decoders (numpy, json) reads a sample
without importing microturn.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap
import re
from dataclasses import dataclass
from typing import IO, Any, Collection, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np

FORMAT_NAME = "microturn"
FORMAT_VERSION = 1
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
DATASET_JSON = "dataset.json"
INDEX_PARQUET = "index.parquet"
QUARANTINE_PARQUET = "quarantine.parquet"
SHARDS_DIR = "shards"


class FormatError(ValueError):
    """A sample, shard or dataset does not follow the format; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, *, where: str = ""):
        super().__init__(f"{code}: {message}" + (f" ({where})" if where else ""))
        self.code = code
        self.message = message
        self.where = where


@dataclass(frozen=True)
class MemberSpec:
    suffix: str
    kind: Literal["json", "npy"]
    dtype: Optional[str]  # numpy dtype name for arrays
    dims: tuple[str, ...]  # symbolic shape, checked against the grid
    meaning: str


# Member order inside the tar is this order: fixed, so tar bytes are reproducible.
MEMBERS: dict[str, MemberSpec] = {
    m.suffix: m
    for m in (
        MemberSpec("meta.json", "json", None, (), "session, window offsets, sources, fingerprints, stats"),
        MemberSpec("codes.npy", "npy", "int16", ("S", "K", "F"), "audio codec codes per speaker stream"),
        MemberSpec("activity.npy", "npy", "uint8", ("S", "F"), "speech activity per stream, 0/1"),
        MemberSpec("text.npy", "npy", "int32", ("S", "F"), "text tokens per stream on the frame grid"),
        MemberSpec("words.json", "json", None, (), "words with window-relative frames"),
        MemberSpec("frames.npy", "npy", "int16", ("N", "H", "W"), "frame-codec tokens of video frames"),
        MemberSpec("frame_chunks.npy", "npy", "int32", ("N",), "window-relative chunk of each frame"),
        MemberSpec("events.json", "json", None, (), "turn-taking events with window-relative frames"),
    )
}
MEMBER_ORDER: tuple[str, ...] = tuple(MEMBERS)
EVENT_KINDS = ("turn", "gap", "pause", "overlap", "backchannel", "interruption")
META_REQUIRED = (
    "format_version",
    "session_id",
    "window_index",
    "start_frame",
    "start_sample",
    "num_frames",
    "valid_frames",
    "speakers",
    "fingerprints",
    "stats",
)


# ---------------------------------------------------------------- member encoding


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# Layouts of .npy headers seen so far, keyed by the header bytes: a corpus repeats a handful of headers
# (same dtypes, same window shapes), and parsing one (a Python literal) costs more than reading the array.
_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
_NPY_LAYOUTS_MAX = 4096


def _npy_layout(data: memoryview, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of a .npy buffer; object dtypes are refused."""
    if len(data) >= 128 and data[6] == 1:  # the common case: a version 1 header padded to 128 bytes
        layout = _NPY_LAYOUTS.get(bytes(data[:128]))
        if layout is not None:
            return layout
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise FormatError("bad_npy", "cannot read .npy: not a .npy array", where=where)
    major = data[6]
    if major == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        offset = 12 + int.from_bytes(data[8:12], "little") if len(data) >= 12 else len(data) + 1
    else:
        raise FormatError("bad_npy", f"cannot read .npy: unknown version {major}", where=where)
    if offset > len(data):
        raise FormatError("bad_npy", "cannot read .npy: truncated header", where=where)
    header = bytes(data[:offset])
    layout = _NPY_LAYOUTS.get(header)
    if layout is not None:
        return layout
    from numpy.lib import format as npformat

    try:
        fh = io.BytesIO(header)
        version = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except Exception as exc:  # numpy raises ValueError for a header that is not a plain literal
        raise FormatError("bad_npy", f"cannot read .npy: {exc}", where=where) from None
    if dtype.hasobject:
        raise FormatError("bad_npy", "cannot read .npy: object arrays need pickles, which we never load",
                          where=where)
    layout = (dtype, tuple(int(n) for n in shape), bool(fortran), offset)
    if len(_NPY_LAYOUTS) < _NPY_LAYOUTS_MAX:
        _NPY_LAYOUTS[header] = layout
    return layout


def decode_npy(data: bytes | bytearray | memoryview, *, where: str = "") -> np.ndarray:
    """A read-only array viewing ``data`` (no copy). Never unpickles: object dtypes are refused."""
    view = memoryview(data)
    dtype, shape, fortran, offset = _npy_layout(view, where)
    if any(n < 0 for n in shape) or len(shape) > 32:  # numpy's own limit on dimensions is 32 (64 in 2.x)
        raise FormatError("bad_npy", f"cannot read .npy: impossible shape {shape}", where=where)
    count = math.prod(shape)
    if len(view) - offset < count * dtype.itemsize:
        raise FormatError("bad_npy", f"cannot read .npy: {len(view) - offset} data bytes for shape {shape} "
                                     f"{dtype}", where=where)
    try:  # a zero-sized shape can still name dimensions numpy refuses (beyond intp)
        arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    except ValueError as exc:
        raise FormatError("bad_npy", f"cannot read .npy: {exc}", where=where) from None
    if arr.flags.writeable:  # a view of writable memory (bytearray): the caller must not write through it
        arr.flags.writeable = False
    return arr


def encode_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8, no NaN (so equal objects give equal bytes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples and paths; NaN and infinities become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def decode_json(data: bytes | memoryview, *, where: str = "") -> Any:
    """Parsed JSON; every way the bytes can fail to be JSON is ``FormatError("bad_json")``: bad
    UTF-8, bad syntax, an integer past Python's digit limit (ValueError), too deep nesting."""
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except RecursionError:
        raise FormatError("bad_json", "cannot read JSON: nested too deeply", where=where) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int max_str_digits
        raise FormatError("bad_json", f"cannot read JSON: {exc}", where=where) from None


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


def ordered_members(members: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
    """Members in tar order: the format's members first (fixed order), then any others sorted."""
    known = [(s, members[s]) for s in MEMBER_ORDER if s in members]
    extra = sorted((s, b) for s, b in members.items() if s not in MEMBERS)
    return known + extra


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class DecodedSample:
    key: str
    meta: dict[str, Any]
    codes: np.ndarray  # int16 [S, K, F]
    activity: np.ndarray  # uint8 [S, F]
    text: np.ndarray  # int32 [S, F]
    words: list[dict[str, Any]]
    frames: np.ndarray  # int16 [N, H, W]
    frame_chunks: np.ndarray  # int32 [N]
    events: list[dict[str, Any]]

    @property
    def num_streams(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[-1])


def encode_sample(
    *,
    meta: Mapping[str, Any],
    codes: np.ndarray,
    activity: np.ndarray,
    text: np.ndarray,
    words: Sequence[Mapping[str, Any]],
    frames: np.ndarray,
    frame_chunks: np.ndarray,
    events: Sequence[Mapping[str, Any]],
) -> dict[str, bytes]:
    """Encode one sample's members. Arrays must already have the format's dtypes (no silent casts:
    a wrong dtype here is a bug upstream); shapes are checked against each other."""
    arrays = {"codes.npy": codes, "activity.npy": activity, "text.npy": text, "frames.npy": frames,
              "frame_chunks.npy": frame_chunks}
    for suffix, arr in arrays.items():
        want = MEMBERS[suffix].dtype
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(want):
            got = getattr(arr, "dtype", type(arr).__name__)
            raise FormatError("bad_dtype", f"{suffix} must be {want}, got {got}")
    meta = jsonable(dict(meta))
    meta.setdefault("format_version", FORMAT_VERSION)
    problems = shape_problems(meta, codes, activity, text, frames, frame_chunks)
    if problems:
        raise FormatError(problems[0][0], "; ".join(m for _, m in problems))
    out = {"meta.json": encode_json(meta)}
    for suffix in MEMBER_ORDER:
        if suffix in arrays:
            out[suffix] = encode_npy(arrays[suffix])
        elif suffix == "words.json":
            out[suffix] = encode_json(jsonable(list(words)))
        elif suffix == "events.json":
            out[suffix] = encode_json(jsonable(list(events)))
    return {s: out[s] for s in MEMBER_ORDER}


def shape_problems(
    meta: Mapping[str, Any],
    codes: np.ndarray,
    activity: np.ndarray,
    text: np.ndarray,
    frames: np.ndarray,
    frame_chunks: np.ndarray,
    *,
    frames_per_chunk: int = 15,
) -> list[tuple[str, str]]:
    """(code, message) for every array whose dtype or shape disagrees with the grid the meta implies."""
    out: list[tuple[str, str]] = []
    arrays = {"codes.npy": codes, "activity.npy": activity, "text.npy": text, "frames.npy": frames,
              "frame_chunks.npy": frame_chunks}
    for suffix, arr in arrays.items():
        spec = MEMBERS[suffix]
        if arr.dtype != np.dtype(spec.dtype):
            out.append(("bad_dtype", f"{suffix} has dtype {arr.dtype}, expected {spec.dtype}"))
        if arr.ndim != len(spec.dims):
            out.append(("bad_shape", f"{suffix} has shape {tuple(arr.shape)}, expected {len(spec.dims)} dims "
                                     f"[{', '.join(spec.dims)}]"))
    if out:
        return out
    F = meta.get("num_frames")
    speakers = meta.get("speakers")
    S = len(speakers) if isinstance(speakers, list) else codes.shape[0]
    want = {
        "codes.npy": (S, codes.shape[1], F),
        "activity.npy": (S, F),
        "text.npy": (S, F),
        "frame_chunks.npy": (frames.shape[0],),
    }
    for suffix, shape in want.items():
        got = tuple(arrays[suffix].shape)
        if got != shape:
            out.append(("bad_shape", f"{suffix} has shape {got}, the grid implies {shape} "
                                     f"(streams={S}, num_frames={F})"))
    if isinstance(F, int) and F % frames_per_chunk:
        out.append(("bad_grid", f"num_frames {F} is not a whole number of {frames_per_chunk}-frame chunks"))
    valid = meta.get("valid_frames")
    if isinstance(F, int) and isinstance(valid, int) and not 0 < valid <= F:
        out.append(("bad_grid", f"valid_frames {valid} outside (0, {F}]"))
    return out


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


def meta_type_problems(meta: Mapping[str, Any]) -> list[str]:
    """What is wrong with the types of meta.json's required fields (bools are not integers; speaker
    ids are strings), so that readers can index and compare them without guarding every use."""
    out = []
    for name, types in _META_TYPES.items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, types) or isinstance(value, bool)):
            out.append(f"{name} is {type(value).__name__}, expected {types[0].__name__}")
    speakers = meta.get("speakers")
    if isinstance(speakers, list) and not all(isinstance(s, str) for s in speakers):
        out.append("speakers must be strings")
    return out


def decode_sample(members: Mapping[str, bytes], key: str = "") -> DecodedSample:
    """Decode a sample's members (suffix -> bytes). Raises ``FormatError`` on a missing member, an
    unreadable member, or a dtype/shape that disagrees with the grid."""
    missing = [s for s in MEMBER_ORDER if s not in members]
    if missing:
        raise FormatError("missing_member", f"missing {', '.join(missing)}", where=key)
    where = key
    meta = decode_json(members["meta.json"], where=f"{where}.meta.json")
    if not isinstance(meta, dict):
        raise FormatError("bad_meta", "meta.json is not an object", where=key)
    absent = [k for k in META_REQUIRED if k not in meta]
    if absent:
        raise FormatError("bad_meta", f"meta.json lacks {', '.join(absent)}", where=key)
    wrong = meta_type_problems(meta)
    if wrong:
        raise FormatError("bad_meta", f"meta.json: {'; '.join(wrong)}", where=key)
    arrays = {s: decode_npy(members[s], where=f"{where}.{s}") for s in MEMBER_ORDER if s.endswith(".npy")}
    words = decode_json(members["words.json"], where=f"{where}.words.json")
    events = decode_json(members["events.json"], where=f"{where}.events.json")
    problems = shape_problems(meta, arrays["codes.npy"], arrays["activity.npy"], arrays["text.npy"],
                              arrays["frames.npy"], arrays["frame_chunks.npy"])
    if problems:
        raise FormatError(problems[0][0], "; ".join(m for _, m in problems), where=key)
    return DecodedSample(
        key=key,
        meta=meta,
        codes=arrays["codes.npy"],
        activity=arrays["activity.npy"],
        text=arrays["text.npy"],
        words=words,
        frames=arrays["frames.npy"],
        frame_chunks=arrays["frame_chunks.npy"],
        events=events,
    )


# ---------------------------------------------------------------- index rows

# The columns of index.parquet, in order, with their Arrow types (names carry units).
INDEX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("shard", "string"),
    ("session_id", "string"),
    ("window_index", "int32"),
    ("start_frame", "int64"),
    ("start_s", "float64"),
    ("num_frames", "int32"),
    ("valid_frames", "int32"),
    ("duration_s", "float64"),
    ("session_duration_s", "float64"),
    ("num_streams", "int16"),
    ("num_video_frames", "int32"),
    ("speech_ratio", "float32"),
    ("overlap_ratio", "float32"),
    # session-level bleed flags (meta.quality; docs/crosstalk.md): null when not measured
    ("session_overlap_ratio", "float32"),
    ("activity_correlation", "float32"),
    ("word_count", "int32"),
    ("turns", "int32"),
    ("gaps", "int32"),
    ("pauses", "int32"),
    ("overlaps", "int32"),
    ("backchannels", "int32"),
    ("interruptions", "int32"),
    ("bytes", "int64"),
)
# Index columns added after format 1 was first written: a corpus built before them is still valid
# without them (readers select columns by name; the validator checks them only where present).
INDEX_OPTIONAL_COLUMNS: frozenset[str] = frozenset({"session_overlap_ratio", "activity_correlation"})

QUARANTINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_id", "string"),
    ("source", "string"),
    ("stage", "string"),
    ("reason", "string"),
    ("message", "string"),
)


def _optional_float(value: Any) -> Optional[float]:
    """A quality figure for a nullable float column (None: not measured, e.g. one stream)."""
    return None if value is None else float(value)


def index_row_from_meta(key: str, meta: Mapping[str, Any], nbytes: int) -> dict[str, Any]:
    """The index.parquet row of a sample (without ``shard``), derived from its meta.json only, so
    that an index can be rebuilt (and checked) from the shards."""
    stats = meta["stats"]
    quality = meta.get("quality") or {}
    if not isinstance(quality, dict):
        raise ValueError("quality is not an object")
    events = stats.get("event_counts", {})
    if not isinstance(events, dict):
        raise ValueError("stats.event_counts is not an object")
    row = {
        "key": key,
        "session_id": meta["session_id"],
        "window_index": int(meta["window_index"]),
        "start_frame": int(meta["start_frame"]),
        "start_s": float(stats["start_s"]),
        "num_frames": int(meta["num_frames"]),
        "valid_frames": int(meta["valid_frames"]),
        "duration_s": float(stats["duration_s"]),
        "session_duration_s": float(stats["session_duration_s"]),
        "num_streams": len(meta["speakers"]),
        "num_video_frames": int(stats["num_video_frames"]),
        "speech_ratio": float(stats["speech_ratio"]),
        "overlap_ratio": float(stats["overlap_ratio"]),
        "session_overlap_ratio": _optional_float(quality.get("overlap_ratio")),
        "activity_correlation": _optional_float(quality.get("activity_correlation")),
        "word_count": int(stats["word_count"]),
        "bytes": int(nbytes),
    }
    for kind, column in zip(EVENT_KINDS, ("turns", "gaps", "pauses", "overlaps", "backchannels", "interruptions")):
        row[column] = int(events.get(kind, 0))
    return row


def arrow_schema(columns: Sequence[tuple[str, str]]):
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in columns])


# ---------------------------------------------------------------- reading


_TAR_BLOCK = 512
_TAR_READ_BYTES = 1 << 22  # bytes per read: large sequential reads, few refills
_TAR_FILE_TYPES = frozenset((ord("0"), 0, ord("7")))  # regular file (ustar, v7), contiguous file
_TAR_SKIP_TYPES = frozenset(map(ord, "123456gK"))  # links, devices, folders, fifos, global pax, long link
_TAR_CHKSUM_SPAN = np.arange(_TAR_BLOCK)
_TAR_CHKSUM_FIELD = np.arange(148, 156)
# A member larger than this is a damaged header, not a sample (ours are megabytes): refused before
# any read, so a crafted size field never makes the reader buffer gigabytes.
TAR_MAX_MEMBER_BYTES = 1 << 32


def _tar_number(field: bytes, where: str) -> int:
    """A numeric header field: octal ASCII (NUL/space padded), or GNU base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big") - (1 << (8 * len(field) - 8) if field[0] == 0xFF else 0)
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise FormatError("bad_tar", f"unreadable tar: bad number field {field!r}", where=where) from None


def _octal_fields(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of octal header fields, one per row of ``fields`` (uint8 [n, w]), and which rows follow
    the usual shape (digits, then only NUL/space); the others are left to ``_tar_number``."""
    digit = (fields >= 48) & (fields <= 55)
    run = np.cumprod(digit, axis=1, dtype=np.uint8).astype(bool)  # the leading run of digits
    usual = run[:, 0] & ~(digit & ~run).any(axis=1)
    length = run.sum(axis=1)
    power = np.clip(length[:, None] - 1 - np.arange(fields.shape[1]), 0, None)
    values = ((fields.astype(np.int64) - 48) * run * (8 ** power)).sum(axis=1)
    return values, usual


def _check_tar_checksums(buf: Any, offsets: list[int], where: str) -> None:
    """Verify many headers' checksums at once (per-header Python work costs more than the rest of the
    parse). The checksum is the byte sum of the header with its own field read as spaces."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    starts = np.asarray(offsets)[:, None]
    field = arr[starts + _TAR_CHKSUM_FIELD]
    stored, usual = _octal_fields(field)
    unsigned = arr[starts + _TAR_CHKSUM_SPAN].sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    for i in np.nonzero(~usual | (unsigned != stored))[0]:
        want = _tar_number(bytes(field[i]), where)
        if want == unsigned[i]:
            continue
        # old writers summed signed bytes; tarfile accepts both, so do we
        head = arr[offsets[i] : offsets[i] + _TAR_BLOCK].view(np.int8).astype(np.int64)
        if int(head.sum() - head[148:156].sum() + 8 * 32) != want:
            raise FormatError("bad_tar", f"unreadable tar: bad header checksum at byte {offsets[i]}", where=where)


def _pax_path(data: bytes, where: str) -> Optional[str]:
    """The ``path`` record of a pax extended header ("<len> path=<name>\n" records), if any."""
    pos, path = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise FormatError("bad_tar", "unreadable tar: bad pax header", where=where) from None
        if length <= 0:
            raise FormatError("bad_tar", "unreadable tar: bad pax header", where=where)
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def _header_name(buf: Any, pos: int) -> bytes:
    name = buf[pos : pos + 100].split(b"\0", 1)[0]
    # POSIX ustar splits long names into prefix + name (GNU tars use those bytes for other fields)
    if buf[pos + 345] and buf[pos + 257 : pos + 263] == b"ustar\0":
        name = buf[pos + 345 : pos + 500].split(b"\0", 1)[0] + b"/" + name
    return name


def _read_up_to(fileobj: IO[bytes], n: int) -> bytes:
    """At most ``n`` bytes, read in bounded pieces: a member that claims more bytes than the file
    holds costs what the file holds, never an ``n``-byte buffer allocated up front."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = fileobj.read(min(n - got, _TAR_READ_BYTES))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _scan_tar(source: IO[bytes] | bytes | mmap.mmap, where: str) -> Iterator[tuple[memoryview, list]]:
    """The archive's regular-file members, one batch per buffer: ``(view, [(name bytes, start, size)])``
    where ``view[start:start + size]`` is the member's data (see ``iter_tar_members``)."""
    whole = isinstance(source, (bytes, mmap.mmap))
    buf: Any = source if whole else b""  # bytes-like: slices are bytes, items are ints
    fileobj: Optional[IO[bytes]] = None if whole else source  # type: ignore[assignment]
    pos, end, at_eof = 0, len(buf), whole
    long_name: Optional[bytes] = None
    while True:
        found: list[tuple[bytes, int, int]] = []
        offsets: list[int] = []
        finished = False
        need = _TAR_BLOCK
        while end - pos >= _TAR_BLOCK:
            try:  # the common case: 11 octal digits (+ NUL), as tarfile and every POSIX writer emit
                size = int(buf[pos + 124 : pos + 135], 8)
            except ValueError:
                if buf[pos : pos + _TAR_BLOCK].count(0) == _TAR_BLOCK:
                    finished = True  # end-of-archive: the rest is padding
                    break
                size = _tar_number(buf[pos + 124 : pos + 136], where)
            if not 0 <= size <= TAR_MAX_MEMBER_BYTES:
                raise FormatError("bad_tar", f"unreadable tar: member size {size} at byte {pos} is negative or "
                                             f"beyond {TAR_MAX_MEMBER_BYTES}", where=where)
            padded = size + (-size) % _TAR_BLOCK
            if end - pos < _TAR_BLOCK + padded:
                need = _TAR_BLOCK + padded
                break
            offsets.append(pos)
            kind = buf[pos + 156]
            data_at = pos + _TAR_BLOCK
            if kind in _TAR_FILE_TYPES:
                found.append((long_name or _header_name(buf, pos), data_at, size))
                long_name = None
            elif kind == 76:  # "L": GNU long name of the next member
                long_name = buf[data_at : data_at + size].split(b"\0", 1)[0]
            elif kind == 120:  # "x": pax extended header of the next member
                path = _pax_path(buf[data_at : data_at + size], where)
                long_name = path.encode("utf-8", "surrogateescape") if path is not None else long_name
            elif kind in _TAR_SKIP_TYPES:
                long_name = None
            else:
                raise FormatError("bad_tar", f"unreadable tar: unsupported member type {chr(kind)!r}", where=where)
            pos = data_at + padded
        if offsets:
            _check_tar_checksums(buf, offsets, where)
        if found:
            yield memoryview(buf).toreadonly(), found
        if finished:
            return
        if at_eof:
            if end == 0:
                raise FormatError("bad_tar", "unreadable tar: empty file", where=where)
            raise FormatError("bad_tar", "unreadable tar: truncated (a member or the end-of-archive blocks "
                                         "are missing)", where=where)
        # read on into a new buffer (views handed out keep the old one alive), the unparsed tail first
        assert fileobj is not None  # a whole archive is at_eof from the start
        try:
            more = _read_up_to(fileobj, max(_TAR_READ_BYTES, need - (end - pos)))
        except OSError as exc:
            raise FormatError("bad_tar", f"unreadable tar: {exc}", where=where) from None
        at_eof = not more
        buf = bytes(buf[pos:end]) + bytes(more) if pos < end else bytes(more)
        pos, end = 0, len(buf)


def iter_tar_members(
    source: IO[bytes] | bytes | mmap.mmap, *, where: str = ""
) -> Iterator[tuple[str, memoryview]]:
    """The regular-file members of a tar archive in file order, as ``(name, data)``.

    ``source`` is a binary stream, or the whole archive in memory (bytes or an mmap). ``data`` is a
    read-only view of the archive's bytes (no copy per member). A stream is read in large sequential
    reads. Headers are parsed by slicing (ustar, GNU long names, pax paths) and their checksums
    verified in bulk, once per buffer. A damaged header, a member cut short, or an archive that ends
    without the end-of-archive blocks raises ``FormatError("bad_tar")``.
    """
    for view, found in _scan_tar(source, where):
        for name, start, size in found:
            yield name.decode("utf-8", "surrogateescape"), view[start : start + size]


def iter_tar_views(
    source: IO[bytes] | bytes | mmap.mmap, *, where: str = "", suffixes: Optional[Collection[str]] = None
) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """``iter_tar`` without copies: member data are read-only views. With ``suffixes``, only those
    members are kept (the others are skipped unread, and not checked for duplicates or contiguity)."""
    wanted = None if suffixes is None else {s.encode() for s in suffixes}
    seen: set[bytes] = set()
    key: Optional[bytes] = None
    members: dict[str, memoryview] = {}
    for view, found in _scan_tar(source, where):
        for name, start, size in found:
            # WebDataset's rule: the key is the name up to the first dot of its basename
            slash = name.rfind(b"/") + 1
            dot = name.find(b".", slash)
            k, suffix = (name, b"") if dot < 0 else (name[:dot], name[dot + 1 :])
            if wanted is not None and suffix not in wanted:
                continue
            if k != key:
                if key is not None:
                    yield key.decode("utf-8", "surrogateescape"), members
                if k in seen:
                    raise FormatError("split_sample", f"members of {k.decode(errors='replace')} are not contiguous",
                                      where=where)  # fmt: skip
                seen.add(k)
                key, members = k, {}
            text = suffix.decode("utf-8", "surrogateescape")
            if text in members:
                raise FormatError("duplicate_member", f"{k.decode(errors='replace')}.{text} appears twice",
                                  where=where)  # fmt: skip
            members[text] = view[start : start + size]
    if key is not None:
        yield key.decode("utf-8", "surrogateescape"), members


def iter_tar(fileobj: IO[bytes], *, where: str = "") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar stream's members into samples ``(key, {suffix: bytes})`` in file order.

    A damaged or truncated tar raises ``FormatError("bad_tar")``; a sample whose members are not
    contiguous raises ``FormatError("split_sample")`` (a shard must never scatter a sample).
    """
    for key, views in iter_tar_views(fileobj, where=where):
        yield key, {suffix: bytes(data) for suffix, data in views.items()}


def iter_samples(shard_uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one shard, in order, as ``(key, {suffix: bytes})``."""
    from microturn.storage import open_input

    with _shard_exists(shard_uri), open_input(shard_uri) as fh:
        yield from iter_tar(fh, where=shard_uri)


@contextlib.contextmanager
def _shard_exists(shard_uri: str) -> Iterator[None]:
    """A shard that is listed but absent is the corpus' problem (``FormatError("missing_shard")``),
    like every other way a corpus can be damaged, not an ``OSError`` for the reader's caller."""
    try:
        yield
    except FileNotFoundError:
        raise FormatError("missing_shard", "the shard does not exist", where=shard_uri) from None


def iter_sample_views(
    shard_uri: str, *, suffixes: Optional[Collection[str]] = None
) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """Samples of one shard as read-only views, optionally only some members: the fast path for
    training loaders. A local shard is memory-mapped (its bytes are never copied: views point into the
    page cache; the mapping lives as long as any view of it); a remote one is streamed."""
    from microturn.storage import is_remote, local_path, open_input

    if not is_remote(shard_uri):
        with _shard_exists(shard_uri), open(local_path(shard_uri), "rb") as fh:
            try:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                mapped = None
        if mapped is not None:
            if hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            yield from iter_tar_views(mapped, where=shard_uri, suffixes=suffixes)
            return
    with _shard_exists(shard_uri), open_input(shard_uri) as fh:
        yield from iter_tar_views(fh, where=shard_uri, suffixes=suffixes)


def read_dataset_json(dataset_uri: str) -> dict[str, Any]:
    from microturn.storage import join, read_bytes

    uri = join(dataset_uri, DATASET_JSON)
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise FormatError("missing_dataset_json", f"{uri} does not exist") from None
    doc = decode_json(data, where=uri)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError("bad_dataset_json", f"{uri} is not a {FORMAT_NAME} dataset.json")
    if doc.get("format_version") != FORMAT_VERSION:
        raise FormatError("format_version", f"{uri} has format_version {doc.get('format_version')!r}, "
                                            f"this reader reads {FORMAT_VERSION}")
    wrong = dataset_json_problems(doc)
    if wrong:
        raise FormatError("bad_dataset_json", f"{uri}: {'; '.join(wrong)}")
    return doc


def is_plain_name(name: Any) -> bool:
    """A file name with no folder part (shard names are joined to the shards folder)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def dataset_json_problems(doc: Mapping[str, Any]) -> list[str]:
    """Type problems of the dataset.json entries readers rely on (shards, tokenizers, totals)."""
    out = []
    shards = doc.get("shards", [])
    if not isinstance(shards, list):
        out.append("shards is not a list")
    else:
        for i, entry in enumerate(shards):
            if not isinstance(entry, dict) or not is_plain_name(entry.get("name")):
                out.append(f"shards[{i}] is not an object with a plain file name")
            elif not (isinstance(entry.get("samples", 0), int) and isinstance(entry.get("bytes", 0), int)):
                out.append(f"shards[{i}] has non-integer samples or bytes")
    toks = doc.get("tokenizers", {})
    if not isinstance(toks, dict) or not all(isinstance(t, dict) for t in toks.values()):
        out.append("tokenizers is not an object of objects")
    for name in ("totals", "files"):
        if not isinstance(doc.get(name, {}), dict):
            out.append(f"{name} is not an object")
    return out


def fingerprints_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """Tokenizer fingerprints ({"audio": ..., "frames": ..., "text": ...}) from a dataset.json."""
    return {name: str(t.get("fingerprint")) for name, t in sorted(doc.get("tokenizers", {}).items())}


def iter_dataset(
    dataset_uris: str | Sequence[str], *, allow_mixed: bool = False, decode: bool = False
) -> Iterator[tuple[str, Any]]:
    """Samples of one or more built datasets, shard by shard in the order dataset.json lists them.

    Datasets (and samples) tokenized with different tokenizer fingerprints hold incompatible tokens:
    mixing them raises ``FormatError("mixed_fingerprints")`` unless ``allow_mixed=True``. Yields
    ``(key, members)``, or ``(key, DecodedSample)`` with ``decode=True``.
    """
    from microturn.storage import join

    uris = [dataset_uris] if isinstance(dataset_uris, str) else list(dataset_uris)
    docs = [read_dataset_json(u) for u in uris]
    expected = fingerprints_of(docs[0]) if docs else {}
    for uri, doc in zip(uris, docs):
        if not allow_mixed and fingerprints_of(doc) != expected:
            raise FormatError("mixed_fingerprints", f"{uri} has tokenizer fingerprints {fingerprints_of(doc)}, "
                                                    f"{uris[0]} has {expected} (allow_mixed=True to read anyway)")
    for uri, doc in zip(uris, docs):
        for shard in doc.get("shards", []):
            for key, members in iter_samples(join(uri, SHARDS_DIR, shard["name"])):
                if not allow_mixed:
                    meta = decode_json(members.get("meta.json", b"{}"), where=key)
                    fps = meta.get("fingerprints") if isinstance(meta, dict) else None
                    if not isinstance(fps, dict):
                        raise FormatError("bad_meta", "meta.json has no fingerprints object", where=key)
                    fp = {k: str(v) for k, v in sorted(fps.items())}
                    if fp != expected:
                        raise FormatError("mixed_fingerprints", f"sample fingerprints {fp} differ from the "
                                                                f"dataset's {expected}", where=key)
                yield (key, decode_sample(members, key)) if decode else (key, members)
