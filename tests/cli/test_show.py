"""`microturn show`: a sample's timeline, words, events, tokens, fingerprints and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # needs the built corpus


def _decoded(corpus: Path, row: dict):
    from microturn.format import decode_sample, iter_samples

    for key, members in iter_samples(str(corpus / "shards" / row["shard"])):
        if key == row["key"]:
            return decode_sample(members, key)
    raise AssertionError(f"{row['key']} not in its shard")


def _busiest(index_rows):
    return max(index_rows, key=lambda r: (r["word_count"], r["key"]))


def test_show_prints_timeline_words_tokens_fingerprints_and_sources(cli, corpus, index_rows):
    row = _busiest(index_rows)
    sample = _decoded(corpus, row)
    code, out, _ = cli("show", corpus, row["key"])
    assert code == 0
    assert row["key"] in out and f"session {row['session_id']}" in out
    for speaker in sample.meta["speakers"]:
        assert f"{speaker} " in out
    # every word that starts in the window appears in a words row (columns may shift, text does not)
    for w in sample.words:
        if not w.get("clipped"):
            assert w["text"] in out, w
    for fp in sample.meta["fingerprints"].values():
        assert fp in out
    for src in sample.meta["sources"]["audio"]:
        assert Path(src["uri"]).name in out
    codes = sample.arrays["codes.npy"]
    assert "tokens per stream" in out and f"{codes.shape[1]} x {codes.shape[2]}" in out
    assert "members" in out and "frame_chunks.npy" in out and f"S=2 x K={codes.shape[1]} x F={codes.shape[2]}" in out


def test_timeline_has_one_column_per_chunk(cli, corpus, index_rows):
    from microturn.report.show import activity_line
    from microturn.report.sample import view_from_decoded

    row = _busiest(index_rows)
    view = view_from_decoded(row["key"], _decoded(corpus, row))
    code, out, _ = cli("show", corpus, row["key"], "--width", "25")
    assert code == 0
    chunk_act = view.chunk_activity()
    assert chunk_act.shape[1] == row["num_frames"] // 15
    for s in range(chunk_act.shape[0]):
        line = activity_line(chunk_act[s], view.valid_chunks)
        assert len(line) == chunk_act.shape[1]
        assert line in out  # 25 chunks = one row of the panel


def test_show_json_carries_the_samples_words_and_events(cli, corpus, index_rows):
    row = _busiest(index_rows)
    sample = _decoded(corpus, row)
    code, out, _ = cli("show", corpus / "shards" / row["shard"], row["key"], "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["words"] == sample.words
    assert doc["events"] == sample.events
    assert doc["summary"]["word_count"] == row["word_count"]


def test_words_that_do_not_fit_the_rows_are_counted_not_dropped_silently():
    from microturn.report.show import words_lines

    # ten words starting in the same chunk: at most three lines of them, then a line that says how many more
    words = [{"stream": 0, "start_frame": 0, "text": f"word{i}"} for i in range(10)]
    lines = words_lines(words, 0, 0, 60, max_lines=3)
    assert len(lines) == 4
    assert lines[-1].startswith("(+7 more words here")
    assert words_lines(words[:2], 0, 0, 60, max_lines=3)[-1].strip().startswith("word")
