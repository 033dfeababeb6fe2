"""Chunking: windows on the exact 200 ms grid, the last one padded and kept, window-relative members."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.config import ChunkConfig
from microturn.format import decode_sample
from microturn.pipeline.chunk import window_starts
from tests.factories import random_tokenized_session
from microturn.records import Event

CFG = ChunkConfig(window_chunks=50, hop_chunks=50)  # 10 s windows


@settings(max_examples=200, deadline=None)
@given(valid=st.integers(1, 2000), window=st.integers(1, 300), hop=st.integers(1, 300), tail=st.integers(1, 50))
def test_windows_cover_every_valid_chunk(valid, window, hop, tail):
    cfg = ChunkConfig(window_chunks=window, hop_chunks=min(hop, window), min_valid_chunks=tail)
    starts = window_starts(valid, cfg)
    covered = np.zeros(valid, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    assert starts == sorted(set(starts)) and starts[0] == 0 and starts[-1] < valid


def test_a_session_becomes_windows_with_a_padded_tail():
    tok = random_tokenized_session("talk", 24000 * 23 + 100, seed=3)  # 23.004 s -> 1726 valid frames
    samples = tok.samples([], CFG)
    assert [s.key for s in samples] == ["talk-000000", "talk-000001", "talk-000002"]
    metas = [decode_sample(s.members, s.key).meta for s in samples]
    assert [m["start_frame"] for m in metas] == [0, 750, 1500]
    assert [m["valid_frames"] for m in metas] == [750, 750, tok.valid_frames - 1500]
    last = decode_sample(samples[-1].members)
    assert last.arrays["codes.npy"].shape == (2, 8, 750)
    v = last.meta["valid_frames"]
    assert np.array_equal(last.arrays["codes.npy"][:, :, : tok.num_frames - 1500], tok.codes[:, :, 1500:])
    assert not last.arrays["codes.npy"][:, :, tok.num_frames - 1500 :].any() and not last.arrays["activity.npy"][:, v:].any()
    assert samples[-1].index_row["duration_s"] == v / 75


def test_arrays_are_cut_on_the_frame_grid():
    tok = random_tokenized_session("grid", 24000 * 25, seed=4)
    s = decode_sample(tok.samples([], CFG)[1].members)
    assert np.array_equal(s.arrays["codes.npy"], tok.codes[:, :, 750:1500])
    assert np.array_equal(s.arrays["text.npy"], tok.text[:, 750:1500])
    assert np.array_equal(s.arrays["activity.npy"], tok.activity[:, 750:1500])
    assert s.arrays["frame_chunks.npy"].tolist() == list(range(50))  # one video frame per chunk, window-relative
    assert np.array_equal(s.arrays["frames.npy"], tok.frame_tokens[50:100])


def test_events_and_words_are_window_relative_and_clipped():
    tok = random_tokenized_session("ev", 24000 * 20, seed=5)
    events = [Event("turn", 700, 800, stream=0), Event("gap", 800, 810, stream=1, other=0),
              Event("pause", 100, 120, stream=0)]
    first, second = tok.samples(events, CFG)
    e1 = decode_sample(second.members).events
    assert e1 == [{"kind": "turn", "start_frame": 0, "end_frame": 50, "stream": 0, "other": None, "clipped": True},
                  {"kind": "gap", "start_frame": 50, "end_frame": 60, "stream": 1, "other": 0}]
    # the index counts events that start in the window, so counts add up over the session
    assert (first.index_row["turns"], second.index_row["turns"], second.index_row["gaps"]) == (1, 0, 1)
    words = decode_sample(second.members).words
    assert words and all(0 <= w["start_frame"] <= w["end_frame"] <= 750 for w in words)
    assert sum(s.index_row["word_count"] for s in (first, second)) >= len(tok.words)


def test_overlapping_windows_and_a_short_tail_pulled_back():
    cfg = ChunkConfig(window_chunks=50, hop_chunks=25, min_valid_chunks=10)
    tok = random_tokenized_session("hop", 24000 * 21, seed=6)  # 105 chunks
    starts = [decode_sample(s.members).meta["start_chunk"] for s in tok.samples([], cfg)]
    assert starts == [0, 25, 50, 75]  # the last window reaches the end; it holds 30 valid chunks
    # with hop = window the tail window at 100 would hold 5 valid chunks: pulled back to end at 105
    assert window_starts(105, ChunkConfig(window_chunks=50, hop_chunks=50, min_valid_chunks=10)) == [0, 50, 55]


def test_sample_meta_carries_provenance_and_fingerprints():
    tok = random_tokenized_session("meta", 24000 * 5, seed=7)
    (s,) = tok.samples([], CFG)
    m = decode_sample(s.members).meta
    assert m["speakers"] == ["spk0", "spk1"] and m["fingerprints"] == tok.tokens.fingerprints
    assert m["sources"]["audio"][1]["uri"].endswith("spk1.wav") and m["start_sample"] == 0
    assert s.index_row["session_id"] == "meta" and s.index_row["num_streams"] == 2
