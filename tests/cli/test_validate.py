"""`microturn validate`: exit 0 on a good corpus, 1 with the right problem on corrupted copies."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # needs the built corpus


def _first_shard(corpus):
    return sorted((corpus / "shards").glob("*.tar"))[0]


def test_a_good_corpus_is_valid_fast_and_deep(cli, corpus, index_rows):
    code, out, _ = cli("validate", corpus)
    assert code == 0 and "valid" in out
    code, out, _ = cli("validate", corpus, "--deep", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["problems"] == []
    assert report["checked"]["samples"] == len(index_rows)


def test_a_truncated_tar_is_invalid(cli, corpus_copy):
    shard = _first_shard(corpus_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    code, out, err = cli("validate", corpus_copy)
    assert code == 1
    assert "size_mismatch" in out and shard.name in out
    assert "invalid" in err


def test_a_flipped_byte_is_a_checksum_mismatch(cli, corpus_copy):
    shard = _first_shard(corpus_copy)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    code, out, _ = cli("validate", corpus_copy, "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert any(p["code"] == "checksum_mismatch" and shard.name in p["where"] for p in problems), problems


def test_a_missing_shard_is_named(cli, corpus_copy):
    shard = _first_shard(corpus_copy)
    shard.unlink()
    code, out, _ = cli("validate", f"file://{corpus_copy}")
    assert code == 1
    assert "missing_shard" in out and shard.name in out


def test_one_shard_can_be_checked_on_its_own(cli, corpus):
    code, out, _ = cli("validate", _first_shard(corpus), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
