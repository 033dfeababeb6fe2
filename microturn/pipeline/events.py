"""Turn-taking events from the aligned timeline (speech activity per stream on the codec frame grid).

Definitions (thresholds in ``EventsConfig``, documented in docs/format.md):

1. **Utterances (IPUs)**: runs of activity per stream; silences shorter than ``merge_silence_ms`` inside
   a stream's speech are bridged first (they are articulation, not pauses).
2. **Backchannel**: an utterance of B no longer than ``backchannel_max_ms`` that sits inside another
   speaker A's turn: A spoke within ``pause_max_ms`` before it (or is speaking when it starts), A speaks
   again within ``pause_max_ms`` after it ends (or is still speaking), and B does not speak again before
   A does. Backchannels do not take the floor.
3. **Turns**: the remaining utterances in time order. An utterance of the floor holder within
   ``pause_max_ms`` of its turn extends the turn; a longer silence starts a new turn. Another speaker's
   utterance takes the floor unless it ends before the holder's speech so far, or the holder has speech
   that starts before it ends and outlasts it (a competing overlap the holder wins).
4. **Gap**: the all-silent interval at a floor transfer (``min_gap_ms`` or longer); ``stream`` is the
   next speaker, ``other`` the previous holder.
5. **Pause**: a silence of the holder between two utterances of one turn; ``stream`` is the holder.
6. **Overlap**: a stretch where two or more streams speak at once (``min_overlap_ms`` or longer);
   ``stream`` is the speaker who joined, ``other`` the one who was already talking.
7. **Interruption**: a floor transfer in which the new speaker starts while the holder is speaking and
   the two overlap for at least ``interruption_min_overlap_ms``; it spans from the new speaker's onset
   to the moment the holder stops; ``stream`` is the interrupter, ``other`` the interrupted speaker. A
   shorter overlap at a floor transfer is an overlapping turn transition (the next speaker starting a
   little early as the holder finishes): only its ``overlap`` is labelled. Transitions cluster around
   0 to +200 ms in conversation research while interruptions overlap for longer; the overlap length is
   the cue activity offers (whether the holder's utterance was cut short would need their intent).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Sequence

import numpy as np

from microturn.clock import GRID, Grid
from microturn.config import EventsConfig
from microturn.records import Event


@dataclass(frozen=True)
class _Ipu:
    stream: int
    start: int  # frame
    end: int  # frame, exclusive


@dataclass(frozen=True)
class _Frames:
    """Thresholds converted once to codec frames."""

    backchannel_max: int
    min_overlap: int
    interruption_min_overlap: int
    min_gap: int
    pause_max: int
    merge_silence: int

    @classmethod
    def of(cls, cfg: EventsConfig, grid: Grid = GRID) -> "_Frames":
        def frames(ms: int) -> int:
            return grid.seconds_to_frames(Fraction(ms, 1000), "nearest")

        return cls(
            backchannel_max=frames(cfg.backchannel_max_ms),
            min_overlap=max(1, frames(cfg.min_overlap_ms)),
            interruption_min_overlap=max(1, frames(cfg.interruption_min_overlap_ms)),
            min_gap=max(1, frames(cfg.min_gap_ms)),
            pause_max=frames(cfg.pause_max_ms),
            merge_silence=frames(cfg.merge_silence_ms),
        )


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D boolean array."""
    padded = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def bridge_silences(mask: np.ndarray, max_silence: int) -> np.ndarray:
    """Fill internal silences shorter than ``max_silence`` frames (leading/trailing silence kept)."""
    out = mask.astype(bool).copy()
    if max_silence <= 0:
        return out
    spans = runs(out)
    for (_, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 - e0 < max_silence:
            out[e0:s1] = True
    return out


def _check_activity(activity: np.ndarray) -> np.ndarray:
    arr = np.asarray(activity)
    if arr.ndim != 2:
        raise ValueError(f"activity must be [streams, frames], got shape {arr.shape}")
    return arr != 0


def _backchannel_host(u: _Ipu, holder: int, speech: np.ndarray, next_start: int, th: _Frames) -> bool:
    """Whether ``u`` (not the holder's) is a backchannel inside the holder's turn: short, starting
    while the holder speaks or within a pause of at most ``pause_max`` of the holder's, the holder
    speaking again within ``pause_max`` of its end, and its speaker silent until the holder does."""
    if u.end - u.start > th.backchannel_max:
        return False
    row = speech[holder]
    if not row[u.start]:
        lo = max(0, u.start - th.pause_max)
        before = np.flatnonzero(row[lo : u.start])
        after = np.flatnonzero(row[u.start : u.start + th.pause_max + 1])
        if before.size == 0 or after.size == 0:
            return False
        if (u.start + int(after[0])) - (lo + int(before[-1]) + 1) > th.pause_max:
            return False  # the silence around it is longer than a pause: the holder's turn was over
    back = np.flatnonzero(row[u.end - 1 : u.end + th.pause_max])
    if back.size == 0:
        return False  # the holder does not go on after it
    resumes = u.end - 1 + int(back[0])
    if resumes >= u.end:  # the holder is silent as it ends: that silence must be a pause too
        before = np.flatnonzero(row[max(0, u.end - th.pause_max) : u.end])
        if before.size == 0 or resumes - (max(0, u.end - th.pause_max) + int(before[-1]) + 1) > th.pause_max:
            return False
    return next_start >= resumes


def detect_events(activity: np.ndarray, cfg: EventsConfig, grid: Grid = GRID) -> list[Event]:
    """Label turns, gaps, pauses, overlaps, backchannels and interruptions.

    ``activity``: uint8 [streams, frames] on the codec frame grid (nonzero = speaking). Returns events
    on the same grid (``end_frame`` exclusive), sorted by (start_frame, kind, stream).
    """
    raw = _check_activity(activity)
    th = _Frames.of(cfg, grid)
    speech = np.stack([bridge_silences(row, th.merge_silence) for row in raw]) if raw.size else raw
    ipus: list[_Ipu] = []
    next_start: dict[_Ipu, int] = {}
    for s in range(speech.shape[0]):
        mine = [_Ipu(s, a, b) for a, b in runs(speech[s])]
        for u, v in zip(mine, mine[1:] + [None]):
            next_start[u] = v.start if v is not None else speech.shape[1] + th.pause_max + 1
        ipus += mine
    ipus.sort(key=lambda u: (u.start, u.stream))
    events = _floor_events(ipus, speech, next_start, th) + _overlap_events(speech, th)
    events.sort(key=lambda e: (e.start_frame, e.kind, -1 if e.stream is None else e.stream, e.end_frame))
    return events


def _floor_events(ipus: list[_Ipu], speech: np.ndarray, next_start: dict[_Ipu, int], th: _Frames) -> list[Event]:
    """Walk the utterances in time order, tracking who holds the floor: turns, pauses, gaps,
    backchannels and interruptions."""
    out: list[Event] = []
    by_stream: dict[int, list[_Ipu]] = {}
    for u in ipus:
        by_stream.setdefault(u.stream, []).append(u)

    def holder_outlasts(holder: int, u: _Ipu) -> bool:
        return any(v.start <= u.start and u.end <= v.end for v in by_stream.get(holder, ()))

    turn: Optional[list[_Ipu]] = None  # the utterances of the current turn, all by its holder
    for u in ipus:
        if turn is None:
            turn = [u]
            continue
        holder, end = turn[0].stream, max(v.end for v in turn)
        if u.stream == holder:
            if u.start - end > th.pause_max:  # a long silence ends the turn; the speaker starts anew
                out += _close_turn(turn, th)
                turn = []
            turn.append(u)
            continue
        if _backchannel_host(u, holder, speech, next_start[u], th):
            out.append(Event("backchannel", u.start, u.end, stream=u.stream, other=holder))
            continue
        if holder_outlasts(holder, u):
            continue  # said entirely over one utterance of the holder, who keeps the floor (an overlap)
        out += _close_turn(turn, th)
        if u.start >= end:
            if u.start - end >= th.min_gap:
                out.append(Event("gap", end, u.start, stream=u.stream, other=holder))
        elif end - u.start >= th.interruption_min_overlap:  # shorter: an overlapping turn transition
            out.append(Event("interruption", u.start, end, stream=u.stream, other=holder))
        turn = [u]
    if turn:
        out += _close_turn(turn, th)
    return out


def _close_turn(turn: list[_Ipu], th: _Frames) -> list[Event]:
    speaker = turn[0].stream
    out = [Event("turn", turn[0].start, max(v.end for v in turn), stream=speaker)]
    reach = turn[0].end
    for v in turn[1:]:
        if v.start - reach >= th.min_gap:
            out.append(Event("pause", reach, v.start, stream=speaker))
        reach = max(reach, v.end)
    return out


def _overlap_events(speech: np.ndarray, th: _Frames) -> list[Event]:
    if speech.shape[0] < 2:
        return []
    out = []
    for a, b in runs(speech.sum(axis=0) >= 2):
        if b - a < th.min_overlap:
            continue
        talking = np.flatnonzero(speech[:, a])
        # who was there first: the talking stream whose current utterance started earliest
        onsets = {int(s): _onset(speech[s], a) for s in talking}
        order = sorted(onsets, key=lambda s: (onsets[s], s))
        out.append(Event("overlap", a, b, stream=order[-1], other=order[0]))
    return out


def _onset(row: np.ndarray, frame: int) -> int:
    silent = np.flatnonzero(~row[: frame + 1])
    return int(silent[-1]) + 1 if silent.size else 0


# ---------------------------------------------------------------- statistics


def duration_distribution(durations_s: Sequence[float]) -> dict[str, Any]:
    """count, mean, median, p10, p90, max and total of durations in seconds (None when empty)."""
    if not durations_s:
        return {"count": 0, "mean_s": None, "median_s": None, "p10_s": None, "p90_s": None, "max_s": None,
                "total_s": 0.0}
    arr = np.asarray(durations_s, dtype=np.float64)
    return {
        "count": int(arr.size),
        "mean_s": round(float(arr.mean()), 4),
        "median_s": round(float(np.median(arr)), 4),
        "p10_s": round(float(np.percentile(arr, 10)), 4),
        "p90_s": round(float(np.percentile(arr, 90)), 4),
        "max_s": round(float(arr.max()), 4),
        "total_s": round(float(arr.sum()), 4),
    }


def session_event_stats(
    activity: np.ndarray, events: Sequence[Event], cfg: Optional[EventsConfig] = None, grid: Grid = GRID
) -> dict[str, Any]:
    """Per-session turn-taking statistics (JSON-able).

    ``speech_ratio``: frames where anyone speaks / all frames; ``overlap_ratio``: frames where two or
    more speak / frames where anyone speaks; gap, pause and overlap duration distributions in seconds;
    counts and rates per minute of turns, backchannels and interruptions; ``transition_offsets``:
    floor-transfer offsets (next turn's start - previous turn's end, between turns of different
    streams: positive = gap, negative = overlapping transition or interruption), the classic FTO measure.
    """
    raw = _check_activity(activity)
    frames = raw.shape[1]
    minutes = float(grid.frames_to_seconds(frames)) / 60 if frames else 0.0
    talking = raw.sum(axis=0) if raw.size else np.zeros(frames, dtype=np.int64)
    speech_frames = int((talking >= 1).sum())
    overlap_frames = int((talking >= 2).sum())

    def seconds(e: Event) -> float:
        return float(grid.frames_to_seconds(e.end_frame - e.start_frame))

    by_kind: dict[str, list[Event]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    turns = sorted(by_kind.get("turn", []), key=lambda e: (e.start_frame, e.end_frame))
    transfers = [float(grid.frames_to_seconds(b.start_frame - a.end_frame))
                 for a, b in zip(turns, turns[1:]) if a.stream != b.stream]

    def rate(kind: str) -> Optional[float]:
        return round(len(by_kind.get(kind, [])) / minutes, 4) if minutes else None

    return {
        "frames": frames,
        "duration_s": round(float(grid.frames_to_seconds(frames)), 4),
        "streams": int(raw.shape[0]),
        "speech_ratio": round(speech_frames / frames, 6) if frames else 0.0,
        "overlap_ratio": round(overlap_frames / speech_frames, 6) if speech_frames else 0.0,
        "counts": {k: len(by_kind.get(k, [])) for k in ("turn", "gap", "pause", "overlap", "backchannel",
                                                       "interruption")},
        "gaps": duration_distribution([seconds(e) for e in by_kind.get("gap", [])]),
        "pauses": duration_distribution([seconds(e) for e in by_kind.get("pause", [])]),
        "overlaps": duration_distribution([seconds(e) for e in by_kind.get("overlap", [])]),
        "transition_offsets": duration_distribution(transfers),
        "turns_per_min": rate("turn"),
        "backchannels_per_min": rate("backchannel"),
        "interruptions_per_min": rate("interruption"),
        "backchannel_rate": round(len(by_kind.get("backchannel", [])) / max(1, len(by_kind.get("turn", []))), 4),
        "interruption_rate": round(len(by_kind.get("interruption", [])) / max(1, len(by_kind.get("turn", []))), 4),
    }
