"""Session timelines stitched back from a corpus' windows (microturn/evaluate/timeline.py)."""

from __future__ import annotations


import numpy as np
import pytest

from microturn.clock import GRID
from microturn.evaluate.timeline import Window, read_timelines, stitch
from microturn.report.corpus import open_target
from tests.factories import random_tokenized_session, write_corpus

TOKENIZERS = {
    "audio": {"fingerprint": "untrained:0", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}
WINDOW_CHUNKS = 7  # 105 frames: the factory's words (25 frames every 30) cross window edges


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):
    tok = random_tokenized_session("s0", 24000 * 9 + 700, seed=3)
    root = tmp_path_factory.mktemp("eval_timeline")
    out = write_corpus(root / "corpus", tok, TOKENIZERS, window_chunks=WINDOW_CHUNKS)
    return tok, out


def test_windows_are_laid_back_into_the_sessions_activity(session) -> None:
    tok, corpus = session
    (tl,) = read_timelines(open_target(str(corpus)))
    assert tl.session_id == "s0" and tl.start_frame == 0
    assert np.array_equal(tl.activity, tok.activity[:, : tok.valid_frames])


def test_words_cut_by_window_edges_come_back_whole_and_once(session) -> None:
    tok, corpus = session
    (tl,) = read_timelines(open_target(str(corpus)))
    for s in range(2):
        want = [(w.text, float(GRID.samples_to_seconds(w.start_sample)), float(GRID.samples_to_seconds(w.end_sample)))
                for w in tok.words if w.stream == s]
        got = [(w.text, w.start_s, w.end_s) for w in tl.words[s]]
        assert got == want


def test_the_corpus_events_are_joined_across_window_edges(session) -> None:
    _, corpus = session
    (tl,) = read_timelines(open_target(str(corpus)))
    turns = [e for e in tl.events if e.kind == "turn"]
    assert all(b.start_frame >= a.end_frame for a, b in zip(turns, turns[1:]))
    assert max(e.end_frame - e.start_frame for e in turns) > WINDOW_CHUNKS * 15  # one turn crosses an edge


def test_max_samples_keeps_a_prefix_of_the_session(session) -> None:
    tok, corpus = session
    (tl,) = read_timelines(open_target(str(corpus)), max_samples=2)
    assert tl.activity.shape == (2, 2 * WINDOW_CHUNKS * 15)
    assert np.array_equal(tl.activity, tok.activity[:, : 2 * WINDOW_CHUNKS * 15])


def test_each_speaker_takes_the_models_role_in_turn(session) -> None:
    _, corpus = session
    (tl,) = read_timelines(open_target(str(corpus)))
    a, b = tl.role_pairs()
    assert (a.model.speaker, a.user.speaker, b.model.speaker, b.user.speaker) == ("spk0", "spk1", "spk1", "spk0")


def test_a_hole_in_the_windows_ends_the_timeline() -> None:
    def win(start: int) -> Window:
        return Window(start, 10, np.ones((1, 10), np.uint8), [], [])

    tl = stitch("s", ("a",), [win(0), win(10), win(30)])
    assert tl.activity.shape == (1, 20)
