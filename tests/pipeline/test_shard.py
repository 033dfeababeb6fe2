"""Shards: deterministic tars committed atomically, read back by our reader, by plain WebDataset and by
Ray Data; index, quarantine and dataset.json beside them; resume after the last committed shard."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from microturn.config import ChunkConfig, EventsConfig, ShardConfig
from microturn.errors import FormatError
from microturn.format import decode_sample, iter_samples
from microturn.pipeline.events import detect_events
from microturn.pipeline.shard import ShardSink, finalize_dataset, read_part_summary, write_part, write_quarantine
from microturn.records import Rejection
from microturn.storage import read_parquet
from tests.factories import random_tokenized_session, sample_tar_bytes

CHUNK = ChunkConfig(window_chunks=50, hop_chunks=50)  # 10 s windows keep the tests small
TOKENIZERS = {
    "audio": {"fingerprint": "untrained:0", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}


def session_samples(i: int, seconds: float = 23.0):
    tok = random_tokenized_session(f"sess{i:02d}", int(seconds * 24000) + 1234 * i, seed=i)
    return tok.samples(detect_events(tok.activity, EventsConfig()), CHUNK)


@pytest.fixture(scope="module")
def sessions():
    return [session_samples(i) for i in range(5)]


def build(out: Path, sessions, cfg: ShardConfig = ShardConfig(target_bytes=400_000), rejections=()):
    sink = ShardSink(str(out), cfg)
    for samples in sessions:
        sink.add_session(samples)
    return finalize_dataset(str(out), sink, config_hash="c" * 64, tokenizers=TOKENIZERS,
                            rejections=list(rejections), sessions_in=len(sessions) + len(rejections))


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_our_reader_gets_back_every_sample_in_order(tmp_path, sessions):
    doc = build(tmp_path, sessions)
    keys = [k for s in doc["shards"] for k, _ in iter_samples(str(tmp_path / "shards" / s["name"]))]
    assert keys == [s.key for samples in sessions for s in samples]
    first = sessions[0][0]
    got = dict(iter_samples(str(tmp_path / "shards" / "shard-000000.tar")))[first.key]
    assert got == first.members
    decoded = decode_sample(got, first.key)
    codes = decoded.arrays["codes.npy"]
    assert codes.dtype == np.int16 and codes.shape == (2, 8, 750)


def test_plain_webdataset_decodes_with_standard_handlers(tmp_path, sessions):
    wds = pytest.importorskip("webdataset")
    doc = build(tmp_path, sessions)
    urls = [str(tmp_path / "shards" / s["name"]) for s in doc["shards"]]
    # no microturn import is needed to read: .npy through numpy, .json through json
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None).decode()
    got = list(ds)
    expected = [s for samples in sessions for s in samples]
    assert [g["__key__"] for g in got] == [s.key for s in expected]
    for g, s in zip(got, expected):
        assert set(k for k in g if not k.startswith("__")) == set(s.members)
        assert np.array_equal(g["codes.npy"], decode_sample(s.members, s.key).arrays["codes.npy"])
        assert g["codes.npy"].dtype == np.int16 and g["text.npy"].dtype == np.int32
        assert g["meta.json"]["session_id"] == s.index_row["session_id"]
        assert isinstance(g["events.json"], list)


@pytest.mark.slow  # starting Ray takes ~20 s on 2 cores
def test_ray_data_reads_the_shards(tmp_path, sessions):
    ray = pytest.importorskip("ray")
    doc = build(tmp_path, sessions[:2])
    urls = [str(tmp_path / "shards" / s["name"]) for s in doc["shards"]]
    ray.init(address="local", num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        rows = ray.data.read_webdataset(urls, override_num_blocks=1).take_all()
    finally:
        ray.shutdown()
    expected = [s for samples in sessions[:2] for s in samples]
    assert sorted(r["__key__"] for r in rows) == sorted(s.key for s in expected)
    row = next(r for r in rows if r["__key__"] == expected[0].key)
    assert np.array_equal(np.asarray(row["activity.npy"]), decode_sample(expected[0].members).arrays["activity.npy"])


def test_two_builds_give_byte_identical_files(tmp_path, sessions):
    build(tmp_path / "a", sessions)
    build(tmp_path / "b", sessions)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == b.keys() and "dataset.json" in a and "index.parquet" in a
    assert [k for k in a if a[k] != b[k]] == []


def test_tar_headers_are_normalised_and_members_in_format_order(sessions):
    data = sample_tar_bytes(sessions[0][:1])
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    assert [i.name.split(".", 1)[1] for i in infos] == ["meta.json", "codes.npy", "activity.npy", "text.npy",
                                                         "words.json", "frames.npy", "frame_chunks.npy",
                                                         "events.json"]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}


def test_long_session_ids_survive_the_tar(tmp_path):
    tok = random_tokenized_session("x" * 120, 24000 * 3, seed=1)
    samples = tok.samples([], CHUNK)
    write_part(str(tmp_path / "p.tar"), samples)
    assert [k for k, _ in iter_samples(str(tmp_path / "p.tar"))] == [s.key for s in samples]


def test_a_part_is_written_from_samples_made_one_at_a_time(tmp_path):
    from microturn.pipeline.chunk import make_samples

    tok = random_tokenized_session("s", 24000 * 30, seed=2)
    made = make_samples(tok.header, tok.timeline, tok.tokens, [], CHUNK)
    assert not isinstance(made, list)  # a generator: the writer holds one sample at a time
    streamed = write_part(str(tmp_path / "a.tar"), made)
    listed = write_part(str(tmp_path / "b.tar"), tok.samples([], CHUNK))
    assert streamed.tar_sha256 == listed.tar_sha256 and streamed.rows == listed.rows and len(listed.rows) > 1
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_dataset_json_records_checksums_and_totals(tmp_path, sessions):
    doc = build(tmp_path, sessions, rejections=[Rejection("broken", "/in/broken.mp4", "probe", "no_audio_stream",
                                                          "no audio stream")])
    for s in doc["shards"]:
        data = (tmp_path / "shards" / s["name"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)
    t = doc["totals"]
    assert (t["sessions_in"], t["sessions_in_shards"], t["quarantined"]) == (6, 5, 1)
    assert t["samples"] == sum(len(x) for x in sessions) == sum(s["samples"] for s in doc["shards"])
    assert json.loads((tmp_path / "dataset.json").read_text()) == doc


def test_index_has_one_row_per_sample_with_its_shard(tmp_path, sessions):
    doc = build(tmp_path, sessions)
    rows = read_parquet(tmp_path / "index.parquet").to_pylist()
    assert [r["key"] for r in rows] == [s.key for x in sessions for s in x]
    in_shards = {k: s["name"] for s in doc["shards"] for k, _ in iter_samples(str(tmp_path / "shards" / s["name"]))}
    assert all(in_shards[r["key"]] == r["shard"] for r in rows)
    last = rows[len(sessions[0]) - 1]
    assert last["valid_frames"] < last["num_frames"]  # the padded tail window is kept


def test_shards_roll_only_at_session_boundaries(tmp_path, sessions):
    doc = build(tmp_path, sessions, ShardConfig(target_bytes=1))  # every session closes a shard
    assert [s["sessions"] for s in doc["shards"]] == [1] * len(sessions)
    doc = build(tmp_path / "m", sessions, ShardConfig(target_bytes=10**9, max_samples=4))
    assert [s["samples"] for s in doc["shards"]] == [6, 6, 3]  # 3 windows per session, whole sessions


def test_quarantine_is_written_with_its_schema_even_when_empty(tmp_path):
    write_quarantine(str(tmp_path), [])
    table = read_parquet(tmp_path / "quarantine.parquet")
    assert table.num_rows == 0
    assert table.column_names == ["session_id", "source", "stage", "reason", "message"]


def test_a_shard_is_invisible_until_committed_and_an_abort_leaves_nothing(tmp_path, sessions):
    sink = ShardSink(str(tmp_path), ShardConfig(target_bytes=10**9))
    sink.add_session(sessions[0])
    shard_dir = tmp_path / "shards"
    assert not (shard_dir / "shard-000000.tar").exists()
    assert [p.name for p in shard_dir.iterdir() if ".tmp-" in p.name]  # being written under a temporary name
    sink.abort()
    assert list(shard_dir.iterdir()) == []


def test_resume_after_a_crash_writes_the_same_bytes(tmp_path, sessions):
    cfg = ShardConfig(target_bytes=400_000)
    full = build(tmp_path / "full", sessions, cfg)
    assert len(full["shards"]) >= 2

    out = tmp_path / "crashed"
    sink = ShardSink(str(out), cfg)
    pending = iter(sessions)
    while not sink.committed:
        sink.add_session(next(pending))
    sink.add_session(next(pending))  # lands in shard 1, still being written when the job "crashes"
    assert len(sink.committed) == 1
    del sink  # never closed: shard 1 stays a temporary file

    resumed = ShardSink.resume(str(out), cfg, verify=True)
    assert resumed.next_index == 1
    done = resumed.sessions_committed
    for samples in sessions:
        if samples[0].index_row["session_id"] not in done:
            resumed.add_session(samples)
    finalize_dataset(str(out), resumed, config_hash="c" * 64, tokenizers=TOKENIZERS, rejections=[],
                     sessions_in=len(sessions))
    a, b = files(tmp_path / "full"), files(out)
    assert {k for k in b if ".tmp-" not in k} == set(a)
    assert [k for k in a if a[k] != b[k]] == []


def test_resume_discards_a_shard_whose_marker_is_missing(tmp_path, sessions):
    cfg = ShardConfig(target_bytes=1)
    build(tmp_path, sessions[:3], cfg)
    (tmp_path / "shards" / "shard-000002.json").unlink()  # crash between the tar rename and its marker
    sink = ShardSink.resume(str(tmp_path), cfg)
    assert sink.next_index == 2 and sink.sessions_committed == {"sess00", "sess01"}
    assert not (tmp_path / "shards" / "shard-000002.tar").exists()
    assert len(sink.rows) == len(sessions[0]) + len(sessions[1])


def test_a_session_cannot_be_written_twice(tmp_path, sessions):
    sink = ShardSink(str(tmp_path), ShardConfig())
    sink.add_session(sessions[0])
    with pytest.raises(ValueError, match="already written"):
        sink.add_session(sessions[0])
    sink.abort()


def test_a_session_of_mixed_samples_is_refused(tmp_path, sessions):
    sink = ShardSink(str(tmp_path), ShardConfig())
    with pytest.raises(ValueError, match="more than one session"):
        sink.add_session([sessions[0][0], sessions[1][0]])
    sink.abort()


def test_parts_keep_their_index_rows_and_byte_range(tmp_path, sessions):
    part = tmp_path / "_work" / "sess00.tar"
    summary = write_part(str(part), sessions[0])
    assert read_part_summary(str(part)) == summary
    assert [r["key"] for r in summary.rows] == [s.key for s in sessions[0]]
    assert [dict(r) for r in summary.rows] == [s.index_row for s in sessions[0]]
    data = part.read_bytes()
    assert summary.tar_bytes == len(data) and summary.tar_sha256 == hashlib.sha256(data).hexdigest()
    assert data[summary.samples_bytes:].strip(b"\0") == b""  # after the samples: only the end-of-archive
    assert [(k, m) for k, m in iter_samples(str(part))] == [(s.key, s.members) for s in sessions[0]]


def test_shards_from_parts_are_the_shards_from_samples(tmp_path, sessions):
    """The sink copies a part's bytes as they are: the same shards, markers and index as tarring anew."""
    cfg = ShardConfig(target_bytes=400_000)
    build(tmp_path / "samples", sessions, cfg)
    sink = ShardSink(str(tmp_path / "parts"), cfg)
    for samples in sessions:
        part = tmp_path / "work" / f"{samples[0].index_row['session_id']}.tar"
        write_part(str(part), samples)
        sink.add_part(str(part))
    finalize_dataset(str(tmp_path / "parts"), sink, config_hash="c" * 64, tokenizers=TOKENIZERS, rejections=[],
                     sessions_in=len(sessions))
    a, b = files(tmp_path / "samples"), files(tmp_path / "parts")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_an_empty_part_adds_nothing_and_a_truncated_one_is_refused(tmp_path, sessions):
    write_part(str(tmp_path / "empty.tar"), [])
    write_part(str(tmp_path / "short.tar"), sessions[0])
    (tmp_path / "short.tar").write_bytes((tmp_path / "short.tar").read_bytes()[:1000])
    sink = ShardSink(str(tmp_path / "out"), ShardConfig())
    sink.add_part(str(tmp_path / "empty.tar"))
    assert sink.close() == []
    sink = ShardSink(str(tmp_path / "out2"), ShardConfig())
    with pytest.raises(FormatError, match="truncated_part|before its samples"):
        sink.add_part(str(tmp_path / "short.tar"))
    sink.abort()
