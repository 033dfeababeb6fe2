"""The ground truth of a synthetic session: what the generator intended (speech segments, words,
turn-taking events, offsets, cross-talk), as the tests and benchmarks check against; ``truth.json``
holds exactly a ``SessionTruth``. All times are on the session clock (see ``microturn.synth``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from microturn.synth.plan import Backchannel, Turn

Layout = Literal["per_speaker", "stereo", "mixed"]
SegmentKind = Literal["turn", "backchannel", "interruption"]
EventKind = Literal["turn", "gap", "pause", "overlap", "backchannel", "interruption"]

SPEAKERS = ("A", "B")
TRUTH_VERSION = 1


@dataclass(frozen=True)
class Voice:
    speaker: str
    f0_hz: float  # mean pitch
    formant_scale: float  # vocal tract length factor (1.0 = phones.VOWEL_FORMANTS_HZ)
    tilt: float  # harmonic roll-off exponent (amplitude ~ k**-tilt)


@dataclass(frozen=True)
class TruthSegment:
    """One stretch of continuous speech (an inter-pausal unit) of one speaker."""

    speaker: str
    start_s: float
    end_s: float
    kind: SegmentKind  # "interruption" marks the first segment of a turn that interrupted
    turn_index: int  # the turn it belongs to (for a backchannel: the other's turn it sits in)


@dataclass(frozen=True)
class TruthWord:
    speaker: str
    word: str  # syllable names joined by '-', e.g. "ba-lo"; backchannels "mm-hm", "uh-huh", "mm"
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TruthEvent:
    kind: EventKind
    start_s: float
    end_s: float
    speaker: Optional[str] = None  # who: the turn holder, pauser, backchanneller, interrupter, next speaker
    other: Optional[str] = None  # the other party (interrupted, backchannelled, previous speaker)
    # overlaps: "transition" | "interruption" | "backchannel"; turns: how they began
    # ("start" | "gap" | "overlap" | "interruption")
    cause: Optional[str] = None


@dataclass(frozen=True)
class SessionTruth:
    """What the generator intended for one session; ``truth.json`` holds exactly this."""

    session_id: str
    seed: int
    index: int
    duration_s: float
    sample_rate: int
    fps: int
    frame_size: tuple[int, int]  # (width, height)
    layout: Layout
    av_offset_ms: float  # video content lags the audio by this much (the sync error to estimate)
    video_start_s: Optional[float]  # start time of the video stream inside video.mp4; None without video
    audio_offsets_s: dict[str, float]  # source key ("A", "B", "stereo", "mixed") -> manifest offset_s
    leakage_db: float
    noise_db: float
    voices: tuple[Voice, ...]
    files: dict[str, str]  # role -> path relative to the session folder
    segments: tuple[TruthSegment, ...]
    words: tuple[TruthWord, ...]
    events: tuple[TruthEvent, ...]
    version: int = TRUTH_VERSION
    speakers: tuple[str, ...] = field(default=SPEAKERS)
    # how each voice reaches the other microphone: {"mode", "to_<mic>": {"from", "level_db",
    # "delay_ms", "rir", "rt60_s"}, "gain_db": {mic: dB}, "noise_db": {mic: dB}} (see microturn.synth.room)
    crosstalk: dict[str, Any] = field(default_factory=dict)

    def events_of(self, kind: EventKind) -> tuple[TruthEvent, ...]:
        return tuple(e for e in self.events if e.kind == kind)

    def segments_of(self, speaker: str) -> tuple[TruthSegment, ...]:
        return tuple(s for s in self.segments if s.speaker == speaker)

    def activity(self, speaker: str, rate_hz: float, num_frames: Optional[int] = None) -> np.ndarray:
        """bool [num_frames]: frame i (covering [i/rate, (i+1)/rate)) is mostly inside a speech segment."""
        n = int(np.ceil(self.duration_s * rate_hz)) if num_frames is None else num_frames
        centers = (np.arange(n) + 0.5) / rate_hz
        active = np.zeros(n, dtype=bool)
        for s in self.segments_of(speaker):
            active |= (centers >= s.start_s) & (centers < s.end_s)
        return active

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        d["speakers"] = list(self.speakers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SessionTruth":
        if d.get("version") != TRUTH_VERSION:
            raise ValueError(f"truth version {d.get('version')!r} is not {TRUTH_VERSION}")
        return cls(
            session_id=d["session_id"],
            seed=int(d["seed"]),
            index=int(d["index"]),
            duration_s=float(d["duration_s"]),
            sample_rate=int(d["sample_rate"]),
            fps=int(d["fps"]),
            frame_size=(int(d["frame_size"][0]), int(d["frame_size"][1])),
            layout=d["layout"],
            av_offset_ms=float(d["av_offset_ms"]),
            video_start_s=None if d["video_start_s"] is None else float(d["video_start_s"]),
            audio_offsets_s={k: float(v) for k, v in d["audio_offsets_s"].items()},
            leakage_db=float(d["leakage_db"]),
            noise_db=float(d["noise_db"]),
            voices=tuple(Voice(**v) for v in d["voices"]),
            files=dict(d["files"]),
            segments=tuple(TruthSegment(**s) for s in d["segments"]),
            words=tuple(TruthWord(**w) for w in d["words"]),
            events=tuple(TruthEvent(**e) for e in d["events"]),
            version=int(d["version"]),
            speakers=tuple(d["speakers"]),
            crosstalk=dict(d.get("crosstalk", {})),
        )


def load_truth(path: str | Path) -> SessionTruth:
    """Read a session's ``truth.json``."""
    return SessionTruth.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def seconds(samples: int, sr: int) -> float:
    # The nearest float to samples/sr; its repr is the exact decimal for rates like 16000 (k/16000 s
    # has at most 7 decimals), so microturn.clock reads the same sample back.
    return samples / sr


def truth_from_plan(
    turns: list[Turn], bcs: list[Backchannel], sr: int
) -> tuple[list[TruthSegment], list[TruthWord], list[TruthEvent]]:
    """The segments, words and events of a planned conversation, each sorted by start time."""
    segs: list[tuple[int, int, int, str, int]] = []  # speaker, start, end, kind, turn (samples)
    words: list[TruthWord] = []
    events: list[TruthEvent] = []
    for i, tr in enumerate(turns):
        spk = SPEAKERS[tr.speaker]
        for j, p in enumerate(tr.phrases):
            kind = "interruption" if (tr.began == "interruption" and j == 0) else "turn"
            segs.append((tr.speaker, p[0][0].start, p[-1][-1].end, kind, i))
            for w in p:
                name = "-".join(s.name for s in w)
                words.append(TruthWord(spk, name, seconds(w[0].start, sr), seconds(w[-1].end, sr)))
            if j > 0:
                prev_end = tr.phrases[j - 1][-1][-1].end
                events.append(TruthEvent("pause", seconds(prev_end, sr), seconds(p[0][0].start, sr), spk))
        events.append(TruthEvent("turn", seconds(tr.start, sr), seconds(tr.end, sr), spk, cause=tr.began))
    for bc in bcs:
        spk, other = SPEAKERS[bc.speaker], SPEAKERS[1 - bc.speaker]
        lo, hi = bc.word[0].start, bc.word[-1].end
        segs.append((bc.speaker, lo, hi, "backchannel", bc.host_turn))
        words.append(TruthWord(spk, "-".join(s.name for s in bc.word), seconds(lo, sr), seconds(hi, sr)))
        events.append(TruthEvent("backchannel", seconds(lo, sr), seconds(hi, sr), spk, other))
    floor_end = 0
    for prev, tr in zip(turns, turns[1:]):
        floor_end = max(floor_end, prev.end)
        a, b = SPEAKERS[tr.speaker], SPEAKERS[prev.speaker]
        if tr.start > floor_end:
            events.append(TruthEvent("gap", seconds(floor_end, sr), seconds(tr.start, sr), a, b))
        if tr.began == "interruption":
            events.append(TruthEvent("interruption", seconds(tr.start, sr), seconds(prev.end, sr), a, b))
    segs.sort(key=lambda s: (s[1], s[0]))
    events.extend(_overlap_events(segs, sr))
    segments = [
        TruthSegment(SPEAKERS[s], seconds(a, sr), seconds(b, sr), k, t)  # type: ignore[arg-type]
        for s, a, b, k, t in segs
    ]
    words.sort(key=lambda w: (w.start_s, w.speaker))
    order = {"turn": 0, "gap": 1, "pause": 2, "overlap": 3, "backchannel": 4, "interruption": 5}
    events.sort(key=lambda e: (e.start_s, order[e.kind], e.speaker or ""))
    return segments, words, events


def _overlap_events(segs: list[tuple[int, int, int, str, int]], sr: int) -> list[TruthEvent]:
    """Overlaps: every interval where both speak; the later starter says why. ``segs``: (speaker, start,
    end, kind, turn) in samples, sorted by start."""
    events: list[TruthEvent] = []
    for x in segs:
        for y in segs:
            if x[0] != 0 or y[0] != 1:
                continue
            lo, hi = max(x[1], y[1]), min(x[2], y[2])
            if lo >= hi:
                continue
            later = x if (x[1], x[0]) > (y[1], y[0]) else y
            if "backchannel" in (x[3], y[3]):
                cause = "backchannel"  # including a turn resuming during the other's backchannel
            else:
                cause = "interruption" if later[3] == "interruption" else "transition"
            first = y if later is x else x
            who, other = SPEAKERS[later[0]], SPEAKERS[first[0]]
            events.append(TruthEvent("overlap", seconds(lo, sr), seconds(hi, sr), who, other, cause))
    return events
