"""Whole-session timelines stitched back from a corpus' windows, and the sides a turn-taking evaluation
compares (``Side``: one talker's activity and words; ``RolePair``: the user side and the model side).

A sample is a window of a session (docs/format.md): its activity, words and events are window-relative
codec frames. Windows are laid back at their ``start_frame``; windows may overlap (a tail window pulled
back), and then hold the same data, so overlapping frames are simply written twice. A word cut by a
window edge (``clipped``) is joined with its other piece. With ``max_samples`` a session may lose its
later windows: its timeline stops at the first frame no window covers (nothing after a hole is used).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from microturn.clock import GRID
from microturn.errors import FormatError
from microturn.format import decode_sample
from microturn.records import Event
from microturn.report import UserError
from microturn.report.corpus import Target, iter_raw_samples

MEMBERS_READ = ("activity.npy", "words.json", "events.json")  # (meta.json is always read)


@dataclass(frozen=True)
class TimedWord:
    text: str
    start_s: float  # from the timeline's start
    end_s: float


@dataclass(frozen=True)
class Side:
    """One talker on the codec frame grid: who, what they said when, and when they were speaking."""

    activity: np.ndarray  # bool [F]: speaking per codec frame (75 Hz) from the timeline's start
    words: tuple[TimedWord, ...]  # in start order
    speaker: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.activity.shape[0])


@dataclass(frozen=True)
class RolePair:
    """One evaluation case source: the user side (replayed) and the side in the model's role (a
    recorded human for the baseline, a model's output otherwise), on one frame grid of equal length."""

    session_id: str
    user: Side
    model: Side

    def __post_init__(self) -> None:
        if self.user.num_frames != self.model.num_frames:
            raise ValueError(f"{self.session_id}: user has {self.user.num_frames} frames, model "
                             f"{self.model.num_frames}")


@dataclass(frozen=True)
class SessionTimeline:
    session_id: str
    speakers: tuple[str, ...]
    start_frame: int  # session frame of the timeline's frame 0
    activity: np.ndarray  # uint8 [S, F]
    words: tuple[tuple[TimedWord, ...], ...]  # per stream
    events: tuple[Event, ...] = ()  # the corpus' own events, timeline frames
    # per-stream members read on request (``read_timelines(arrays=...)``), frames on the last axis:
    # e.g. "dmel.npy" uint8 [S, M, F], "text.npy" int32 [S, F]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def side(self, stream: int) -> Side:
        return Side(self.activity[stream] != 0, self.words[stream], self.speakers[stream])

    def role_pairs(self) -> list[RolePair]:
        """Each recorded speaker in the model's role in turn, the other as the user (two-stream sessions;
        a session of any other size has no user/model split and gives none)."""
        if len(self.speakers) != 2:
            return []
        return [RolePair(self.session_id, self.side(1 - m), self.side(m)) for m in (0, 1)]


# ---------------------------------------------------------------- reading a corpus


@dataclass
class Window:
    """One sample as stitching needs it: where it starts in the session, its real frames, its members."""

    start_frame: int
    valid_frames: int
    activity: np.ndarray
    words: list[dict[str, Any]]
    events: list[dict[str, Any]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def read_timelines(target: Target, max_samples: Optional[int] = None, arrays: tuple[str, ...] = ()
                   ) -> list[SessionTimeline]:  # fmt: skip
    """Every session of ``target`` (the first ``max_samples`` samples, in shard order), stitched; with
    ``arrays``, those per-stream members too (a model replay reads "dmel.npy" and "text.npy")."""
    windows: dict[str, list[Window]] = defaultdict(list)
    speakers: dict[str, tuple[str, ...]] = {}
    layout = target.layout
    for n, (key, members) in enumerate(_raw_samples(target)):
        if max_samples is not None and n >= max_samples:
            break
        try:
            s = decode_sample(members, key, table=layout.table, known=layout.known, only=MEMBERS_READ + arrays)
        except FormatError as exc:
            raise UserError(f"sample {key}: {exc.code}: {exc.message} (run `microturn validate`)") from None
        sid = str(s.meta["session_id"])
        speakers.setdefault(sid, tuple(s.meta["speakers"]))
        windows[sid].append(Window(int(s.meta["start_frame"]), min(int(s.meta["valid_frames"]), s.num_frames),
                                    s.arrays["activity.npy"], list(s.words), list(s.events),
                                    {name: s.arrays[name] for name in arrays}))  # fmt: skip
    return [stitch(sid, speakers[sid], ws) for sid, ws in windows.items()]


def _raw_samples(target: Target) -> Iterator[tuple[str, dict[str, bytes]]]:
    for ref in target.shards:
        yield from iter_raw_samples(ref.uri)


def stitch(session_id: str, speakers: tuple[str, ...], windows: Iterable[Window]) -> SessionTimeline:
    """Lay windows back on the session grid, up to the first frame none of them covers."""
    ordered = sorted(windows, key=lambda w: w.start_frame)
    origin = ordered[0].start_frame
    reach = origin
    kept: list[Window] = []
    for w in ordered:
        if w.start_frame > reach:
            break  # a hole (a window not read): the timeline stops here
        kept.append(w)
        reach = max(reach, w.start_frame + w.valid_frames)
    activity = np.zeros((len(speakers), reach - origin), dtype=np.uint8)
    stitched = {name: np.zeros((*a.shape[:-1], reach - origin), dtype=a.dtype) for name, a in kept[0].arrays.items()}
    words: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for w in kept:
        at = w.start_frame - origin
        activity[:, at : at + w.valid_frames] = w.activity[:, : w.valid_frames]
        for name, a in w.arrays.items():
            stitched[name][..., at : at + w.valid_frames] = a[..., : w.valid_frames]
        words += [_shifted(x, at) for x in w.words if int(x["start_frame"]) < w.valid_frames]
        events += [_shifted(e, at) for e in w.events if int(e["start_frame"]) < w.valid_frames]
    per_stream = tuple(tuple(_timed(x) for x in _join_words(words, s, reach - origin)) for s in range(len(speakers)))
    return SessionTimeline(session_id, speakers, origin, activity, per_stream, _join_events(events), stitched)


def _shifted(item: dict[str, Any], frames: int) -> dict[str, Any]:
    return {**item, "start_frame": int(item["start_frame"]) + frames, "end_frame": int(item["end_frame"]) + frames}


def _join_words(words: list[dict[str, Any]], stream: int, num_frames: int) -> list[dict[str, Any]]:
    """One entry per word: pieces of a word cut by window edges (clipped, same text, touching or
    overlapping) are joined; the copies overlapping windows hold are dropped."""
    mine = sorted((w for w in words if int(w.get("stream", 0)) == stream),
                  key=lambda w: (w["start_frame"], w["end_frame"]))
    out: list[dict[str, Any]] = []
    for w in mine:
        prev = out[-1] if out else None
        same = prev is not None and prev.get("text") == w.get("text")
        if same and (prev["start_frame"], prev["end_frame"]) == (w["start_frame"], w["end_frame"]):
            continue
        if same and prev.get("clipped") and w.get("clipped") and w["start_frame"] <= prev["end_frame"]:
            prev["end_frame"] = max(prev["end_frame"], w["end_frame"])
            continue
        out.append(dict(w))
    return [w for w in out if w["start_frame"] < num_frames]


def _timed(w: dict[str, Any]) -> TimedWord:
    return TimedWord(str(w.get("text", "")), float(GRID.frames_to_seconds(int(w["start_frame"]))),
                     float(GRID.frames_to_seconds(int(w["end_frame"]))))


def _join_events(events: list[dict[str, Any]]) -> tuple[Event, ...]:
    """Events cut by window edges joined back (same kind and streams, clipped pieces that touch)."""
    out: list[dict[str, Any]] = []
    last: dict[tuple, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: (e["start_frame"], e["end_frame"])):
        ident = (e["kind"], e.get("stream"), e.get("other"))
        prev = last.get(ident)
        if prev is not None and (prev["start_frame"], prev["end_frame"]) == (e["start_frame"], e["end_frame"]):
            continue
        if prev is not None and prev.get("clipped") and e.get("clipped") and e["start_frame"] <= prev["end_frame"]:
            prev["end_frame"] = max(prev["end_frame"], e["end_frame"])
            continue
        e = dict(e)
        out.append(e)
        last[ident] = e
    return tuple(Event(e["kind"], int(e["start_frame"]), int(e["end_frame"]), e.get("stream"), e.get("other"))
                 for e in out)
