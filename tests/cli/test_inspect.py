"""`microturn inspect`: shard and sample tables whose figures agree with dataset.json and the index."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # needs the built corpus (an embedded Ray build, once per session)


def _by_shard(rows):
    out = {}
    for r in rows:
        out.setdefault(r["shard"], []).append(r)
    return out


def test_corpus_json_lists_every_shard_with_index_counts_and_good_checksums(cli, corpus, index_rows):
    code, out, _ = cli("inspect", corpus, "--json")
    assert code == 0
    report = json.loads(out)
    dataset = json.loads((corpus / "dataset.json").read_text())
    assert report["kind"] == "dataset"
    assert [s["shard"] for s in report["shards"]] == [s["name"] for s in dataset["shards"]]
    per_shard = _by_shard(index_rows)
    assert len(per_shard) >= 2, "the fixture corpus should have several shards"
    for row in report["shards"]:
        rows = per_shard[row["shard"]]
        assert row["samples"] == len(rows)
        assert row["hours"] == pytest.approx(sum(r["duration_s"] for r in rows) / 3600, abs=1e-6)
        assert row["bytes"] == (corpus / "shards" / row["shard"]).stat().st_size
        assert row["checksum"] == "ok"
    assert report["totals"]["samples"] == len(index_rows)


def test_shard_json_lists_its_samples_as_the_index_does(cli, corpus, index_rows):
    shard, rows = next(iter(_by_shard(index_rows).items()))
    code, out, _ = cli("inspect", corpus / "shards" / shard, "--json")
    assert code == 0
    samples = json.loads(out)["samples"]
    assert [s["key"] for s in samples] == [r["key"] for r in rows]
    for got, want in zip(samples, rows):
        assert got["session_id"] == want["session_id"]
        assert got["start_s"] == pytest.approx(want["start_s"], abs=1e-3)
        assert got["duration_s"] == pytest.approx(want["duration_s"], abs=1e-3)
        assert got["speech_ratio"] == pytest.approx(want["speech_ratio"], abs=1e-5)
        assert got["overlap_ratio"] == pytest.approx(want["overlap_ratio"], abs=1e-5)
        assert got["word_count"] == want["word_count"]
        for col in ("turns", "gaps", "pauses", "overlaps", "backchannels", "interruptions"):
            assert got[col] == want[col], col
        assert len(got["stream_speech_ratio"]) == want["num_streams"]


def test_shard_table_names_every_sample(cli, corpus, index_rows):
    shard, rows = next(iter(_by_shard(index_rows).items()))
    code, out, _ = cli("inspect", f"file://{corpus / 'shards' / shard}")
    assert code == 0
    for r in rows:
        assert r["key"] in out
    assert f"{len(rows)} sample(s)" in out


def test_corpus_table_shows_shards_and_checksum_status(cli, corpus, index_rows):
    code, out, _ = cli("inspect", corpus)
    assert code == 0
    for shard in _by_shard(index_rows):
        assert shard in out
    assert "ok" in out and "MISMATCH" not in out


def test_a_list_of_shard_urls_and_a_brace_pattern_read_the_same_shards(cli, corpus, index_rows, tmp_path):
    shards = sorted(_by_shard(index_rows))
    listing = tmp_path / "shards.txt"
    listing.write_text("# two shards\n" + "".join(f"file://{corpus / 'shards' / s}\n" for s in shards))
    code, out, _ = cli("inspect", listing, "--json")
    assert code == 0
    via_list = json.loads(out)
    assert via_list["kind"] == "list"
    assert [s["shard"] for s in via_list["shards"]] == shards
    assert all(s["checksum"] == "ok" for s in via_list["shards"])  # checksums found in the shards' corpus

    first, last = shards[0].split("-")[1][:6], shards[-1].split("-")[1][:6]
    pattern = str(corpus / "shards" / f"shard-{{{first}..{last}}}.tar")
    code, out, _ = cli("inspect", pattern, "--samples", "--json")
    assert code == 0
    assert [s["key"] for s in json.loads(out)["samples"]] == [r["key"] for r in index_rows]


def test_a_flipped_byte_shows_as_a_checksum_mismatch_and_exit_1(cli, corpus_copy):
    shard = sorted((corpus_copy / "shards").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, _ = cli("inspect", corpus_copy, "--json")
    assert code == 1
    status = {s["shard"]: s["checksum"] for s in json.loads(out)["shards"]}
    assert status[shard.name] == "MISMATCH"
    assert list(status.values()).count("ok") == len(status) - 1
