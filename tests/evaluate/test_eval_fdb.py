"""The turn-taking metric definitions (microturn/evaluate/fdb.py) on crafted timelines: one behaviour each.

Timelines are written in seconds (speech spans, words) and laid on the 75 Hz codec frame grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from microturn.evaluate.fdb import (
    FdbConfig,
    evaluate_model,
    evaluate_pairs,
    histogram,
    jensen_shannon,
    take_over,
)
from microturn.evaluate.timeline import RolePair, Side, TimedWord

RATE_HZ = 75
CFG = FdbConfig()


def side(spans_s: Sequence[tuple[float, float]], total_s: float, words: Sequence[tuple[float, float]] = ()) -> Side:
    """Activity over ``spans_s``; ``words`` (start, end) in seconds, named w0, w1, ..."""
    act = np.zeros(int(round(total_s * RATE_HZ)), dtype=bool)
    for a, b in spans_s:
        act[int(round(a * RATE_HZ)) : int(round(b * RATE_HZ))] = True
    return Side(act, tuple(TimedWord(f"w{i}", a, b) for i, (a, b) in enumerate(words)))


def speaking(spans_s: Sequence[tuple[float, float]], total_s: float, word_s: float = 0.4) -> Side:
    """A talker whose spans are filled with back-to-back words of ``word_s``."""
    words = [(t, min(t + word_s, b)) for a, b in spans_s for t in np.arange(a, b - 1e-9, word_s)]
    return side(spans_s, total_s, words)


def metrics(user: Side, model: Side) -> dict:
    return evaluate_pairs([RolePair("s", user, model)], None, CFG)


def words(*spans: tuple[float, float]) -> tuple[TimedWord, ...]:
    return tuple(TimedWord("w", a, b) for a, b in spans)


# ---------------------------------------------------------------- TOR


def test_no_words_is_no_turn_over() -> None:
    assert take_over((), CFG) == 0


def test_three_words_within_a_second_are_no_turn_over() -> None:
    assert take_over(words((0.0, 0.3), (0.3, 0.6), (0.6, 0.9)), CFG) == 0


def test_four_short_words_or_an_output_spanning_a_second_turn_over() -> None:
    assert take_over(words((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8)), CFG) == 1
    assert take_over(words((0.0, 0.5), (0.6, 1.1)), CFG) == 1


# ---------------------------------------------------------------- turn ends


def test_a_reply_after_the_user_turn_turns_over_with_its_latency() -> None:
    user = speaking([(0.0, 3.0)], 8.0)
    model = speaking([(3.4, 5.0)], 8.0)
    m = metrics(user, model)
    assert m["tor_smooth"] == 1.0 and m["cases"]["tor_smooth"] == 1
    assert m["response_latency_s"] == {"median": pytest.approx(0.4), "mean": pytest.approx(0.4)}


def test_a_reply_begun_before_the_user_finishes_has_zero_latency() -> None:
    m = metrics(speaking([(0.0, 3.0)], 8.0), speaking([(2.8, 5.0)], 8.0))
    assert m["response_latency_s"]["median"] == 0.0


def test_silence_or_a_short_acknowledgement_after_a_turn_is_no_turn_over() -> None:
    user = speaking([(0.0, 3.0)], 8.0)
    assert metrics(user, side([], 8.0))["tor_smooth"] == 0.0
    m = metrics(user, speaking([(3.3, 3.7)], 8.0))
    assert m["tor_smooth"] == 0.0 and m["cases"]["response_latency_s"] == 0
    assert m["response_latency_s"] == {"median": None, "mean": None}


def test_words_after_the_users_next_turn_starts_belong_to_that_turn() -> None:
    user = speaking([(0.0, 3.0), (5.0, 7.0)], 10.0)
    model = speaking([(5.5, 9.0)], 10.0)  # starts during the second turn and talks on after it
    m = metrics(user, model)
    assert m["cases"]["tor_smooth"] == 2 and m["tor_smooth"] == 0.5


def test_a_turn_end_without_a_pause_length_of_data_after_it_is_not_a_case() -> None:
    m = metrics(speaking([(0.0, 3.0)], 3.5), speaking([(3.2, 3.5)], 3.5))
    assert m["cases"]["tor_smooth"] == 0 and m["tor_smooth"] is None


def test_a_user_turn_of_a_second_or_less_is_not_a_case() -> None:
    m = metrics(speaking([(0.0, 0.8)], 5.0), speaking([(1.0, 3.0)], 5.0))
    assert m["cases"]["tor_smooth"] == 0


# ---------------------------------------------------------------- pauses


def test_taking_over_in_a_user_pause_counts_against_pause_handling() -> None:
    user = speaking([(0.0, 2.0), (2.7, 5.0)], 8.0)  # a 0.7 s pause: the turn goes on
    assert metrics(user, side([], 8.0))["pause_tor"] == 0.0
    m = metrics(user, side([(2.1, 3.5)], 8.0, [(2.1, 2.5), (2.5, 2.9), (2.9, 3.5)]))
    assert m["pause_tor"] == 1.0 and m["cases"]["pause_tor"] == 1


def test_talking_on_through_a_user_pause_holds_the_floor_too() -> None:
    user = speaking([(0.0, 2.0), (2.7, 5.0)], 8.0)
    words = [(0.5 + 0.4 * i, 0.8 + 0.4 * i) for i in range(10)]  # a model talking over the user throughout
    m = metrics(user, side([(0.3, 4.5)], 8.0, words))
    assert m["pause_tor"] == 1.0 and m["cases"]["pause_tor"] == 1


def test_a_backchannel_in_a_pause_is_not_a_turn_over() -> None:
    user = speaking([(0.0, 2.0), (2.7, 5.0)], 8.0)
    assert metrics(user, side([(2.2, 2.5)], 8.0, [(2.2, 2.5)]))["pause_tor"] == 0.0


# ---------------------------------------------------------------- barge-in


def test_stop_latency_runs_from_the_barge_in_to_the_model_falling_silent() -> None:
    model = speaking([(0.0, 4.0)], 8.0)
    user = speaking([(3.0, 6.0)], 8.0)
    m = metrics(user, model)
    assert m["stop_latency_s"] == pytest.approx(1.0) and m["cases"]["stop_latency_s"] == 1


def test_a_user_backchannel_is_no_barge_in_and_speech_to_the_end_is_no_case() -> None:
    model = speaking([(0.0, 4.0)], 8.0)
    assert metrics(side([(2.0, 2.4)], 8.0, [(2.0, 2.4)]), model)["cases"]["stop_latency_s"] == 0
    assert metrics(speaking([(3.0, 6.0)], 8.0), speaking([(0.0, 8.0)], 8.0))["stop_latency_s"] is None


# ---------------------------------------------------------------- backchannels


def test_backchannels_are_short_utterances_of_one_or_two_words_per_minute() -> None:
    user = speaking([(0.0, 30.0)], 60.0)
    model = side([(5.0, 5.4), (10.0, 10.8), (15.0, 15.9), (20.0, 22.0)], 60.0,
                 [(5.0, 5.4), (10.0, 10.4), (10.4, 10.8), (15.0, 15.3), (15.3, 15.6), (15.6, 15.9), (20.0, 22.0)])
    m = metrics(user, model)
    # 5.0 (1 word) and 10.0 (2 words) are; 15.0 has 3 words, 20.0 lasts 2 s
    assert m["cases"]["backchannels_per_min"] == 2 and m["backchannels_per_min"] == pytest.approx(2.0)


def test_backchannel_times_are_taken_from_the_onset_of_the_users_turn() -> None:
    user = speaking([(2.0, 12.0)], 20.0)
    model = side([(3.0, 3.3), (7.1, 7.4)], 20.0, [(3.0, 3.3), (7.1, 7.4)])
    ref = histogram([1.0, 5.1])
    m = evaluate_model(user, model.activity, model.words, reference_histogram=ref)
    assert m["backchannel_jsd"] == 0.0 and m["cases"]["backchannel_jsd"] == 2


def test_jsd_is_zero_for_one_shape_one_when_disjoint_or_empty() -> None:
    a, b = histogram([0.1, 0.5, 0.5]), histogram([3.0])
    assert jensen_shannon(a, 2 * a) == 0.0
    assert jensen_shannon(a, b) == pytest.approx(1.0)
    assert jensen_shannon(histogram([]), a) == 1.0


def test_a_model_without_backchannels_scores_jsd_one() -> None:
    user = speaking([(0.0, 3.0)], 8.0)
    m = evaluate_model(user, np.zeros(user.num_frames, bool), (), reference_histogram=histogram([1.0]))
    assert m["backchannel_jsd"] == 1.0


def test_late_backchannels_fall_in_the_last_bin() -> None:
    h = histogram([0.0, 0.19, 0.2, 99.0])
    assert h[0] == 2 and h[1] == 1 and h[-1] == 1 and h.size == 50


# ---------------------------------------------------------------- floor transfers


def test_floor_transfer_offsets_are_gaps_positive_and_overlaps_negative() -> None:
    user = speaking([(0.0, 3.0), (8.0, 11.0)], 16.0)
    m = metrics(user, speaking([(3.3, 6.0)], 16.0))
    assert m["floor_transfer_offset_s"] == pytest.approx(0.3, abs=1 / RATE_HZ)
    m = metrics(user, speaking([(2.9, 6.0)], 16.0))
    assert m["floor_transfer_offset_s"] == pytest.approx(-0.1, abs=1 / RATE_HZ)


def test_only_transfers_from_the_user_to_the_model_count() -> None:
    user = speaking([(0.0, 3.0), (6.5, 9.0)], 12.0)
    m = metrics(user, speaking([(3.2, 6.0)], 12.0))  # user -> model (+0.2), model -> user (+0.5) is not the model's
    assert m["cases"]["floor_transfer_offset_s"] == 1
    assert m["floor_transfer_offset_s"] == pytest.approx(0.2, abs=1 / RATE_HZ)


def test_pairs_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        RolePair("s", side([], 2.0), side([], 3.0))
