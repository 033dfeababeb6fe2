"""The sample format: member names, dtypes and shapes, canonical encoding, and our reader."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.format import (
    MEMBERS,
    FormatError,
    MemberSpec,
    decode_json,
    decode_sample,
    encode_json,
    encode_sample,
    iter_dataset,
    iter_tar,
    known_dims_of_dataset,
    member_table,
    member_table_from_json,
    member_table_of_dataset,
    sample_key,
    split_member_name,
)
from microturn.format.members import DEFAULT_REPRESENTATION_MEMBERS
from tests.factories import sample_tar_bytes


def arrays(S=2, K=8, F=150, N=3):
    rng = np.random.default_rng(0)
    return {
        "codes.npy": rng.integers(0, 1024, (S, K, F), dtype=np.int16),
        "activity.npy": (rng.random((S, F)) > 0.5).astype(np.uint8),
        "text.npy": rng.integers(0, 260, (S, F), dtype=np.int32),
        "frames.npy": rng.integers(0, 1000, (N, 4, 4), dtype=np.int16),
        "frame_chunks.npy": np.arange(N, dtype=np.int32) * 2,
    }


def meta(F=150, valid=140):
    return {
        "session_id": "abc", "window_index": 3, "start_frame": 450, "start_sample": 450 * 320,
        "num_frames": F, "valid_frames": valid, "speakers": ["A", "B"],
        "fingerprints": {"audio": "a", "frames": "f", "text": "t"},
        "stats": {"start_s": 6.0, "duration_s": 140 / 75, "session_duration_s": 10.0, "num_video_frames": 3,
                  "speech_ratio": 0.5, "overlap_ratio": 0.1, "word_count": 1, "event_counts": {}},
    }


def encoded(table=MEMBERS, extra_arrays=None, **overrides):
    a = arrays()
    a.update(overrides.pop("arrays", {}))
    a.update(extra_arrays or {})
    return encode_sample(meta={**meta(), **overrides}, words=[{"text": "hi", "stream": 0, "start_frame": 1,
                                                               "end_frame": 9, "timing": "source"}],
                         events=[{"kind": "turn", "start_frame": 0, "end_frame": 9, "stream": 0, "other": None}],
                         arrays=a, table=table)


def test_a_sample_round_trips_with_its_dtypes_and_shapes():
    members = encoded()
    assert list(members) == list(MEMBERS)
    s = decode_sample(members, "abc-000003")
    a = arrays()
    assert list(s.arrays) == list(a)
    for suffix, want in a.items():
        assert s.arrays[suffix].dtype == want.dtype and np.array_equal(s.arrays[suffix], want)
    assert s.num_streams == 2 and s.num_frames == 150
    assert s.meta["format_version"] == 1 and s.words[0]["text"] == "hi" and s.events[0]["kind"] == "turn"


def test_the_default_table_keeps_the_tar_order_of_format_1():
    # tars written before the table was split must stay byte-identical: same members, same order
    assert list(MEMBERS) == ["meta.json", "codes.npy", "activity.npy", "text.npy", "words.json", "frames.npy",
                             "frame_chunks.npy", "events.json"]


def test_members_need_no_microturn_to_read():
    members = encoded()
    assert np.load(io.BytesIO(members["codes.npy"]), allow_pickle=False).shape == (2, 8, 150)
    assert json.loads(members["meta.json"])["valid_frames"] == 140


def test_wrong_dtypes_are_refused_not_cast():
    with pytest.raises(FormatError, match="codes.npy must be int16"):
        encoded(arrays={"codes.npy": np.zeros((2, 8, 150), np.int64)})


def test_shapes_must_agree_with_the_grid():
    with pytest.raises(FormatError, match=r"activity.npy has shape \(2, 149\), the grid implies \(2, 150\)"):
        encoded(arrays={"activity.npy": np.zeros((2, 149), np.uint8)})
    with pytest.raises(FormatError, match="not a whole number of 15-frame chunks"):
        encoded(arrays={k: v[..., :140] for k, v in arrays().items() if k in ("codes.npy", "activity.npy", "text.npy")},
                num_frames=140, valid_frames=100)
    with pytest.raises(FormatError, match="valid_frames 0 outside"):
        encoded(valid_frames=0)


def test_a_symbol_must_agree_across_the_members_that_use_it():
    with pytest.raises(FormatError) as err:
        encoded(arrays={"frame_chunks.npy": np.arange(4, dtype=np.int32)})
    assert err.value.code == "bad_shape" and "frame_chunks.npy has shape (4,), the grid implies (3,)" in err.value.message


def test_known_sizes_from_dataset_json_are_checked():
    members = encoded()
    assert decode_sample(members, "k", known={"K": 8, "H": 4, "W": 4}).num_frames == 150
    with pytest.raises(FormatError) as err:
        decode_sample(members, "k", known={"K": 4})
    assert err.value.code == "bad_shape" and "codes.npy" in err.value.message and "K=4" in err.value.message
    doc = {"tokenizers": {"audio": {"codebooks": 8}, "frames": {"grid": [4, 4]}, "text": {}}}
    assert known_dims_of_dataset(doc) == {"K": 8, "H": 4, "W": 4}
    assert known_dims_of_dataset({"tokenizers": {"audio": {"codebooks": True}}}) == {}


MEL = MemberSpec("mel.npy", "npy", "uint8", ("S", "M", "F"), "discretized log-mel channels", 15, tokenizer="mel")


def test_a_representation_adds_members_that_the_writer_and_reader_follow():
    table = member_table((*DEFAULT_REPRESENTATION_MEMBERS, MEL))
    mel = np.ones((2, 80, 150), np.uint8)
    members = encoded(table=table, extra_arrays={"mel.npy": mel})
    assert list(members)[:3] == ["meta.json", "codes.npy", "mel.npy"]  # by order, then suffix
    s = decode_sample(members, "k", table=table)
    assert np.array_equal(s.arrays["mel.npy"], mel)
    with pytest.raises(FormatError) as err:
        encoded(table=table, extra_arrays={"mel.npy": np.ones((2, 80, 140), np.uint8)})
    assert err.value.code == "bad_shape"
    with pytest.raises(FormatError) as err:
        encoded(table=table)  # the table asks for mel.npy
    assert err.value.code == "missing_member"
    with pytest.raises(FormatError) as err:
        encoded(extra_arrays={"mel.npy": mel})  # the default table does not know it
    assert err.value.code == "unknown_member"


def test_a_table_is_refused_when_it_is_inconsistent():
    for bad in (lambda: member_table((*DEFAULT_REPRESENTATION_MEMBERS, DEFAULT_REPRESENTATION_MEMBERS[0])),
                lambda: member_table((MemberSpec("notes.json", "json", None, (), "", 5),)),
                lambda: MemberSpec("mel.npy", "npy", "object", ("S",), "", 1),
                lambda: MemberSpec("mel.npy", "npy", "uint8", ("mel",), "", 1),
                lambda: MemberSpec("a.b.npy", "npy", "uint8", ("S",), "", 1)):
        with pytest.raises(FormatError) as err:
            bad()
        assert err.value.code == "bad_member_spec"


def test_dataset_json_may_declare_its_members():
    assert member_table_of_dataset({}) is MEMBERS  # corpora built before the list existed
    table = member_table((*DEFAULT_REPRESENTATION_MEMBERS, MEL))
    doc = json.loads(json.dumps({"members": table.to_json()}))
    assert member_table_of_dataset(doc) == table and list(member_table_of_dataset(doc)) == list(table)
    assert member_table_from_json(MEMBERS.to_json())["meta.json"] == MEMBERS["meta.json"]
    for members in ("codes.npy", [{"suffix": "codes.npy"}], MEMBERS.to_json()[1:],
                    [*MEMBERS.to_json(), {**MEMBERS.to_json()[1], "dims": "SKF"}]):
        with pytest.raises(FormatError) as err:
            member_table_of_dataset({"members": members})
        assert err.value.code == "bad_dataset_json", members


def test_decoding_reports_a_missing_member_and_a_bad_array():
    members = encoded()
    with pytest.raises(FormatError, match="missing words.json"):
        decode_sample({k: v for k, v in members.items() if k != "words.json"}, "k")
    with pytest.raises(FormatError) as err:
        decode_sample({**members, "text.npy": b"\x93NUMPY garbage"}, "k")
    assert err.value.code == "bad_npy"


def test_json_is_canonical():
    assert encode_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})


def test_keys_hold_no_dots():
    assert sample_key("sess_1-a", 12) == "sess_1-a-000012"
    with pytest.raises(FormatError):
        sample_key("bad.id", 0)
    assert split_member_name("x/abc-000001.frame_chunks.npy") == ("x/abc-000001", "frame_chunks.npy")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True), st.integers(0, 999)),
                min_size=1, max_size=5, unique=True))
def test_the_reader_groups_members_into_samples_in_order(ids):
    from microturn.records import Sample

    samples = [Sample(key=sample_key(s, w), members={"meta.json": s.encode(), "x.npy": bytes(w % 7)},
                      index_row={}) for s, w in ids]
    got = list(iter_tar(io.BytesIO(sample_tar_bytes(samples))))
    assert got == [(s.key, s.members) for s in samples]


def test_a_truncated_tar_is_a_format_error():
    from microturn.records import Sample

    data = sample_tar_bytes([Sample("k-000000", {"meta.json": b"x" * 5000}, {})])
    with pytest.raises(FormatError) as err:
        list(iter_tar(io.BytesIO(data[:1500])))
    assert err.value.code == "bad_tar"


def test_reading_datasets_with_different_tokenizers_needs_allow_mixed(tmp_path):
    from microturn.config import ChunkConfig, ShardConfig
    from tests.factories import random_tokenized_session
    from microturn.pipeline.shard import ShardSink, finalize_dataset

    def build(out, fp):
        tok = random_tokenized_session("s", 24000 * 4, seed=0)
        sink = ShardSink(str(out), ShardConfig())
        sink.add_session(tok.samples([], ChunkConfig(window_chunks=10, hop_chunks=10)))
        toks = {"audio": {"fingerprint": fp, "vocab_size": 1024}, "frames": {"fingerprint": "untrained:0",
                "vocab_size": 1000}, "text": {"fingerprint": "bytes:v1", "vocab_size": 260}}
        finalize_dataset(str(out), sink, config_hash="h", tokenizers=toks, rejections=[], sessions_in=1)

    build(tmp_path / "a", "untrained:0")
    build(tmp_path / "b", "encodec:d7cc33bc")
    assert len(list(iter_dataset(str(tmp_path / "a")))) == 2
    with pytest.raises(FormatError, match="mixed_fingerprints"):
        list(iter_dataset([str(tmp_path / "a"), str(tmp_path / "b")]))
    # dataset b's samples carry the fingerprint they were really tokenized with: refused on their own too
    with pytest.raises(FormatError, match="sample fingerprints"):
        list(iter_dataset(str(tmp_path / "b")))
    assert len(list(iter_dataset([str(tmp_path / "a"), str(tmp_path / "b")], allow_mixed=True))) == 4


@pytest.mark.parametrize("data", [b"[" * 100_000, b"9" * 5000, b'{"a": NaN, "b": ' + b"[" * 5000])
def test_deep_huge_or_broken_json_is_a_format_error(data):
    with pytest.raises(FormatError) as err:
        decode_json(data)
    assert err.value.code == "bad_json"


@pytest.mark.parametrize("field, value", [("window_index", "3"), ("num_frames", True), ("speakers", "AB"),
                                          ("speakers", ["A", 2]), ("fingerprints", []), ("stats", None),
                                          ("session_id", 7)])
def test_meta_fields_of_the_wrong_type_are_bad_meta(field, value):
    members = encoded()
    members["meta.json"] = json.dumps({**meta(), "format_version": 1, field: value}).encode()
    with pytest.raises(FormatError) as err:
        decode_sample(members, "abc-000003")
    assert err.value.code == "bad_meta" and field in err.value.message
