"""Turn-taking metrics after Full-Duplex-Bench v1, computed on our codec frame grid (docs/evaluation.md).

Pure functions of one ``RolePair`` (the user side, the side in the model's role) and their aggregate
over many pairs (``evaluate_pairs``, the hook a model evaluation calls). The user's turn structure
(turns, mid-turn pauses) comes from the user's activity alone, labelled by the event stage
(``microturn.pipeline.events.detect_events`` on one stream): cases are fixed by the user, whatever the
model does, as in FDB where they are fixed by the stimulus.

- **TOR** (turn-over) of an output (the model's words in a case's window): 0 without words; 0 when they
  span less than ``tor_min_span_s`` with at most ``tor_max_short_words`` words; else 1.
- **Turn ends** (``tor_smooth``, ``response_latency_s``): every end of a user turn longer than
  ``backchannel_max_s`` that ``pause_max_ms`` of data follows (before that the end is not known to be
  one). Window: model words starting in [end - ``response_lead_s``, the user's next turn start or the end
  of data). Latency = max(0, first such word's start - end), over TOR = 1 cases.
- **Pauses** (``pause_tor``): the words of the model utterances that sound during a user's mid-turn
  pause (started in it, or running through it) (lower is better).
- **Barge-ins** (``stop_latency_s``): a user turn longer than ``backchannel_max_s`` that starts while the
  model speaks; latency = when that stretch of model speech ends - the user's onset. Model speech that
  runs to the end of the data is not a case (it cannot be seen to stop).
- **Backchannels** (``backchannels_per_min``, ``backchannel_jsd``): the model's utterances (activity
  runs, short silences bridged as the event stage does) shorter than ``backchannel_max_s`` with 1 to
  ``backchannel_max_words`` words. Their times are taken from the onset of the user turn they fall in (or
  last followed), binned at ``histogram_bin_s`` up to ``histogram_max_s`` (later ones in the last bin).
- **Floor transfers** (``floor_transfer_offset_s``): with both streams labelled by the event stage, every
  model turn that follows a user turn: its start - the user turn's end (negative = overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.config import EventsConfig
from microturn.evaluate.timeline import RolePair, Side, TimedWord
from microturn.pipeline.events import bridge_silences, detect_events, runs

METRICS = ("tor_smooth", "response_latency_s", "pause_tor", "stop_latency_s", "backchannels_per_min",
           "backchannel_jsd", "floor_transfer_offset_s")


@dataclass(frozen=True)
class FdbConfig:
    events: EventsConfig = field(default_factory=EventsConfig)  # the turn structure's thresholds
    response_lead_s: float = 0.5  # a reply may start this much before the user's turn ends (early overlap)
    tor_min_span_s: float = 1.0
    tor_max_short_words: int = 3
    backchannel_max_s: float = 1.0
    backchannel_max_words: int = 2
    histogram_bin_s: float = 0.2
    histogram_max_s: float = 10.0


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float


@dataclass(frozen=True)
class UserTurns:
    turns: tuple[Span, ...]
    pauses: tuple[Span, ...]


@dataclass(frozen=True)
class PairFigures:
    """The raw per-case figures of one pair, pooled by ``aggregate``."""

    turn_end_tor: tuple[int, ...]
    response_latencies_s: tuple[float, ...]
    pause_tor: tuple[int, ...]
    stop_latencies_s: tuple[float, ...]
    backchannel_offsets_s: tuple[float, ...]  # from the onset of the user's turn
    backchannels: int
    minutes: float
    floor_transfer_offsets_s: tuple[float, ...]


def _seconds(frames: int) -> float:
    return float(GRID.frames_to_seconds(frames))


def _frames(ms: int) -> int:
    return GRID.seconds_to_frames(Fraction(ms, 1000), "nearest")


def user_turns(activity: np.ndarray, cfg: FdbConfig) -> UserTurns:
    """The user's turns and mid-turn pauses, labelled by the event stage on the user's stream alone."""
    events = detect_events(np.asarray(activity, dtype=np.uint8)[None, :], cfg.events)
    spans = {k: tuple(Span(_seconds(e.start_frame), _seconds(e.end_frame)) for e in events if e.kind == k)
             for k in ("turn", "pause")}
    return UserTurns(spans["turn"], spans["pause"])


def take_over(words: Sequence[TimedWord], cfg: FdbConfig) -> int:
    """FDB's TOR of an output: 0 without words, 0 when short (< 1 s, <= 3 words), else 1."""
    if not words:
        return 0
    span = max(w.end_s for w in words) - min(w.start_s for w in words)
    return 0 if span < cfg.tor_min_span_s and len(words) <= cfg.tor_max_short_words else 1


def words_starting(words: Iterable[TimedWord], lo_s: float, hi_s: float) -> list[TimedWord]:
    return [w for w in words if lo_s <= w.start_s < hi_s]


def turn_end_cases(model: Side, turns: UserTurns, cfg: FdbConfig) -> list[tuple[int, Optional[float]]]:
    """(TOR, latency or None) at each user turn end (see the module docstring)."""
    data_end = _seconds(model.num_frames)
    known_after = _seconds(_frames(cfg.events.pause_max_ms))
    out = []
    for i, t in enumerate(turns.turns):
        if t.end_s - t.start_s <= cfg.backchannel_max_s or t.end_s + known_after > data_end:
            continue
        nxt = turns.turns[i + 1].start_s if i + 1 < len(turns.turns) else data_end
        said = words_starting(model.words, t.end_s - cfg.response_lead_s, nxt)
        tor = take_over(said, cfg)
        out.append((tor, max(0.0, min(w.start_s for w in said) - t.end_s) if tor else None))
    return out


def model_utterances(model: Side, cfg: FdbConfig) -> list[tuple[int, int]]:
    """[start, end) frames of the model's utterances (short silences bridged, as the event stage does)."""
    return runs(bridge_silences(model.activity, _frames(cfg.events.merge_silence_ms)))


def pause_cases(model: Side, turns: UserTurns, cfg: FdbConfig) -> list[int]:
    """TOR of what the model says in its utterances that sound during each user mid-turn pause: the ones
    it starts inside the pause and the one it is already in when the pause begins (talking on through
    the user's pause holds the floor just as much). All their words count: a pause is shorter than a
    second, so its own words alone would rarely make a turn."""
    spans = [(_seconds(a), _seconds(b)) for a, b in model_utterances(model, cfg)]
    out = []
    for p in turns.pauses:
        sounding = [(a, b) for a, b in spans if a < p.end_s and b > p.start_s]
        out.append(take_over([w for a, b in sounding for w in words_starting(model.words, a, b)], cfg))
    return out


def stop_latencies(model: Side, turns: UserTurns, cfg: FdbConfig) -> list[float]:
    """Seconds from a user's barge-in to the end of the model speech it cut into."""
    out = []
    for a, b in model_utterances(model, cfg):
        if b >= model.num_frames:
            continue  # still speaking when the data ends
        start_s, end_s = _seconds(a), _seconds(b)
        for t in turns.turns:
            if start_s < t.start_s < end_s and t.end_s - t.start_s > cfg.backchannel_max_s:
                out.append(end_s - t.start_s)
                break  # the first barge-in into this stretch is the one it answers
    return out


def backchannel_starts(model: Side, cfg: FdbConfig) -> list[float]:
    """Start (s) of each model utterance shorter than ``backchannel_max_s`` with 1-2 words."""
    out = []
    for a, b in model_utterances(model, cfg):
        start_s, end_s = _seconds(a), _seconds(b)
        n = len(words_starting(model.words, start_s, end_s))
        if end_s - start_s < cfg.backchannel_max_s and 1 <= n <= cfg.backchannel_max_words:
            out.append(start_s)
    return out


def offsets_from_turn_onset(times_s: Sequence[float], turns: UserTurns) -> list[float]:
    """Each time minus the onset of the latest user turn started by then (times before any: dropped)."""
    onsets = np.asarray([t.start_s for t in turns.turns], dtype=np.float64)
    out = []
    for x in times_s:
        i = int(np.searchsorted(onsets, x, side="right")) - 1
        if i >= 0:
            out.append(float(x - onsets[i]))
    return out


def floor_transfer_offsets(pair: RolePair, cfg: FdbConfig) -> list[float]:
    """Model turn start - previous user turn end, at every transfer from the user to the model."""
    both = np.stack([pair.user.activity, pair.model.activity]).astype(np.uint8)
    turns = sorted((e for e in detect_events(both, cfg.events) if e.kind == "turn"),
                   key=lambda e: (e.start_frame, e.end_frame))
    return [_seconds(b.start_frame - a.end_frame) for a, b in zip(turns, turns[1:]) if (a.stream, b.stream) == (0, 1)]


def pair_figures(pair: RolePair, cfg: FdbConfig = FdbConfig()) -> PairFigures:
    """Every raw figure of one pair."""
    turns = user_turns(pair.user.activity, cfg)
    ends = turn_end_cases(pair.model, turns, cfg)
    bcs = backchannel_starts(pair.model, cfg)
    return PairFigures(
        turn_end_tor=tuple(tor for tor, _ in ends),
        response_latencies_s=tuple(lat for _, lat in ends if lat is not None),
        pause_tor=tuple(pause_cases(pair.model, turns, cfg)),
        stop_latencies_s=tuple(stop_latencies(pair.model, turns, cfg)),
        backchannel_offsets_s=tuple(offsets_from_turn_onset(bcs, turns)),
        backchannels=len(bcs),
        minutes=_seconds(pair.model.num_frames) / 60,
        floor_transfer_offsets_s=tuple(floor_transfer_offsets(pair, cfg)),
    )


# ---------------------------------------------------------------- pooling


def histogram(offsets_s: Sequence[float], cfg: FdbConfig = FdbConfig()) -> np.ndarray:
    """Counts per ``histogram_bin_s`` bin from 0 to ``histogram_max_s`` (later offsets in the last bin)."""
    bins = int(round(cfg.histogram_max_s / cfg.histogram_bin_s))
    idx = np.clip((np.asarray(offsets_s, dtype=np.float64) / cfg.histogram_bin_s).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.float64)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same shape, 1 = disjoint) of two count vectors; 1 when
    either is empty (FDB scores a model without backchannels 1)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x), 4)


def _median(xs: Sequence[float]) -> Optional[float]:
    return _round(float(np.median(xs))) if len(xs) else None


def _mean(xs: Sequence[float]) -> Optional[float]:
    return _round(float(np.mean(xs))) if len(xs) else None


def aggregate(figures: Sequence[PairFigures], reference_histogram: Optional[np.ndarray] = None,
              cfg: FdbConfig = FdbConfig()) -> dict[str, Any]:
    """The metrics over pooled cases; ``backchannel_jsd`` is None without a reference histogram."""

    def pooled(name: str) -> list:
        return [x for f in figures for x in getattr(f, name)]

    tor, lat, ptor = pooled("turn_end_tor"), pooled("response_latencies_s"), pooled("pause_tor")
    stops, ftos, bco = pooled("stop_latencies_s"), pooled("floor_transfer_offsets_s"), pooled("backchannel_offsets_s")
    bcs, minutes = sum(f.backchannels for f in figures), sum(f.minutes for f in figures)
    jsd = None if reference_histogram is None else _round(jensen_shannon(histogram(bco, cfg), reference_histogram))
    return {
        "tor_smooth": _mean(tor),
        "response_latency_s": {"median": _median(lat), "mean": _mean(lat)},
        "pause_tor": _mean(ptor),
        "stop_latency_s": _median(stops),
        "backchannels_per_min": _round(bcs / minutes) if minutes else None,
        "backchannel_jsd": jsd,
        "floor_transfer_offset_s": _median(ftos),
        "cases": {"tor_smooth": len(tor), "response_latency_s": len(lat), "pause_tor": len(ptor),
                  "stop_latency_s": len(stops), "backchannels_per_min": bcs, "backchannel_jsd": len(bco),
                  "floor_transfer_offset_s": len(ftos)},
    }


def evaluate_pairs(pairs: Iterable[RolePair], reference_histogram: Optional[np.ndarray] = None,
                   cfg: FdbConfig = FdbConfig()) -> dict[str, Any]:
    """The hook a model evaluation calls: each pair = a replayed user side and the model's side (its
    activity from VAD on its decoded audio, its words from its text stream), on one frame grid.
    ``reference_histogram``: the human backchannel-time histogram (``baseline.human_reference``)."""
    pairs = list(pairs)
    out = aggregate([pair_figures(p, cfg) for p in pairs], reference_histogram, cfg)
    out["sessions"] = len({p.session_id for p in pairs})
    return out


def evaluate_model(user: Side, model_activity: np.ndarray, model_words: Sequence[TimedWord],
                   reference_histogram: Optional[np.ndarray] = None, cfg: FdbConfig = FdbConfig(),
                   session_id: str = "") -> dict[str, Any]:
    """One session: (user timeline, model activity bool [F], model words) -> metrics."""
    model = Side(np.asarray(model_activity) != 0, tuple(sorted(model_words, key=lambda w: w.start_s)), "model")
    return evaluate_pairs([RolePair(session_id, user, model)], reference_histogram, cfg)
