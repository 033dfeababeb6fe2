"""Validate a built dataset and report every problem found, not just the first.

Fast mode reads dataset.json, checks every shard's size and sha256, the index and quarantine tables and
the totals. Deep mode also opens every shard and decodes every sample as the member table says
(dataset.json's ``members``, else the default table): tar integrity, member names, dtypes and shapes
against the grid and dataset.json's stated sizes, token ranges against the vocab size of each member's
tokenizer, monotonic times, fingerprints, and index <-> shard agreement row by row.

Each problem is a ``Problem(code, where, message)``; ``ValidationReport.ok`` is false when there is
any. ``report.raise_for_problems()`` raises ``DatasetInvalid`` (real exceptions, not ``assert``).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from microturn import storage
from microturn.clock import FRAMES_PER_CHUNK
from microturn.format import (
    DATASET_JSON,
    EVENT_KINDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_OPTIONAL_COLUMNS,
    INDEX_PARQUET,
    KEY_RE,
    MEMBERS,
    MemberTable,
    QUARANTINE_COLUMNS,
    QUARANTINE_PARQUET,
    SHARDS_DIR,
    DecodedSample,
    FormatError,
    decode_json,
    decode_sample,
    index_row_from_meta,
    is_plain_name,
    iter_samples,
    iter_tar,
    known_dims_of_dataset,
    member_table_of_dataset,
    read_dataset_json,
)


@dataclass(frozen=True)
class Problem:
    code: str  # machine-readable: missing_shard, checksum_mismatch, bad_shape, token_range, ...
    where: str  # file, or file:key
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.where}: {self.message}"


class DatasetInvalid(Exception):
    def __init__(self, report: "ValidationReport"):
        lines = [str(p) for p in report.problems[:20]]
        more = len(report.problems) - len(lines)
        super().__init__(f"{report.uri}: {len(report.problems)} problem(s)\n  " + "\n  ".join(lines)
                         + (f"\n  ... and {more} more" if more > 0 else ""))
        self.report = report


@dataclass
class ValidationReport:
    uri: str
    deep: bool
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: {"shards": 0, "samples": 0, "index_rows": 0})

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, code: str, where: str, message: str) -> None:
        self.problems.append(Problem(code, where, message))

    def warn(self, code: str, where: str, message: str) -> None:
        self.warnings.append(Problem(code, where, message))

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "deep": self.deep,
            "ok": self.ok,
            "checked": dict(self.checked),
            "problems": [vars(p) for p in self.problems],
            "warnings": [vars(p) for p in self.warnings],
        }

    def raise_for_problems(self) -> None:
        if self.problems:
            raise DatasetInvalid(self)


def _read(uri: str) -> Optional[bytes]:
    try:
        return storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _size_and_sha256(uri: str) -> tuple[Optional[int], str]:
    """(bytes, sha256) of a file, or (None, "") when it does not exist."""
    try:
        digest, size = storage.file_sha256_and_size(uri)
    except (FileNotFoundError, IsADirectoryError):
        return None, ""
    return size, digest


def _column_problem(schema: Any, column: str, typ: str) -> str:
    """Why ``column`` of a table is not the one Arrow type the writer gives it ("" when it is)."""
    import pyarrow as pa

    i = schema.get_field_index(column)  # -1 when the name repeats
    if i < 0:
        return f"{column} appears more than once"
    want = getattr(pa, typ)()
    return "" if schema.field(i).type == want else f"{column} is {schema.field(i).type}, expected {want}"


class _Validator:
    def __init__(self, uri: str, deep: bool):
        self.uri = uri
        self.report = ValidationReport(uri=uri, deep=deep)
        self.doc: dict[str, Any] = {}
        self.index: list[dict[str, Any]] = []
        self.shard_names: list[str] = []
        self.present_shards: set[str] = set()
        self.table: MemberTable = MEMBERS  # dataset.json's own table once read
        self.known: dict[str, int] = {}  # dimension sizes dataset.json states (K, H, W)

    # ----------------------------------------------------------- dataset.json

    def dataset_json(self) -> None:
        r = self.report
        data = _read(storage.join(self.uri, DATASET_JSON))
        if data is None:
            r.add("missing_dataset_json", DATASET_JSON, "dataset.json does not exist")
            return
        try:
            doc = decode_json(data, where=DATASET_JSON)
        except FormatError as exc:
            r.add("bad_dataset_json", DATASET_JSON, exc.message)
            return
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            r.add("bad_dataset_json", DATASET_JSON, f"not a {FORMAT_NAME} dataset.json")
            return
        self.doc = doc = self._sanitized(doc)
        if doc.get("format_version") != FORMAT_VERSION:
            r.add("format_version", DATASET_JSON,
                  f"format_version {doc.get('format_version')!r}, this validator checks {FORMAT_VERSION}")
        for key in ("config_hash", "tokenizers", "shards", "totals"):
            if key not in doc:
                r.add("bad_dataset_json", DATASET_JSON, f"missing key {key!r}")
        try:
            self.table = member_table_of_dataset(doc)
        except FormatError as exc:
            r.add("bad_dataset_json", DATASET_JSON, exc.message)
        self.known = known_dims_of_dataset(doc)
        for name in sorted({m.tokenizer for m in self.table.values() if m.tokenizer}):
            tok = doc.get("tokenizers", {}).get(name)
            if not isinstance(tok, dict):
                r.add("missing_tokenizer", DATASET_JSON, f"tokenizers.{name} is missing")
                continue
            if not tok.get("fingerprint"):
                r.add("missing_fingerprint", DATASET_JSON, f"tokenizers.{name}.fingerprint is missing")
            if not isinstance(tok.get("vocab_size"), int) or tok["vocab_size"] <= 0:
                r.add("missing_vocab", DATASET_JSON, f"tokenizers.{name}.vocab_size is missing or not positive")
        names = [s["name"] for s in doc["shards"]]
        if len(set(names)) != len(names):
            r.add("duplicate_shard", DATASET_JSON, "a shard is listed twice")
        self.shard_names = [n for n in names if isinstance(n, str)]

    def _sanitized(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with every entry the checks read made the expected type: an entry of the wrong
        type is reported (``bad_dataset_json``) and left out, or its field set to None, so that
        the checks below report on what is left instead of crashing on it."""
        r = self.report
        out = dict(doc)
        for key in ("tokenizers", "totals", "files"):
            if not isinstance(doc.get(key, {}), dict):
                r.add("bad_dataset_json", DATASET_JSON, f"{key} is {type(doc[key]).__name__}, expected an object")
                out[key] = {}
        for key in ("tokenizers", "files"):  # each entry an object (a missing tokenizer is reported later)
            entries = out.get(key, {})
            odd = sorted(str(k) for k, v in entries.items() if not isinstance(v, dict))
            if odd and key == "files":
                r.add("bad_dataset_json", DATASET_JSON, f"files entries {odd} are not objects")
            out[key] = {k: v for k, v in entries.items() if isinstance(v, dict)}
        shards = doc.get("shards", [])
        if not isinstance(shards, list):
            r.add("bad_dataset_json", DATASET_JSON, f"shards is {type(shards).__name__}, expected a list")
            shards = []
        out["shards"] = []
        for i, entry in enumerate(shards):
            if not isinstance(entry, dict) or not is_plain_name(entry.get("name")):
                r.add("bad_dataset_json", DATASET_JSON, f"shards[{i}] is not an object with a plain file name")
                continue
            entry = dict(entry)
            for field_name, types in (("bytes", int), ("samples", int), ("sha256", str)):
                value = entry.get(field_name)
                if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                    r.add("bad_dataset_json", DATASET_JSON, f"shards[{i}].{field_name} is {value!r:.40}")
                    entry[field_name] = None
            out["shards"].append(entry)
        return out

    # ----------------------------------------------------------- shards (fast)

    def shards(self) -> None:
        r = self.report
        folder = storage.join(self.uri, SHARDS_DIR)
        present = storage.listdir(folder)
        for entry in self.doc.get("shards", []):
            name = entry["name"]
            size, digest = _size_and_sha256(storage.join(folder, name))
            if size is None:
                r.add("missing_shard", name, f"listed in dataset.json but {SHARDS_DIR}/{name} does not exist")
                continue
            r.checked["shards"] += 1
            self.present_shards.add(name)
            if size != entry.get("bytes"):
                hint = " (truncated)" if size < (entry.get("bytes") or 0) else ""
                r.add("size_mismatch", name, f"{size} bytes, dataset.json says {entry.get('bytes')}{hint}")
            if digest != entry.get("sha256"):
                r.add("checksum_mismatch", name, f"sha256 {digest[:16]}... differs from dataset.json's "
                                                 f"{str(entry.get('sha256'))[:16]}...")
        listed = set(self.shard_names)
        for name in present:
            if name.endswith(".tar") and name not in listed:
                r.add("unlisted_shard", name, f"{SHARDS_DIR}/{name} is not listed in dataset.json")
            elif ".tmp-" in name:
                r.warn("temporary_file", name, "a temporary file left by an interrupted write")

    # ----------------------------------------------------------- tables

    def _table(self, name: str, columns, files_key: str) -> Optional[list[dict[str, Any]]]:
        r = self.report
        data = _read(storage.join(self.uri, name))
        if data is None:
            r.add(f"missing_{files_key}", name, f"{name} does not exist")
            return None
        recorded = self.doc.get("files", {}).get(files_key, {})
        if recorded.get("sha256") and recorded["sha256"] != _sha256(data):
            r.add(f"{files_key}_checksum", name, f"sha256 differs from dataset.json's files.{files_key}")
        try:
            table = storage.read_parquet(io.BytesIO(data))
            names = table.column_names  # decoded from the file's metadata: may not be UTF-8
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
            r.add(f"bad_{files_key}", name, f"unreadable Parquet: {exc}")
            return None
        missing = [c for c, _ in columns if c not in names and c not in INDEX_OPTIONAL_COLUMNS]
        if missing:
            r.add(f"{files_key}_schema", name, f"missing columns {missing}")
            return None
        wrong = [_column_problem(table.schema, c, t) for c, t in columns if c in names]
        wrong = [w for w in wrong if w]
        if wrong:  # the checks below hash and compare these values: they must be what the writer writes
            r.add(f"{files_key}_schema", name, f"wrong column types: {'; '.join(wrong)}")
            return None
        try:
            return table.to_pylist()
        except (ValueError, OverflowError) as exc:  # damaged values: a string column that is not UTF-8
            r.add(f"bad_{files_key}", name, f"unreadable values: {type(exc).__name__}: {exc}")
            return None

    def index_table(self) -> None:
        r = self.report
        rows = self._table(INDEX_PARQUET, INDEX_COLUMNS, "index")
        if rows is None:
            return
        self.index = rows
        r.checked["index_rows"] = len(rows)
        counts = Counter(row["key"] for row in rows)  # linear: a count per key, not a scan per key
        for k in sorted(k for k, n in counts.items() if n > 1):
            r.add("duplicate_key", INDEX_PARQUET, f"key {k} appears more than once")
        per_shard: dict[str, int] = {}
        for row in rows:
            per_shard[row["shard"]] = per_shard.get(row["shard"], 0) + 1
        listed = {s.get("name"): s for s in self.doc.get("shards", [])}
        for shard, n in sorted(per_shard.items()):
            if shard not in listed:
                r.add("index_unknown_shard", INDEX_PARQUET, f"{n} row(s) point to shard {shard}, not in dataset.json")
        for name, entry in listed.items():
            if per_shard.get(name, 0) != entry.get("samples"):
                r.add("index_shard_count", INDEX_PARQUET,
                      f"{per_shard.get(name, 0)} row(s) for {name}, dataset.json says {entry.get('samples')} samples")
        totals = self.doc.get("totals", {})
        if "samples" in totals and len(rows) != totals["samples"]:
            r.add("index_count", INDEX_PARQUET, f"{len(rows)} rows, dataset.json totals.samples = {totals['samples']}")
        sessions = {row["session_id"] for row in rows}
        if "sessions_in_shards" in totals and len(sessions) != totals["sessions_in_shards"]:
            r.add("sessions_mismatch", INDEX_PARQUET,
                  f"{len(sessions)} sessions in the index, totals.sessions_in_shards = {totals['sessions_in_shards']}")

    def quarantine_table(self) -> None:
        rows = self._table(QUARANTINE_PARQUET, QUARANTINE_COLUMNS, "quarantine")
        totals = self.doc.get("totals", {})
        if rows is not None and "quarantined" in totals:
            sessions = {row["session_id"] for row in rows}
            if len(sessions) != totals["quarantined"]:
                self.report.add("quarantine_count", QUARANTINE_PARQUET,
                                f"{len(sessions)} quarantined session(s), totals.quarantined = {totals['quarantined']}")

    def totals(self) -> None:
        t = self.doc.get("totals")
        if not isinstance(t, dict):
            return
        need = ("sessions_in", "sessions_in_shards", "quarantined", "samples")
        if any(not isinstance(t.get(k), int) for k in need):
            self.report.add("bad_totals", DATASET_JSON, f"totals must hold integers {need}")
            return
        if t["sessions_in"] != t["sessions_in_shards"] + t["quarantined"]:
            self.report.add("sessions_accounting", DATASET_JSON,
                            f"sessions_in {t['sessions_in']} != sessions_in_shards {t['sessions_in_shards']} "
                            f"+ quarantined {t['quarantined']}: {t['sessions_in'] - t['sessions_in_shards'] - t['quarantined']}"
                            " session(s) unaccounted for")
        listed = sum(s.get("samples") or 0 for s in self.doc.get("shards", []))
        if t["samples"] != listed:
            self.report.add("totals_samples", DATASET_JSON, f"totals.samples {t['samples']} != {listed} in the shard list")

    # ----------------------------------------------------------- deep

    def deep(self) -> None:
        r = self.report
        rows_by_key = {row["key"]: row for row in self.index}
        seen: set[str] = set()
        session_shard: dict[str, str] = {}
        for entry in self.doc.get("shards", []):
            name = entry.get("name")
            if name not in self.present_shards:
                continue
            count = 0
            last: dict[str, tuple[int, int]] = {}
            try:
                for key, members in iter_samples(storage.join(self.uri, SHARDS_DIR, name)):
                    count += 1
                    seen.add(key)
                    where = f"{name}:{key}"
                    sample = self.sample(where, key, members)
                    if sample is None:
                        continue
                    sid = sample.meta["session_id"]
                    if session_shard.setdefault(sid, name) != name:
                        r.add("session_split", where, f"session {sid} also appears in {session_shard[sid]}")
                    win, start = int(sample.meta["window_index"]), int(sample.meta["start_frame"])
                    if sid in last and (win != last[sid][0] + 1 or start <= last[sid][1]):
                        r.add("non_monotonic", where, f"window {win} at frame {start} follows window "
                                                      f"{last[sid][0]} at frame {last[sid][1]}")
                    last[sid] = (win, start)
                    self.against_index(where, name, key, sample, members, rows_by_key)
            except FormatError as exc:
                r.add(exc.code, name, f"{exc.message} (after {count} sample(s))")
            if count != entry.get("samples"):
                r.add("shard_count", name, f"{count} sample(s) read, dataset.json says {entry.get('samples')}")
        for key, row in rows_by_key.items():
            if key not in seen and row.get("shard") in self.present_shards:
                r.add("index_row_without_sample", INDEX_PARQUET,
                      f"index row {key} points to {row['shard']}, which holds no such sample")

    def against_index(self, where: str, shard: str, key: str, sample: DecodedSample,
                      members: Mapping[str, bytes], rows_by_key: Mapping[str, dict[str, Any]]) -> None:
        row = rows_by_key.get(key)
        if row is None:
            self.report.add("sample_without_index_row", where, "the sample has no row in index.parquet")
            return
        if row.get("shard") != shard:
            self.report.add("index_mismatch", where, f"index says shard {row.get('shard')}, found in {shard}")
        try:
            expected = index_row_from_meta(key, sample.meta, sum(len(b) for b in members.values()))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            self.report.add("bad_meta", where, f"meta.json lacks index fields: {exc}")
            return
        differ = []
        for column, value in expected.items():
            if column in INDEX_OPTIONAL_COLUMNS and column not in row:
                continue  # a corpus built before the column existed
            got = row.get(column)
            if isinstance(value, float) and isinstance(got, float):
                if not np.isclose(value, got, rtol=1e-5, atol=1e-6):
                    differ.append(column)
            elif got != value:
                differ.append(column)
        if differ:
            self.report.add("index_mismatch", where, f"index columns {differ} disagree with the sample")

    def sample(self, where: str, key: str, members: Mapping[str, bytes]) -> Optional[DecodedSample]:
        r = self.report
        if not KEY_RE.fullmatch(key):
            r.add("bad_key", where, "keys hold letters, digits, '_' and '-' only (no dots)")
        unknown = sorted(set(members) - set(self.table))
        if unknown:
            r.add("unknown_member", where, f"members not in the format: {unknown}")
        try:
            sample = decode_sample(members, key, table=self.table, known=self.known)
        except FormatError as exc:
            r.add(exc.code, where, exc.message)
            return None
        r.checked["samples"] += 1
        meta = sample.meta
        if meta.get("format_version") != FORMAT_VERSION:
            r.add("format_version", where, f"meta.format_version {meta.get('format_version')!r}")
        expected_key = f"{meta['session_id']}-{int(meta['window_index']):06d}"
        if expected_key != key:
            r.add("bad_key", where, f"meta says session {meta['session_id']} window {meta['window_index']}")
        self.fingerprints(where, meta)
        self.token_ranges(where, sample)
        self.times(where, sample)
        return sample

    def fingerprints(self, where: str, meta: Mapping[str, Any]) -> None:
        want = {name: t.get("fingerprint") for name, t in self.doc.get("tokenizers", {}).items()}
        got = meta.get("fingerprints", {})
        for name, fp in sorted(want.items()):
            if got.get(name) != fp:
                self.report.add("fingerprint_mismatch", where,
                                f"{name} fingerprint {got.get(name)!r}, dataset.json says {fp!r}")

    def token_ranges(self, where: str, s: DecodedSample) -> None:
        toks = self.doc.get("tokenizers", {})

        def check(member: str, arr: np.ndarray, tokenizer: str) -> None:
            vocab = toks.get(tokenizer, {}).get("vocab_size")
            if not isinstance(vocab, int) or arr.size == 0:
                return
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= vocab:
                bad = np.argwhere((arr < 0) | (arr >= vocab))[0].tolist()
                self.report.add("token_range", where, f"{member} holds tokens in [{lo}, {hi}] (first bad at "
                                                      f"{bad}), {tokenizer} vocab_size is {vocab}")

        for spec in self.table.arrays:
            if spec.tokenizer is not None:
                check(spec.suffix, s.arrays[spec.suffix], spec.tokenizer)
        activity = s.arrays["activity.npy"]
        if activity.size and int(activity.max()) > 1:
            self.report.add("token_range", where, f"activity.npy holds {int(activity.max())}, expected 0/1")

    def times(self, where: str, s: DecodedSample) -> None:
        r = self.report
        F, S = s.num_frames, s.num_streams
        chunks = F // FRAMES_PER_CHUNK
        fc = s.arrays.get("frame_chunks.npy")  # video frames' chunks, where a representation has them
        if fc is not None and fc.size and (np.any(np.diff(fc) <= 0) or fc[0] < 0 or fc[-1] >= chunks):
            r.add("non_monotonic", where, f"frame_chunks must increase strictly within [0, {chunks}), got "
                                          f"{fc[:8].tolist()}{'...' if fc.size > 8 else ''}")
        for label, items, kinds in (("words.json", s.words, None), ("events.json", s.events, EVENT_KINDS)):
            if not isinstance(items, list):
                r.add("bad_json", where, f"{label} is not a list")
                continue
            prev = -1
            for i, item in enumerate(items):
                try:
                    a, b = int(item["start_frame"]), int(item["end_frame"])
                    stream = item.get("stream")
                except (KeyError, TypeError, ValueError, OverflowError):
                    r.add("bad_json", where, f"{label}[{i}] lacks integer start_frame/end_frame")
                    break
                if not 0 <= a <= b <= F:
                    r.add("bad_time", where, f"{label}[{i}] spans [{a}, {b}), outside [0, {F}] or reversed")
                if a < prev:
                    r.add("non_monotonic", where, f"{label}[{i}] starts at {a}, before the previous ({prev})")
                prev = a
                if stream is not None and not (isinstance(stream, int) and 0 <= stream < S):
                    r.add("bad_stream", where, f"{label}[{i}] names stream {stream!r}, the sample has {S}")
                if kinds is not None and item.get("kind") not in kinds:
                    r.add("bad_event", where, f"{label}[{i}] has kind {item.get('kind')!r}")


def validate_dataset(uri: str, deep: bool = False) -> ValidationReport:
    """Check a built dataset; returns a report listing every problem (``report.ok`` when none)."""
    v = _Validator(str(uri), deep)
    v.dataset_json()
    if v.doc:
        v.shards()
        v.index_table()
        v.quarantine_table()
        v.totals()
        if deep:
            v.deep()
    return v.report


def validate_shard(uri: str) -> ValidationReport:
    """Deep-check one shard on its own (no checksums, vocabularies or index). Its members are those the
    dataset.json of the corpus it sits in declares (``<corpus>/shards/<name>.tar``), else format 1's."""
    v = _Validator(uri, True)
    v.table, v.known = _layout_of_shard(uri)
    data = _read(uri)
    if data is None:
        v.report.add("missing_shard", uri, "does not exist")
        return v.report
    try:
        for key, members in iter_tar(io.BytesIO(data), where=uri):
            v.sample(f"{uri}:{key}", key, members)
    except FormatError as exc:
        v.report.add(exc.code, uri, exc.message)
    return v.report


def _layout_of_shard(uri: str) -> tuple[MemberTable, dict[str, int]]:
    """The member table and dimension sizes of the corpus holding the shard; format 1's table when it
    sits in no corpus (or its dataset.json is unreadable: the samples' members then say what differs)."""
    folder, _, _ = uri.rstrip("/").rpartition("/")
    corpus, _, name = folder.rpartition("/")
    if name != SHARDS_DIR or not corpus:
        return MEMBERS, {}
    try:
        doc = read_dataset_json(corpus)
        return member_table_of_dataset(doc), known_dims_of_dataset(doc)
    except FormatError:
        return MEMBERS, {}


__all__ = ["Problem", "ValidationReport", "DatasetInvalid", "validate_dataset", "validate_shard"]
