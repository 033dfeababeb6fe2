"""The session manifest: one row per recorded conversation (JSON Lines or Parquet).

Rows are validated at the edge into ``SessionSpec``; every problem is reported per row (line number
and key) and duplicate session ids are an error. Relative URIs resolve against the manifest's folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from microturn import storage
from microturn.align.transcripts import TRANSCRIPT_FORMATS

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}$")


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, duplicate ids, bad rows)."""

    def __init__(self, message: str, problems: Optional[list["RowProblem"]] = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class RowProblem:
    line: int  # 1-based line (JSONL) or row number (Parquet)
    session_id: Optional[str]
    message: str

    def __str__(self) -> str:
        sid = f" session {self.session_id!r}" if self.session_id else ""
        return f"row {self.line}{sid}: {self.message}"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A source may start at most this far from the session clock's origin (both ways): a finite bound,
# so that an offset can never ask decode for an astronomically long timeline (decode also refuses
# timelines longer than ``decode.max_duration_s``).
MAX_OFFSET_S = 7 * 24 * 3600.0


class VideoSource(_Row):
    uri: str = Field(min_length=1)
    offset_s: float = Field(0.0, allow_inf_nan=False, ge=-MAX_OFFSET_S, le=MAX_OFFSET_S)


class AudioSource(_Row):
    uri: str = Field(min_length=1)
    channel: int = Field(0, ge=0)
    speaker: Optional[str] = None  # None = a mixed track to diarize
    offset_s: float = Field(0.0, allow_inf_nan=False, ge=-MAX_OFFSET_S, le=MAX_OFFSET_S)

    @field_validator("speaker")
    @classmethod
    def _speaker_id(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not SESSION_ID_RE.fullmatch(v):
            raise ValueError("speaker ids hold letters, digits, '_' and '-' (max 128)")
        return v


class TranscriptSource(_Row):
    uri: str = Field(min_length=1)
    format: Literal[TRANSCRIPT_FORMATS]  # type: ignore[valid-type]  # the names of align.transcripts.FORMATS


class SessionSpec(_Row):
    """One validated manifest row. URIs are absolute (resolved against the manifest folder)."""

    session_id: str
    video: Optional[VideoSource] = None
    audio: tuple[AudioSource, ...] = ()
    transcript: Optional[TranscriptSource] = None
    language: Optional[str] = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("session_id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        # Keys become tar member names: no dots (webdataset splits keys at the first dot), no slashes.
        if not SESSION_ID_RE.fullmatch(v):
            raise ValueError("session_id must match [A-Za-z0-9_][A-Za-z0-9_-]* (no dots, slashes or spaces)")
        return v

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_from_text(cls, v: Any) -> Any:
        # Parquet manifests store the free-form meta as JSON text.
        if isinstance(v, str):
            return loads_json_text(v) if v.strip() else {}
        return {} if v is None else v

    def model_post_init(self, _ctx: Any) -> None:
        if not self.audio and self.video is None:
            raise ValueError("a session needs at least one audio source or a video")
        speakers = [a.speaker for a in self.audio if a.speaker is not None]
        if len(speakers) != len(set(speakers)):
            raise ValueError(f"speaker ids repeat within the session: {speakers}")
        if any(a.speaker is None for a in self.audio) and len(self.audio) > 1:
            raise ValueError("a mixed track (speaker null) must be the session's only audio source")

    def source_uris(self) -> list[str]:
        uris = [a.uri for a in self.audio]
        if self.video is not None:
            uris.append(self.video.uri)
        if self.transcript is not None:
            uris.append(self.transcript.uri)
        return list(dict.fromkeys(uris))


def loads_json_text(text: str | bytes) -> Any:
    """``json.loads`` whose every failure is a ``ValueError``: too deep nesting (``RecursionError``)
    and over-long integers (int max_str_digits) included, so a bad row is that row's problem."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _resolve(uri: str, base: str) -> str:
    if "\0" in uri:
        raise ValueError("a URI cannot hold a NUL character")
    if "://" in uri:
        return uri
    p = Path(uri)
    if p.is_absolute():
        return str(p)
    if "://" in base:
        return base.rstrip("/") + "/" + uri
    return str((Path(base) / p).resolve())


def _resolve_row(row: dict[str, Any], base: str) -> dict[str, Any]:
    row = dict(row)
    if isinstance(row.get("video"), dict) and "uri" in row["video"]:
        row["video"] = {**row["video"], "uri": _resolve(str(row["video"]["uri"]), base)}
    if isinstance(row.get("audio"), list):
        row["audio"] = [
            {**a, "uri": _resolve(str(a["uri"]), base)} if isinstance(a, dict) and "uri" in a else a
            for a in row["audio"]
        ]
    if isinstance(row.get("transcript"), dict) and "uri" in row["transcript"]:
        row["transcript"] = {**row["transcript"], "uri": _resolve(str(row["transcript"]["uri"]), base)}
    return row


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}" if key else msg)
    return "; ".join(parts)


def parse_rows(rows: Iterable[tuple[int, Any]], base: str) -> tuple[list[SessionSpec], list[RowProblem]]:
    """Validate (line, row) pairs; returns the good sessions and one problem per bad row."""
    sessions: list[SessionSpec] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        sid = row.get("session_id") if isinstance(row, dict) else None
        if not isinstance(row, dict):
            problems.append(RowProblem(line, None, "row is not a JSON object"))
            continue
        try:
            spec = SessionSpec.model_validate(_resolve_row(row, base))
        except ValidationError as err:
            problems.append(RowProblem(line, sid if isinstance(sid, str) else None, _describe(err)))
            continue
        except (ValueError, RecursionError) as exc:  # from _resolve_row (a NUL in a URI), deep rows
            message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            problems.append(RowProblem(line, sid if isinstance(sid, str) else None, message))
            continue
        if spec.session_id in seen:
            problems.append(
                RowProblem(line, spec.session_id, f"duplicate session_id (first on row {seen[spec.session_id]})")
            )
            continue
        seen[spec.session_id] = line
        sessions.append(spec)
    return sessions, problems


def _manifest_base(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        return uri.rsplit("/", 1)[0]
    return str(Path(uri.removeprefix("file://")).resolve().parent)


def _read_rows(uri: str) -> Iterable[tuple[int, Any]]:
    if uri.endswith(".parquet"):
        with storage.open_input(uri) as fh:
            table = storage.read_parquet(fh)
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, {k: v for k, v in row.items() if v is not None or k in ("video", "transcript")}
        return
    with storage.open_input(uri) as fh:
        for i, raw in enumerate(fh.read().decode("utf-8").splitlines(), start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                yield i, loads_json_text(raw)
            except ValueError as exc:  # JSONDecodeError, too deep, too long an integer
                yield i, _Unparsable(str(exc))


class _Unparsable(str):
    """Marks a JSONL line that is not JSON (reported as a row problem)."""


def load_manifest(uri: str | Path, *, strict: bool = False) -> tuple[list[SessionSpec], list[RowProblem]]:
    """Read and validate a manifest. Bad rows come back as problems (they go to quarantine);
    with ``strict`` any problem raises ``ManifestError``. A missing or unreadable file always raises."""
    uri = str(uri)
    base = _manifest_base(uri)
    try:
        rows = list(_read_rows(uri))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, a damaged Parquet file (ArrowInvalid)
        raise ManifestError(f"cannot read manifest {uri}: {exc}") from None
    fixed: list[tuple[int, Any]] = []
    problems: list[RowProblem] = []
    for line, row in rows:
        if isinstance(row, _Unparsable):
            problems.append(RowProblem(line, None, f"not valid JSON: {row}"))
        else:
            fixed.append((line, row))
    sessions, row_problems = parse_rows(fixed, base)
    problems.extend(row_problems)
    problems.sort(key=lambda p: p.line)
    if strict and problems:
        raise ManifestError(
            f"{len(problems)} bad row(s) in {uri}:\n  " + "\n  ".join(map(str, problems)), problems
        )
    if not sessions and not problems:
        raise ManifestError(f"manifest {uri} holds no sessions")
    return sessions, problems


def write_manifest(uri: str | Path, rows: Iterable[SessionSpec | Mapping[str, Any]]) -> str:
    """Write a session manifest (atomically) and return its URI: the one manifest writer.

    ``rows`` are ``SessionSpec``s or plain manifest rows (dicts). ``.parquet`` gives Parquet with ``meta``
    as JSON text; any other name JSON Lines, one object per line with sorted keys. Rows are written as
    given: validation is ``load_manifest``'s (a caller that builds rows checks them with ``parse_rows``).
    """
    uri = str(uri)
    plain = [r.model_dump(mode="json") if isinstance(r, SessionSpec) else dict(r) for r in rows]
    if uri.endswith(".parquet"):
        data = _parquet_bytes(plain)
    else:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in plain).encode("utf-8")
    storage.write_bytes_atomic(uri, data)
    return uri


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    for r in rows:
        if "meta" in r:
            r["meta"] = json.dumps(r["meta"], sort_keys=True)  # free-form: stored as JSON text
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()
