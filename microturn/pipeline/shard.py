"""Write samples into WebDataset shards, plus the index, the quarantine table and dataset.json.

Tar bytes are reproducible: members in the format's fixed order, every header with mtime 0, uid/gid 0,
empty user/group names, mode 0o644, GNU format (long keys use GNU long-name records), and the archive
padded to tarfile's record size like any tar. A shard is written under a temporary name, fsync'd and
renamed (``storage.atomic_writer``), so no half-written shard is ever visible under its final name;
after the rename a small commit marker ``shards/<name>.json`` records its sha256, size, sample count,
sessions and index rows. A shard holds whole sessions and is closed at the first session boundary once
it reaches ``target_bytes`` (or ``max_samples``): shard boundaries depend only on the sequence of
sessions, so a resumed build that continues after the last committed shard writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from microturn import storage
from microturn.config import ShardConfig
from microturn.errors import FormatError
from microturn.format import (
    DATASET_JSON,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_PARQUET,
    QUARANTINE_COLUMNS,
    QUARANTINE_PARQUET,
    SHARDS_DIR,
    TarStream,
    arrow_schema,
    decode_json,
    encode_json,
    jsonable,
)
from microturn.records import Rejection, Sample

log = logging.getLogger(__name__)


class _ShardStream(TarStream):
    """A TarStream that also appends samples already tarred elsewhere (a part's byte range, as it is)."""

    def add_tarred(self, data: bytes) -> None:
        self._write(data)


# ---------------------------------------------------------------- per-session parts (resume)


@dataclass(frozen=True)
class PartSummary:
    """What a part holds, written beside it so the shard sink neither re-parses nor re-tars it: the
    samples are the part's first ``samples_bytes`` bytes, in the exact tar blocks a shard holds."""

    session_id: str
    tar_sha256: str
    tar_bytes: int
    samples_bytes: int
    rows: tuple[dict[str, Any], ...]  # index rows (without ``shard``), in sample order

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "tar_sha256": self.tar_sha256, "tar_bytes": self.tar_bytes,
                "samples_bytes": self.samples_bytes, "rows": list(self.rows)}


def part_summary_uri(part_uri: str) -> str:
    """``<id>.tar`` -> ``<id>.samples.json``."""
    return part_uri.removesuffix(".tar") + ".samples.json"


def write_part(uri: str, samples: Iterable[Sample]) -> PartSummary:
    """Write one session's samples as a tar, then its summary (both atomic, in that order), so a resumed
    job need not recompute them and the sink copies them into a shard as they are. ``samples`` is taken
    one at a time: only its index rows are kept."""
    rows: list[dict[str, Any]] = []
    with storage.atomic_writer(uri) as fh:
        stream = TarStream(fh)
        for s in samples:
            stream.add_sample(s.key, s.members)
            rows.append(dict(s.index_row))
        samples_bytes = stream.bytes
        stream.finish()
    summary = PartSummary(session_id=_session_of(rows), tar_sha256=stream.sha256.hexdigest(), tar_bytes=stream.bytes,
                          samples_bytes=samples_bytes, rows=tuple(rows))
    storage.write_bytes_atomic(part_summary_uri(uri), encode_json(jsonable(summary.to_json())))
    return summary


def read_part_summary(part_uri: str) -> PartSummary:
    doc = decode_json(storage.read_bytes(part_summary_uri(part_uri)), where=part_summary_uri(part_uri))
    return PartSummary(session_id=doc["session_id"], tar_sha256=doc["tar_sha256"], tar_bytes=doc["tar_bytes"],
                       samples_bytes=doc["samples_bytes"], rows=tuple(doc["rows"]))


def _session_of(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    sid = str(rows[0]["session_id"])
    if any(str(r["session_id"]) != sid for r in rows):
        raise ValueError("the samples belong to more than one session")
    return sid


def _copy_range(uri: str, nbytes: int, write: Callable[[bytes], None], block_bytes: int = 1 << 22) -> None:
    """Pass the first ``nbytes`` bytes of ``uri`` to ``write``, a block at a time."""
    left = nbytes
    with storage.open_input(uri) as fh:
        while left > 0:
            block = fh.read(min(block_bytes, left))
            if not block:
                raise FormatError("truncated_part", f"ends {left} bytes before its samples do", where=uri)
            write(block)
            left -= len(block)


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardInfo:
    name: str  # "shard-000000.tar"
    sha256: str
    bytes: int
    samples: int
    sessions: tuple[str, ...]  # in shard order

    def to_json(self, *, with_sessions: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "bytes": self.bytes,
                               "samples": self.samples, "sessions": len(self.sessions)}
        if with_sessions:
            out["session_ids"] = list(self.sessions)
        return out


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def marker_name(name: str) -> str:
    return name.removesuffix(".tar") + ".json"


@dataclass
class _OpenShard:
    name: str
    stack: contextlib.ExitStack
    stream: _ShardStream
    sessions: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class ShardSink:
    """Receives whole sessions in a deterministic order and writes them into shards.

    Feed a session's part with ``add_part`` (its tar bytes are copied as they are, its index rows come
    from its summary) or its samples with ``add_session``. ``close()`` commits the last shard and
    returns every shard's ``ShardInfo``; ``rows`` holds the index rows (with their ``shard``) of every
    committed shard.
    """

    def __init__(self, out_uri: str, cfg: ShardConfig):
        self.out_uri = out_uri
        self.cfg = cfg
        self.shards_uri = storage.join(out_uri, SHARDS_DIR)
        storage.makedirs(self.shards_uri)
        self.next_index = 0  # ``resume`` moves it past the committed shards
        self.committed: list[ShardInfo] = []
        self.rows: list[dict[str, Any]] = []
        self._open: Optional[_OpenShard] = None
        self._closed = False

    # ----------------------------------------------------------- resume

    @classmethod
    def resume(cls, out_uri: str, cfg: ShardConfig, *, verify: bool = False) -> "ShardSink":
        """A sink that continues after the shards already committed under ``out_uri``.

        Committed = a marker whose tar exists with the recorded size (and sha256 with ``verify``),
        contiguous from index 0. Anything after the first gap is removed: it is rewritten identically.
        """
        sink = cls(out_uri, cfg)
        names = storage.listdir(sink.shards_uri)
        index = 0
        while True:
            name = shard_name(cfg.prefix, index)
            info = sink._committed_info(name, names, verify)
            if info is None:
                break
            sink.committed.append(info[0])
            sink.rows.extend(info[1])
            index += 1
        sink.next_index = index
        for leftover in names:
            stem = leftover.rsplit(".", 1)[0]
            if stem.startswith(f"{cfg.prefix}-") and stem[len(cfg.prefix) + 1 :].isdigit():
                if int(stem[len(cfg.prefix) + 1 :]) >= index:
                    log.warning("removing uncommitted shard file %s", leftover)
                    storage.remove(storage.join(sink.shards_uri, leftover))
        storage.cleanup_temporaries(sink.shards_uri)
        return sink

    def _committed_info(self, name: str, names: list[str], verify: bool):
        marker = marker_name(name)
        if marker not in names or name not in names:
            return None
        doc = decode_json(storage.read_bytes(storage.join(self.shards_uri, marker)), where=marker)
        uri = storage.join(self.shards_uri, name)
        size = storage.size(uri)
        if size != doc.get("bytes"):
            log.warning("shard %s has %s bytes, its marker says %s: rewriting it", name, size, doc.get("bytes"))
            return None
        if verify and storage.file_sha256(uri) != doc.get("sha256"):
            log.warning("shard %s does not match its marker's sha256: rewriting it", name)
            return None
        info = ShardInfo(name=name, sha256=doc["sha256"], bytes=doc["bytes"], samples=doc["samples"],
                         sessions=tuple(doc["session_ids"]))
        return info, list(doc["rows"])

    @property
    def sessions_committed(self) -> set[str]:
        return {s for info in self.committed for s in info.sessions}

    # ----------------------------------------------------------- writing

    def add_part(self, part_uri: str) -> None:
        """Add the session of a part written by ``write_part``: its sample bytes go into the shard as they
        are (they are already the shard's tar blocks), its rows come from its summary."""
        summary = read_part_summary(part_uri)
        if not summary.rows:  # a session too short for one window: nothing to shard
            return
        shard = self._shard_for(summary.session_id)
        _copy_range(part_uri, summary.samples_bytes, shard.stream.add_tarred)
        shard.stream.samples += len(summary.rows)  # the copied bytes hold one sample per row
        self._end_session(shard, summary.session_id, summary.rows)

    def add_session(self, samples: Sequence[Sample]) -> None:
        """Add every sample of one session, tarred here (may commit a shard afterwards)."""
        if not samples:
            return
        sid = _session_of([s.index_row for s in samples])
        shard = self._shard_for(sid)
        for s in samples:
            shard.stream.add_sample(s.key, s.members)
        self._end_session(shard, sid, [s.index_row for s in samples])

    def _shard_for(self, sid: str) -> _OpenShard:
        """The open shard (started if need be) that the session ``sid`` goes into."""
        if self._closed:
            raise RuntimeError("ShardSink is closed")
        if sid in self._open_sessions() or sid in self.sessions_committed:
            raise ValueError(f"session {sid!r} was already written")
        return self._open or self._start()

    def _end_session(self, shard: _OpenShard, sid: str, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            shard.rows.append({**row, "shard": shard.name})
        shard.sessions.append(sid)
        full = shard.stream.bytes >= self.cfg.target_bytes
        if self.cfg.max_samples is not None and shard.stream.samples >= self.cfg.max_samples:
            full = True
        if full:
            self._commit()

    def _open_sessions(self) -> list[str]:
        return self._open.sessions if self._open else []

    def _start(self) -> _OpenShard:
        name = shard_name(self.cfg.prefix, self.next_index)
        stack = contextlib.ExitStack()
        fh = stack.enter_context(storage.atomic_writer(storage.join(self.shards_uri, name)))
        self._open = _OpenShard(name=name, stack=stack, stream=_ShardStream(fh))
        return self._open

    def _commit(self) -> ShardInfo:
        shard = self._open
        assert shard is not None
        shard.stream.finish()
        shard.stack.close()  # flush, fsync, rename: the tar is now visible under its final name
        info = ShardInfo(name=shard.name, sha256=shard.stream.sha256.hexdigest(), bytes=shard.stream.bytes,
                         samples=shard.stream.samples, sessions=tuple(shard.sessions))
        marker = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **info.to_json(with_sessions=True),
                  "rows": shard.rows}
        storage.write_bytes_atomic(storage.join(self.shards_uri, marker_name(shard.name)),
                                   encode_json(jsonable(marker)))
        self.committed.append(info)
        self.rows.extend(shard.rows)
        self.next_index += 1
        self._open = None
        return info

    def close(self) -> list[ShardInfo]:
        """Commit the open shard and return every committed shard (resumed ones included)."""
        if not self._closed:
            if self._open is not None and self._open.stream.samples:
                self._commit()
            elif self._open is not None:
                self.abort()
            self._closed = True
        return list(self.committed)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed; nothing becomes visible)."""
        if self._open is not None:
            with contextlib.suppress(_Abort):
                self._open.stack.__exit__(_Abort, _Abort("aborted"), None)
            self._open = None

    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Abort(Exception):
    pass


# ---------------------------------------------------------------- index, quarantine, dataset.json


def _write_parquet(uri: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(columns)
    table = pa.Table.from_pylist([{name: row.get(name) for name, _ in columns} for row in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    storage.write_bytes_atomic(uri, data)
    return {"name": uri.rsplit("/", 1)[-1], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "rows": len(rows)}


def write_index(out_uri: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """index.parquet: one row per sample, in shard order. Returns {name, sha256, bytes, rows}."""
    missing = [r.get("key") for r in rows if not r.get("shard")]
    if missing:
        raise ValueError(f"index rows without a shard: {missing[:5]}")
    return _write_parquet(storage.join(out_uri, INDEX_PARQUET), rows, INDEX_COLUMNS)


def write_quarantine(out_uri: str, rejections: Sequence[Rejection]) -> dict[str, Any]:
    """quarantine.parquet: one row per rejected input, sorted by (session, source); written even empty."""
    rows = sorted(({"session_id": r.session_id, "source": r.source, "stage": r.stage, "reason": r.reason,
                    "message": r.message} for r in rejections),
                  key=lambda r: (r["session_id"], r["source"], r["stage"], r["reason"]))
    return _write_parquet(storage.join(out_uri, QUARANTINE_PARQUET), rows, QUARANTINE_COLUMNS)


def dataset_totals(shards: Sequence[ShardInfo], rows: Sequence[Mapping[str, Any]], *, sessions_in: int,
                   quarantined: int) -> dict[str, Any]:
    session_seconds: dict[str, float] = {}
    for r in rows:
        session_seconds[str(r["session_id"])] = float(r["session_duration_s"])
    sessions = {s for info in shards for s in info.sessions}
    return {
        "sessions_in": int(sessions_in),
        "sessions_in_shards": len(sessions),
        "quarantined": int(quarantined),
        "samples": sum(info.samples for info in shards),
        "shards": len(shards),
        "bytes": sum(info.bytes for info in shards),
        "hours": round(sum(session_seconds.values()) / 3600, 6),
    }


def write_dataset_json(
    out_uri: str,
    *,
    config_hash: str,
    tokenizers: Mapping[str, Mapping[str, Any]],
    shards: Sequence[ShardInfo],
    rows: Sequence[Mapping[str, Any]],
    sessions_in: int,
    quarantined: int,
    index: Optional[Mapping[str, Any]] = None,
    quarantine: Optional[Mapping[str, Any]] = None,
    members: Sequence[Mapping[str, Any]] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Write dataset.json (canonical JSON, no timestamps: two identical builds give identical bytes).

    ``tokenizers``: ``{"audio": {"fingerprint", "vocab_size", "codebooks"}, "frames": {"fingerprint",
    "vocab_size"}, "text": {"fingerprint", "vocab_size", ...}}`` — vocab sizes let the validator check
    token ranges. ``index``/``quarantine``: what ``write_index``/``write_quarantine`` returned.
    """
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash,
        "tokenizers": jsonable(dict(tokenizers)),
        "shards": [info.to_json() for info in shards],
        "totals": dataset_totals(shards, rows, sessions_in=sessions_in, quarantined=quarantined),
        "files": {k: dict(v) for k, v in (("index", index), ("quarantine", quarantine)) if v is not None},
    }
    if members:  # the member table of every sample (docs/format.md); absent: format version 1's
        doc["members"] = jsonable(list(members))
    if extra:
        doc["extra"] = jsonable(dict(extra))
    storage.write_bytes_atomic(storage.join(out_uri, DATASET_JSON), encode_json(doc) + b"\n")
    return doc


def finalize_dataset(
    out_uri: str,
    sink: ShardSink,
    *,
    config_hash: str,
    tokenizers: Mapping[str, Mapping[str, Any]],
    rejections: Sequence[Rejection],
    sessions_in: int,
    members: Sequence[Mapping[str, Any]] = (),
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Close the sink and write index.parquet, quarantine.parquet and dataset.json (in that order, so
    a dataset.json on disk always describes complete files). Returns the dataset.json document."""
    shards = sink.close()
    index = write_index(out_uri, sink.rows)
    quarantine = write_quarantine(out_uri, rejections)
    return write_dataset_json(
        out_uri,
        config_hash=config_hash,
        tokenizers=tokenizers,
        shards=shards,
        rows=sink.rows,
        sessions_in=sessions_in,
        quarantined=len({r.session_id for r in rejections}),
        index=index,
        quarantine=quarantine,
        members=members,
        extra=extra,
    )
