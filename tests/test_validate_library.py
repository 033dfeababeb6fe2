"""The validator finds every kind of damage, names it specifically, and reports all problems at once."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from microturn.config import ChunkConfig, EventsConfig, ShardConfig
from microturn.format import decode_sample, encode_sample
from tests.factories import random_tokenized_session
from microturn.pipeline.events import detect_events
from microturn.pipeline.shard import ShardSink, finalize_dataset
from microturn.records import Rejection, Sample
from microturn.storage import read_parquet
from microturn.validate import DatasetInvalid, validate_dataset, validate_shard

TOKENIZERS = {
    "audio": {"fingerprint": "untrained:0", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}
CHUNK = ChunkConfig(window_chunks=20, hop_chunks=20)


def session(i: int) -> list[Sample]:
    tok = random_tokenized_session(f"s{i}", 24000 * 9 + 500 * i, seed=i)
    return tok.samples(detect_events(tok.activity, EventsConfig()), CHUNK)


def rebuild(sample: Sample, **arrays) -> Sample:
    """The same sample re-encoded with some arrays replaced (bypassing encode_sample's checks
    where the replacement is deliberately wrong)."""
    members = dict(sample.members)
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        members[f"{name}.npy"] = buf.getvalue()
    return Sample(sample.key, members, {**sample.index_row, "bytes": sum(map(len, members.values()))})


def build(out: Path, sessions: list[list[Sample]], rejections=()) -> dict:
    sink = ShardSink(str(out), ShardConfig(target_bytes=1))  # one session per shard
    for samples in sessions:
        sink.add_session(samples)
    return finalize_dataset(str(out), sink, config_hash="h" * 64, tokenizers=TOKENIZERS,
                            rejections=list(rejections), sessions_in=len(sessions) + len(rejections))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good")
    build(out, [session(i) for i in range(3)], [Rejection("bad", "/in/bad.mp4", "probe", "no_audio_stream", "x")])
    return out


@pytest.fixture
def copy(good, tmp_path) -> Path:
    shutil.copytree(good, tmp_path / "ds")
    return tmp_path / "ds"


def problems(report) -> list[tuple[str, str]]:
    return [(p.code, p.where) for p in report.problems]


@pytest.mark.parametrize("deep", [False, True])
def test_a_good_dataset_passes(good, deep):
    report = validate_dataset(str(good), deep=deep)
    assert report.ok, report.problems
    assert report.checked["shards"] == 3 and report.checked["index_rows"] == 9
    assert report.checked["samples"] == (9 if deep else 0)
    report.raise_for_problems()
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


@pytest.mark.parametrize("deep", [False, True])
def test_a_corpus_built_before_the_bleed_columns_still_validates(copy, deep):
    """Format 1 corpora written before index.parquet gained session_overlap_ratio and
    activity_correlation stay valid: those columns are checked only where present."""
    import hashlib

    import pyarrow.parquet as pq

    index = copy / "index.parquet"
    table = read_parquet(index).drop_columns(["session_overlap_ratio", "activity_correlation"])
    pq.write_table(table, index)
    doc = json.loads((copy / "dataset.json").read_text())
    doc["files"]["index"]["sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
    if "bytes" in doc["files"]["index"]:
        doc["files"]["index"]["bytes"] = index.stat().st_size
    (copy / "dataset.json").write_text(json.dumps(doc))
    report = validate_dataset(str(copy), deep=deep)
    assert report.ok, report.problems


def test_a_truncated_shard(copy):
    p = copy / "shards" / "shard-000001.tar"
    p.write_bytes(p.read_bytes()[:5000])
    report = validate_dataset(str(copy))
    assert ("size_mismatch", "shard-000001.tar") in problems(report)
    assert any("truncated" in p.message for p in report.problems)
    deep = validate_dataset(str(copy), deep=True)
    assert ("bad_tar", "shard-000001.tar") in problems(deep)


def test_one_flipped_byte(copy):
    p = copy / "shards" / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    data[3000] ^= 0x01  # inside codes.npy's payload: still a valid tar, still decodable
    p.write_bytes(bytes(data))
    report = validate_dataset(str(copy))
    assert problems(report) == [("checksum_mismatch", "shard-000000.tar")]


def test_a_missing_shard(copy):
    (copy / "shards" / "shard-000002.tar").unlink()
    report = validate_dataset(str(copy), deep=True)
    assert ("missing_shard", "shard-000002.tar") in problems(report)
    assert "does not exist" in report.problems[0].message
    with pytest.raises(DatasetInvalid, match="missing_shard"):
        report.raise_for_problems()


def test_a_sample_with_a_wrong_shape(tmp_path):
    sessions = [session(0), session(1)]
    s = sessions[1][1]
    sessions[1][1] = rebuild(s, activity=np.zeros((2, 299), np.uint8))
    build(tmp_path, sessions)
    assert validate_dataset(str(tmp_path)).ok  # checksums are right: only a deep look sees it
    report = validate_dataset(str(tmp_path), deep=True)
    bad = [p for p in report.problems if p.code == "bad_shape"]
    assert [p.where for p in bad] == [f"shard-000001.tar:{s.key}"]
    assert "activity.npy has shape (2, 299), the grid implies (2, 300)" in bad[0].message


def test_an_out_of_range_token(tmp_path):
    sessions = [session(0)]
    s = sessions[0][0]
    codes = decode_sample(s.members).arrays["codes.npy"].copy()
    codes[1, 3, 17] = 1024  # the audio vocabulary is 0..1023
    sessions[0][0] = rebuild(s, codes=codes)
    build(tmp_path, sessions)
    report = validate_dataset(str(tmp_path), deep=True)
    assert problems(report) == [("token_range", f"shard-000000.tar:{s.key}")]
    assert "codes.npy holds tokens in [0, 1024] (first bad at [1, 3, 17]), audio vocab_size is 1024" in \
        report.problems[0].message


def test_shapes_are_checked_against_the_sizes_dataset_json_states(copy):
    doc = json.loads((copy / "dataset.json").read_text())
    doc["tokenizers"]["audio"]["codebooks"] = 4
    (copy / "dataset.json").write_text(json.dumps(doc))
    report = validate_dataset(str(copy), deep=True)
    assert report.codes() == {"bad_shape"} and len(report.problems) == 9  # every sample
    assert "codes.npy has shape (2, 8, 300), the grid implies (2, 4, 300) (S=2, K=4, F=300)" in \
        report.problems[0].message


def test_samples_are_checked_against_the_members_dataset_json_declares(copy):
    from microturn.format import DEFAULT_REPRESENTATION_MEMBERS, MemberSpec, member_table

    mel = MemberSpec("mel.npy", "npy", "uint8", ("S", "M", "F"), "log-mel bins", 15)
    doc = json.loads((copy / "dataset.json").read_text())
    doc["members"] = member_table((*DEFAULT_REPRESENTATION_MEMBERS, mel)).to_json()
    (copy / "dataset.json").write_text(json.dumps(doc))
    report = validate_dataset(str(copy), deep=True)
    assert report.codes() == {"missing_member"} and "missing mel.npy" in report.problems[0].message
    doc["members"] = doc["members"][1:]  # without meta.json
    (copy / "dataset.json").write_text(json.dumps(doc))
    assert ("bad_dataset_json", "dataset.json") in problems(validate_dataset(str(copy)))


def test_an_index_row_without_a_sample(copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_parquet(copy / "index.parquet")
    rows = table.to_pylist()
    rows.append({**rows[0], "key": "s0-000099"})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), copy / "index.parquet")
    fast = validate_dataset(str(copy))
    assert {"index_checksum", "index_count", "index_shard_count"} <= {c for c, _ in problems(fast)}
    deep = validate_dataset(str(copy), deep=True)
    assert ("index_row_without_sample", "index.parquet") in problems(deep)
    msg = next(p.message for p in deep.problems if p.code == "index_row_without_sample")
    assert msg == "index row s0-000099 points to shard-000000.tar, which holds no such sample"


def test_all_problems_are_reported_not_just_the_first(copy):
    (copy / "shards" / "shard-000002.tar").unlink()
    p = copy / "shards" / "shard-000000.tar"
    p.write_bytes(p.read_bytes()[:-10240])
    doc = json.loads((copy / "dataset.json").read_text())
    doc["totals"]["sessions_in"] += 1
    (copy / "dataset.json").write_text(json.dumps(doc))
    report = validate_dataset(str(copy), deep=True)
    codes = {c for c, _ in problems(report)}
    assert {"missing_shard", "size_mismatch", "checksum_mismatch", "sessions_accounting"} <= codes


def test_sessions_in_must_equal_sessions_in_shards_plus_quarantined(copy):
    doc = json.loads((copy / "dataset.json").read_text())
    doc["totals"]["sessions_in"] = 7
    (copy / "dataset.json").write_text(json.dumps(doc))
    report = validate_dataset(str(copy))
    assert problems(report) == [("sessions_accounting", "dataset.json")]
    assert "3 session(s) unaccounted for" in report.problems[0].message


def test_samples_with_another_tokenizer_fingerprint(tmp_path):
    sessions = [session(0)]
    s = sessions[0][0]
    d = decode_sample(s.members)
    members = encode_sample(meta={**d.meta, "fingerprints": {**d.meta["fingerprints"], "audio": "encodec:x"}},
                            arrays=d.arrays, words=d.words, events=d.events)
    sessions[0][0] = Sample(s.key, members, {**s.index_row, "bytes": sum(map(len, members.values()))})
    build(tmp_path, sessions)
    report = validate_dataset(str(tmp_path), deep=True)
    assert problems(report) == [("fingerprint_mismatch", f"shard-000000.tar:{s.key}")]


def test_missing_dataset_json_and_unlisted_files(copy):
    (copy / "shards" / "shard-000009.tar").write_bytes(b"")
    assert ("unlisted_shard", "shard-000009.tar") in problems(validate_dataset(str(copy)))
    (copy / "dataset.json").unlink()
    assert problems(validate_dataset(str(copy))) == [("missing_dataset_json", "dataset.json")]


def test_a_single_shard_can_be_checked_alone(good):
    assert validate_shard(str(good / "shards" / "shard-000000.tar")).ok


def _edit_doc(copy: Path, **changes) -> None:
    doc = json.loads((copy / "dataset.json").read_text())
    doc.update(changes)
    (copy / "dataset.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("changes", [
    {"shards": "shard-000000.tar"},
    {"shards": [1, None, {"name": 5}, {"name": "../x.tar"}, {"name": "a\u0000b"}]},
    {"shards": [{"name": "shard-000000.tar", "bytes": "12", "samples": 1.5, "sha256": []}]},
    {"tokenizers": []},
    {"tokenizers": {"audio": "x", "frames": None, "text": 3}},
    {"totals": [1, 2]},
    {"files": {"index": "abc"}},
    {"files": 7},
])
@pytest.mark.parametrize("deep", [False, True])
def test_odd_dataset_json_entries_are_reported_not_a_crash(copy, changes, deep):
    _edit_doc(copy, **changes)
    report = validate_dataset(str(copy), deep=deep)
    assert not report.ok
    assert "bad_dataset_json" in report.codes() or "missing_tokenizer" in report.codes(), report.problems


def test_the_duplicate_key_check_is_linear(copy):
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_parquet(copy / "index.parquet")
    first = table.to_pylist()[0]
    n = 60_000  # a check that counts each key's copies with a scan takes minutes here
    rows = [{**first, "key": f"k{i}"} for i in range(n)] + [{**first, "key": "k7"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), copy / "index.parquet")
    t0 = time.perf_counter()
    report = validate_dataset(str(copy))
    assert time.perf_counter() - t0 < 20
    assert [p.message for p in report.problems if p.code == "duplicate_key"] == ["key k7 appears more than once"]


def test_index_columns_of_the_wrong_type_are_a_schema_problem(copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_parquet(copy / "index.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "key": [r["key"]]} for r in rows]), copy / "index.parquet")
    assert "index_schema" in validate_dataset(str(copy), deep=True).codes()


def _retar(src: Path, dst: Path, rename=lambda name: name, edit=lambda name, data: data) -> None:
    import tarfile

    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tout:
        for info in tin.getmembers():
            data = edit(info.name, tin.extractfile(info).read())
            new = tarfile.TarInfo(rename(info.name))
            new.size = len(data)
            tout.addfile(new, io.BytesIO(data))


def test_keys_must_match_in_full(good, tmp_path):
    # re.match with "$" accepts a key ending in a newline
    src = good / "shards" / "shard-000000.tar"
    _retar(src, tmp_path / "s.tar", rename=lambda n: n.replace("-000000.", "-000000\n.") if "s0-000000." in n else n)
    report = validate_shard(str(tmp_path / "s.tar"))
    assert any(p.code == "bad_key" and "letters, digits" in p.message for p in report.problems), report.problems


@pytest.mark.parametrize("meta_edit", [
    lambda m: {**m, "window_index": "0"},
    lambda m: {**m, "fingerprints": ["a"]},
    lambda m: {**m, "stats": {**m["stats"], "event_counts": [1]}},
    lambda m: {**m, "stats": {**m["stats"], "num_video_frames": float("inf")}},
])
def test_meta_json_of_odd_types_is_a_problem_not_a_crash(copy, meta_edit):
    shard = copy / "shards" / "shard-000000.tar"

    def edit(name: str, data: bytes) -> bytes:
        return json.dumps(meta_edit(json.loads(data))).encode() if name.endswith("s0-000000.meta.json") else data

    _retar(shard, copy / "t.tar", edit=edit)
    (copy / "t.tar").replace(shard)
    report = validate_dataset(str(copy), deep=True)
    where = "shard-000000.tar:s0-000000"
    assert any(p.where == where and p.code == "bad_meta" for p in report.problems), report.problems


def test_a_process_that_reads_a_table_exits_cleanly(tmp_path: Path) -> None:
    """Read through Arrow's thread pool from a Python file object, a table read by pyarrow 26 aborted the
    process at exit 6 times in 10 ("terminate called without an active exception", exit 134), after the
    work was done: `microturn validate` and `make demo` failed now and then. The project's one reader
    reads on the calling thread."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"key": f"k{i}", "shard": "s-000000.tar", "x": i / 3} for i in range(30)]),
                   tmp_path / "index.parquet")
    script = ("import io, sys\nfrom microturn.storage import read_parquet\n"
              "table = read_parquet(io.BytesIO(open(sys.argv[1], 'rb').read()))\nassert table.num_rows == 30\n")
    codes = [subprocess.run([sys.executable, "-c", script, str(tmp_path / "index.parquet")], capture_output=True).returncode
             for _ in range(10)]
    assert codes == [0] * 10
