"""Turn-taking events from activity: hand-made timelines, then generated conversations against the
generator's ground truth (microturn.synth)."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.config import EventsConfig
from microturn.pipeline.events import bridge_silences, detect_events, runs, session_event_stats

CFG = EventsConfig()
S = 75  # codec frames per second


def timeline(frames: int, *spans: tuple[int, float, float]) -> np.ndarray:
    """uint8 [2, frames] with stream ``s`` active over [a, b) seconds for each (s, a, b)."""
    act = np.zeros((2, frames), np.uint8)
    for s, a, b in spans:
        act[s, int(round(a * S)) : int(round(b * S))] = 1
    return act


def kinds(events, kind):
    return [(e.start_frame, e.end_frame, e.stream, e.other) for e in events if e.kind == kind]


def test_runs_and_bridging():
    m = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1], bool)
    assert runs(m) == [(1, 3), (5, 6), (9, 10)]
    assert runs(bridge_silences(m, 3)) == [(1, 6), (9, 10)]


def test_a_gap_between_two_turns():
    ev = detect_events(timeline(600, (0, 0.0, 2.0), (1, 2.5, 5.0)), CFG)
    assert kinds(ev, "turn") == [(0, 150, 0, None), (188, 375, 1, None)]
    assert kinds(ev, "gap") == [(150, 188, 1, 0)]  # stream: who speaks next, other: who spoke before
    assert not kinds(ev, "overlap") and not kinds(ev, "interruption")


def test_a_pause_inside_a_turn_and_a_long_silence_that_ends_it():
    ev = detect_events(timeline(900, (0, 0.0, 1.0), (0, 1.5, 3.0), (0, 5.0, 6.0)), CFG)
    assert kinds(ev, "pause") == [(75, 112, 0, None)]
    assert kinds(ev, "turn") == [(0, 225, 0, None), (375, 450, 0, None)]


def test_short_silences_inside_speech_are_not_pauses():
    ev = detect_events(timeline(300, (0, 0.0, 1.0), (0, 1.1, 2.0)), CFG)  # 100 ms < merge_silence_ms
    assert kinds(ev, "turn") == [(0, 150, 0, None)] and not kinds(ev, "pause")


def test_a_backchannel_inside_the_others_turn():
    ev = detect_events(timeline(600, (0, 0.0, 4.0), (1, 1.5, 1.9)), CFG)
    assert kinds(ev, "backchannel") == [(112, 142, 1, 0)]
    assert kinds(ev, "overlap") == [(112, 142, 1, 0)]  # stream: who joined, other: who was talking
    assert kinds(ev, "turn") == [(0, 300, 0, None)]  # the floor never changed


def test_a_backchannel_in_a_pause_does_not_take_the_floor():
    ev = detect_events(timeline(600, (0, 0.0, 2.0), (1, 2.1, 2.5), (0, 2.7, 4.0)), CFG)
    assert kinds(ev, "backchannel") == [(158, 188, 1, 0)]
    assert kinds(ev, "turn") == [(0, 300, 0, None)] and kinds(ev, "pause") == [(150, 202, 0, None)]


def test_a_short_answer_after_the_turn_ends_is_a_turn():
    ev = detect_events(timeline(600, (0, 0.0, 2.0), (1, 3.2, 3.6)), CFG)
    assert not kinds(ev, "backchannel")
    assert kinds(ev, "turn")[-1] == (240, 270, 1, None)


def test_an_interruption_takes_the_floor():
    ev = detect_events(timeline(600, (0, 0.0, 3.0), (1, 2.5, 6.0)), CFG)
    assert kinds(ev, "interruption") == [(188, 225, 1, 0)]  # from the onset until the holder stops
    assert kinds(ev, "turn") == [(0, 225, 0, None), (188, 450, 1, None)]


def test_a_short_overlap_at_a_turn_transition_is_not_an_interruption():
    # The next speaker starts 150 ms before the holder finishes (< interruption_min_overlap_ms = 250).
    ev = detect_events(timeline(600, (0, 0.0, 3.0), (1, 2.85, 6.0)), CFG)
    assert not kinds(ev, "interruption")
    assert kinds(ev, "overlap") == [(214, 225, 1, 0)]
    assert kinds(ev, "turn") == [(0, 225, 0, None), (214, 450, 1, None)]  # the floor did change
    lenient = detect_events(timeline(600, (0, 0.0, 3.0), (1, 2.85, 6.0)),
                            EventsConfig(interruption_min_overlap_ms=100))
    assert kinds(lenient, "interruption") == [(214, 225, 1, 0)]


def test_speaking_over_the_holder_without_taking_the_floor_is_only_an_overlap():
    ev = detect_events(timeline(600, (0, 0.0, 6.0), (1, 2.0, 4.0)), CFG)
    assert not kinds(ev, "interruption") and not kinds(ev, "backchannel")
    assert kinds(ev, "overlap") == [(150, 300, 1, 0)] and kinds(ev, "turn") == [(0, 450, 0, None)]


def test_tiny_overlaps_are_ignored():
    ev = detect_events(timeline(300, (0, 0.0, 1.0), (1, 0.96, 2.0)), CFG)  # 40 ms < min_overlap_ms
    assert not kinds(ev, "overlap") and not kinds(ev, "interruption")


def test_degenerate_inputs():
    assert detect_events(np.zeros((2, 100), np.uint8), CFG) == []
    assert detect_events(np.zeros((2, 0), np.uint8), CFG) == []
    one = detect_events(timeline(300, (0, 0.5, 1.0))[:1], CFG)
    assert [e.kind for e in one] == ["turn"]
    with pytest.raises(ValueError, match="streams, frames"):
        detect_events(np.zeros(10, np.uint8), CFG)


def test_session_statistics():
    act = timeline(750, (0, 0.0, 4.0), (1, 1.5, 1.9), (1, 4.5, 8.0), (0, 7.5, 9.0))
    stats = session_event_stats(act, detect_events(act, CFG), CFG)
    assert stats["duration_s"] == 10.0 and stats["speech_ratio"] == pytest.approx(0.85, abs=0.01)
    assert stats["counts"]["backchannel"] == 1 and stats["counts"]["interruption"] == 1
    assert stats["gaps"]["count"] == 1 and stats["gaps"]["mean_s"] == pytest.approx(0.5, abs=0.02)
    assert stats["overlap_ratio"] == pytest.approx((0.4 + 0.5) / 8.5, abs=0.01)
    assert stats["backchannels_per_min"] == pytest.approx(6.0)
    # Floor-transfer offsets: one gap (+0.5 s), one interruption (-0.5 s).
    assert stats["transition_offsets"]["count"] == 2 and stats["transition_offsets"]["mean_s"] == 0.0
    assert stats["transition_offsets"]["p10_s"] == pytest.approx(-0.4, abs=0.02)


def test_overlapping_transitions_count_as_floor_transfers_in_the_statistics():
    act = timeline(600, (0, 0.0, 3.0), (1, 2.85, 6.0))
    stats = session_event_stats(act, detect_events(act, CFG), CFG)
    assert stats["counts"]["interruption"] == 0 and stats["counts"]["gap"] == 0
    assert stats["transition_offsets"]["count"] == 1
    assert stats["transition_offsets"]["mean_s"] == pytest.approx(-0.147, abs=0.001)  # 11 frames early


# ---------------------------------------------------------------- against the generator's truth

# The generator's within-turn pauses are at most 0.65 s and its backchannels at most ~0.56 s, so the
# detector is run with thresholds just above those; everything else is the default config (among it
# interruption_min_overlap_ms = 250, between the generator's overlapping transitions, <= 0.2 s, and
# its interruptions, >= 0.3 s of overlap).
SYNTH_CFG = EventsConfig(pause_max_ms=700, backchannel_max_ms=600)
TOLERANCE_S = 0.1  # an event matches when kind and speaker agree and both ends are within 100 ms
SESSIONS, DURATION_S = 6, 60.0


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    synth = pytest.importorskip("microturn.synth")
    pytest.importorskip("av")
    out = tmp_path_factory.mktemp("conv")
    result = []
    for i in range(SESSIONS):
        truth = synth.synthesize_session(out / f"c{i}", f"c{i}", seed=11, index=i, duration_s=DURATION_S,
                                         video=False, vary_starts=False)
        frames = int(np.ceil(truth.duration_s * S))
        activity = np.stack([truth.activity(spk, S, frames) for spk in truth.speakers]).astype(np.uint8)
        result.append((truth, activity, detect_events(activity, SYNTH_CFG)))
    return result


def _match(found: list[tuple[float, float, str]], wanted: list[tuple[float, float, str]]) -> int:
    used, hits = set(), 0
    for a, b, who in wanted:
        for j, (c, d, w) in enumerate(found):
            if j not in used and w == who and abs(c - a) <= TOLERANCE_S and abs(d - b) <= TOLERANCE_S:
                used.add(j)
                hits += 1
                break
    return hits


def _scores(conversations, kind: str, truth_filter=None) -> tuple[float, float, int]:
    min_s = SYNTH_CFG.min_overlap_ms / 1000
    hits = n_found = n_wanted = 0
    for truth, _, events in conversations:
        speakers = list(truth.speakers)
        found = [(e.start_frame / S, e.end_frame / S, speakers[e.stream]) for e in events if e.kind == kind]
        keep = truth_filter or (lambda e: e.kind == kind)
        # overlaps shorter than min_overlap_ms are below what the detector is asked to see
        wanted = [(e.start_s, e.end_s, e.speaker) for e in truth.events
                  if keep(e) and not (kind in ("overlap", "interruption") and e.end_s - e.start_s < min_s)]
        hits += _match(found, wanted)
        n_found += len(found)
        n_wanted += len(wanted)
    return hits / max(n_found, 1), hits / max(n_wanted, 1), n_wanted


@pytest.mark.parametrize("kind", ["overlap", "backchannel", "interruption", "turn", "gap", "pause"])
def test_events_match_the_generators_truth(conversations, kind):
    """Precision and recall >= 0.9 against the generator's own labels (issue 5), over 6 sessions of 60 s.

    Tolerance: a detected event matches a truth event (one to one) when kind and speaker agree and both
    its ends lie within 100 ms of the truth's; truth overlaps and interruptions shorter than
    ``min_overlap_ms`` (80 ms) are not asked for. The activity is the truth's, on the codec frame grid.
    """
    precision, recall, n = _scores(conversations, kind)
    assert n >= 20, f"too few {kind} events in the generated truth to measure"
    assert precision >= 0.9 and recall >= 0.9, f"{kind}: precision {precision:.3f}, recall {recall:.3f} (n={n})"


def test_overlapping_turn_transitions_are_not_taken_for_interruptions(conversations):
    """The generator's overlapping transitions (the next speaker 40-200 ms early) change the floor without
    interrupting: none is labelled an interruption, and nearly all start a turn of the next speaker (a
    few very short turns, under ~0.6 s, read as backchannels: activity cannot tell those apart)."""
    n = new_turns = 0
    for truth, _, events in conversations:
        speakers = list(truth.speakers)

        def near(o, kind: str) -> bool:
            return any(e.kind == kind and speakers[e.stream] == o.speaker
                       and abs(e.start_frame / S - o.start_s) <= TOLERANCE_S for e in events)

        for o in (o for o in truth.events_of("overlap") if o.cause == "transition"):
            n += 1
            assert not near(o, "interruption"), o
            new_turns += near(o, "turn")
    assert n >= 20 and new_turns >= 0.9 * n, (new_turns, n)


def test_the_sample_files_written_by_the_generator_agree_with_its_truth(conversations):
    truth, activity, _ = conversations[0]
    assert activity.shape == (2, int(np.ceil(DURATION_S * S)))
    assert activity.any(axis=1).all()
    stats = session_event_stats(activity, conversations[0][2], SYNTH_CFG)
    assert stats["counts"]["backchannel"] == len([e for e in conversations[0][2] if e.kind == "backchannel"])
    assert 0 < stats["overlap_ratio"] < 0.5
