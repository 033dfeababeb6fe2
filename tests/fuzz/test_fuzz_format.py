"""Fuzzed members of the shard format: ``.npy`` headers, tar headers and meta.json. Each input is read
or refused with ``FormatError``; nothing else escapes, and a read never claims more bytes than it has."""

from __future__ import annotations

import io
import json
import tarfile
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.format import FormatError, META_REQUIRED, decode_npy, decode_sample, iter_tar, iter_tar_members
from microturn.validate import validate_shard
from tests.fuzz.fuzzkit import FUZZ, record

pytestmark = pytest.mark.slow

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=6), inner, max_size=2),
    max_leaves=4,
)

# ---------------------------------------------------------------- .npy headers

DESCR = st.sampled_from(["<i2", "<i4", "|u1", "<f4", ">i8", "|O", "O", "V10", "V9999999999", "<U3", "S5", "<M8[s]",
                         "[('a', '<i4')]", "{'x': 1}", "garbage", "<i0"])
DIM = st.integers(-3, 8) | st.sampled_from([2**31, 2**62, 2**63, 10**30])
SHAPE = st.lists(DIM, max_size=4).map(lambda d: repr(tuple(d))) | st.sampled_from(["[1, 2]", "'x'", "(1.5,)", "()" * 3])
FORTRAN = st.sampled_from(["False", "True", "1", "None", "'no'"])


@st.composite
def npy_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    text = "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (repr(draw(DESCR)), draw(FORTRAN), draw(SHAPE))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["{", "((((" * 300, "{'descr': '<i2'}", text[::-1], text + "\x00"]))
    header = text.encode("latin-1", "replace")
    version = draw(st.sampled_from([1, 1, 2, 3, 0, 255]))
    width = 2 if version == 1 else 4
    header += b" " * (-(len(header) + 7 + width) % 64) + b"\n"
    length = len(header) if draw(st.integers(0, 3)) else draw(st.integers(0, 2**16 - 1))
    prefix = b"\x93NUMPY" + bytes([version, 0]) + min(length, 256**width - 1).to_bytes(width, "little")
    return prefix + header + draw(st.binary(max_size=64))


@FUZZ
@given(data=npy_bytes())
def test_every_npy_is_an_array_within_its_bytes_or_a_format_error(data):
    try:
        arr = decode_npy(data)
    except FormatError as exc:
        record("npy_header", exc.code)
        return
    assert arr.nbytes <= len(data) and not arr.flags.writeable and not arr.dtype.hasobject
    record("npy_header", "ok")


# ---------------------------------------------------------------- tar headers


@lru_cache(maxsize=1)
def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("k1.meta.json", b"{}"), ("k1.codes.npy", bytes(600)), ("a/" + "x" * 120 + ".txt", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SIZE_FIELDS = st.sampled_from([b"77777777777\0", b"\xff" * 12, b"\x80" + bytes(10) + b"\x01", b"-0000000001\0",
                               b"00000000000\0", b"zzzzzzzzzzz\0", b"\x80" + b"\xff" * 11]) | st.binary(min_size=12, max_size=12)


def _fix_checksum(head: bytearray) -> None:
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)


@st.composite
def damaged_tar(draw) -> bytes:
    data = bytearray(_tar())
    block = draw(st.sampled_from([0, 512, 1024, 2048, 2560]))  # a header block of the archive
    for _ in range(draw(st.integers(0, 3))):
        at = block + draw(st.integers(0, 511))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data[block + 124 : block + 136] = draw(SIZE_FIELDS)
    if draw(st.booleans()):
        data[block + 156] = draw(st.sampled_from(b"0123456LKxgSV\0Z"))
    if draw(st.integers(0, 3)):  # most damage keeps a valid checksum, to reach the parser behind it
        head = bytearray(data[block : block + 512])
        _fix_checksum(head)
        data[block : block + 512] = head
    cut = draw(st.none() | st.integers(0, len(data)))
    return bytes(data if cut is None else data[:cut])


class _Stream(io.BytesIO):
    largest = 0

    def read(self, n=-1):
        self.largest = max(self.largest, n)
        return super().read(n)


@FUZZ
@given(data=damaged_tar())
def test_every_tar_is_members_within_its_bytes_or_a_bad_tar(data):
    outcomes = []
    for source in (data, _Stream(data)):
        try:
            members = list(iter_tar_members(source))
            assert sum(len(v) for _, v in members) <= len(data)
            outcomes.append("ok")
        except FormatError as exc:
            outcomes.append(exc.code)
        if isinstance(source, _Stream):
            assert source.largest <= 1 << 22  # reads stay bounded, whatever a size field claims
    assert outcomes[0] == outcomes[1]  # in memory and streamed agree
    try:
        list(iter_tar(io.BytesIO(data)))
    except FormatError:
        pass
    record("tar_header", outcomes[0])


# ---------------------------------------------------------------- meta.json


@lru_cache(maxsize=1)
def _sample():
    from microturn.config import ChunkConfig, EventsConfig
    from tests.factories import random_tokenized_session
    from microturn.pipeline.events import detect_events

    tok = random_tokenized_session("s0", 24000 * 2, seed=3, frame_hw=(4, 4))
    sample = tok.samples(detect_events(tok.activity, EventsConfig()), ChunkConfig(window_chunks=10, hop_chunks=10))[0]
    return sample.key, dict(sample.members), json.loads(sample.members["meta.json"])


@st.composite
def meta_bytes(draw) -> bytes:
    _, _, good = _sample()
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return json.dumps(draw(JSON)).encode()
    meta = dict(good)
    for key in draw(st.lists(st.sampled_from([*META_REQUIRED, "sources", "language"]), max_size=4)):
        if draw(st.integers(0, 4)) == 0:
            meta.pop(key, None)
        else:
            meta[key] = draw(JSON | st.sampled_from([True, -1, 2**70, float("inf"), [1, "a"], {"a": []}]))
    if draw(st.booleans()):  # one level down, where the index and the validator look
        stats = dict(meta["stats"]) if isinstance(meta.get("stats"), dict) else {}
        stats[draw(st.sampled_from(["num_video_frames", "event_counts", "start_s", "word_count"]))] = draw(JSON)
        meta["stats"] = stats
    return json.dumps(meta).encode()


@FUZZ
@given(meta=meta_bytes())
def test_every_meta_json_decodes_or_is_a_format_error_and_the_validator_reports(tmp_path, meta):
    key, members, _ = _sample()
    members = {**members, "meta.json": meta}
    try:
        decode_sample(members, key)
        outcome = "ok"
    except FormatError as exc:
        outcome = exc.code
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard = tmp_path / "s.tar"
    shard.write_bytes(buf.getvalue())
    report = validate_shard(str(shard))  # never raises: a bad meta.json is a problem in the report
    if outcome != "ok":
        assert not report.ok
    record("meta_json", outcome)
