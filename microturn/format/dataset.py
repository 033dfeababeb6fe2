"""The dataset around the shards: dataset.json (its checks, its member table and known dimension
sizes), the index and quarantine tables' schemas and rows, and reading whole datasets.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

from microturn.errors import FormatError
from microturn.format.codec import decode_json
from microturn.format.members import FORMAT_NAME, FORMAT_VERSION, MEMBERS, MemberTable, member_table_from_json
from microturn.format.sample import EVENT_KINDS, decode_sample
from microturn.format.tar import iter_samples
from microturn.storage import join, read_bytes

DATASET_JSON = "dataset.json"
INDEX_PARQUET = "index.parquet"
QUARANTINE_PARQUET = "quarantine.parquet"
SHARDS_DIR = "shards"


# ---------------------------------------------------------------- index and quarantine tables

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

# ---------------------------------------------------------------- dataset.json


def read_dataset_json(dataset_uri: str) -> dict[str, Any]:
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
    """Type problems of the dataset.json entries readers rely on (shards, tokenizers, totals, members)."""
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
    if "members" in doc:
        try:
            member_table_from_json(doc["members"])
        except FormatError as exc:
            out.append(exc.message)
    return out


def member_table_of_dataset(doc: Mapping[str, Any]) -> MemberTable:
    """The members of the dataset's samples: the ``members`` list of dataset.json when it has one,
    else (corpora built before representations declared their members) the default table."""
    if "members" not in doc:
        return MEMBERS
    return member_table_from_json(doc["members"], where=DATASET_JSON)


def known_dims_of_dataset(doc: Mapping[str, Any]) -> dict[str, int]:
    """Dimension sizes dataset.json states: each tokenizers entry's ``dims`` (e.g. {"K": 8}), or in
    corpora written before entries had them, K (tokenizers.audio.codebooks) and H, W
    (tokenizers.frames.grid); a size it does not state is left to agreement between members."""
    toks = doc.get("tokenizers")
    toks = toks if isinstance(toks, dict) else {}
    out: dict[str, int] = {}
    for entry in toks.values():
        dims = entry.get("dims") if isinstance(entry, dict) else None
        if isinstance(dims, dict):
            out.update({k: v for k, v in dims.items() if isinstance(k, str) and _is_size(v)})
    if out:
        return out
    audio, frames = toks.get("audio"), toks.get("frames")
    books = audio.get("codebooks") if isinstance(audio, dict) else None
    if _is_size(books):
        out["K"] = books
    grid = frames.get("grid") if isinstance(frames, dict) else None
    if isinstance(grid, list) and len(grid) == 2 and all(map(_is_size, grid)):
        out["H"], out["W"] = grid
    return out


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
    uris = [dataset_uris] if isinstance(dataset_uris, str) else list(dataset_uris)
    docs = [read_dataset_json(u) for u in uris]
    expected = fingerprints_of(docs[0]) if docs else {}
    for uri, doc in zip(uris, docs):
        if not allow_mixed and fingerprints_of(doc) != expected:
            raise FormatError("mixed_fingerprints", f"{uri} has tokenizer fingerprints {fingerprints_of(doc)}, "
                                                    f"{uris[0]} has {expected} (allow_mixed=True to read anyway)")
    for uri, doc in zip(uris, docs):
        table, known = member_table_of_dataset(doc), known_dims_of_dataset(doc)
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
                yield (key, decode_sample(members, key, table=table, known=known)) if decode else (key, members)
