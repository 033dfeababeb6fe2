"""Synthetic two-party conversations with exact ground truth, for the demo, tests and benchmarks.

Each session is a set of real container files written with PyAV:

- ``video.mp4``: H.264 (MPEG-4 Part 2 when libx264 is missing) video whose left half brightens with
  speaker A's loudness and right half with speaker B's, plus AAC audio holding the *mixed* conversation;
- per-speaker audio (``A.wav``/``B.wav``; or one stereo file, or one mixed mono file, by ``layout``)
  with cross-talk of the other speaker carried through a room (see *Cross-talk* below) and each
  microphone's own noise floor;
- ``transcript.json``: the words with times, as a JSON transcript sidecar;
- ``truth.json``: everything the generator intended (``SessionTruth``): speech segments, words,
  turn-taking events, offsets.

The voices are speech-like rather than tones: voiced syllables built from a glottal-like harmonic
series shaped by moving formants, with pitch and loudness contours (declination, stress accents),
fricative noise onsets, word groups, phrases with pauses. Speaker A sits at ~110-130 Hz, B at
~190-230 Hz. Conversations hold gaps, overlapping transitions (the next speaker starts 40-200 ms before
the turn's natural end: people start a little early), backchannels ("mm-hm" inside the other's turn, not
taking the floor), interruptions (the other starts inside a turn and takes the floor; the interrupted
speaker talks on for about 0.3-0.7 s, then stops mid-word, well before the planned end of the turn)
and pauses within turns. The overlap lengths loosely follow conversation research: turn transitions
cluster around 0 to +200 ms with short overlaps, interruptions overlap for longer.

Clocks. The session clock starts at time 0 of ``video.mp4``, where its audio stream starts (and where
the earliest audio file starts). A manifest ``offset_s`` is the session time at which a source's own
time 0 sits: session time = source time + offset_s (a per-speaker file that starts late has a positive
offset; all truth times are on the session clock).
Inside the MP4 the video stream may start later than the audio stream (``video_start_s``; a
legitimate container start time, honoured through PTS). ``av_offset_ms`` is a *sync error*: the frame
shown at session time t displays the loudness at t - av_offset_ms. It is recorded only in the truth,
never in the manifest, so alignment can be checked for estimating it.

Cross-talk. With ``crosstalk="room"`` (the default) each voice reaches the other microphone through a
room: convolved with a room impulse response (a synthetic one, exponentially decaying noise with early
reflections and an RT60 of 0.2-0.7 s, or one of ``room_irs``, e.g. measured ones), delayed by the
travel time (2-8 ms), at a level 6-20 dB below the talker's own microphone (``leakage_db``: one value,
or ``None`` to draw each direction), and each microphone has its own gain (+-3 dB) and noise floor
(``noise_db`` +-4 dB). ``crosstalk="direct"`` is the old, easy bleed: a delayed copy at ``leakage_db``.
Everything drawn is recorded in ``truth.crosstalk``.

Everything is planned on integer sample positions and rendered with vectorised numpy; every file is
byte-identical for a given seed (bit-exact muxing, no timestamps, relative URIs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np

Layout = Literal["per_speaker", "stereo", "mixed"]
SegmentKind = Literal["turn", "backchannel", "interruption"]
EventKind = Literal["turn", "gap", "pause", "overlap", "backchannel", "interruption"]

SPEAKERS = ("A", "B")
TRUTH_VERSION = 1
TARGET_RMS = 0.08  # speech RMS of each clean voice over its active samples (about -22 dBFS)
VIDEO_REF_RMS = 2.5 * TARGET_RMS  # loudness that maps to full brightness

# Formants (Hz, F1..F3) of a ~120 Hz adult voice; other voices scale them.
_VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (290.0, 2250.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 870.0, 2240.0),
    "@": (500.0, 1500.0, 2500.0),  # schwa, as in "uh"
    "m": (260.0, 1100.0, 2300.0),  # closed-mouth nasal hum, as in "mm"
}
_VOICED_ONSETS: dict[str, tuple[float, float, float]] = {
    "b": (250.0, 900.0, 2200.0),
    "d": (280.0, 1700.0, 2600.0),
    "g": (280.0, 2000.0, 2300.0),
    "l": (360.0, 1300.0, 2700.0),
    "m": (260.0, 1100.0, 2300.0),
    "n": (280.0, 1500.0, 2500.0),
}
# Fricative noise bands (Hz), clipped below Nyquist at render time.
_NOISE_ONSETS: dict[str, tuple[float, float]] = {
    "s": (4000.0, 7500.0),
    "sh": (2000.0, 4500.0),
    "f": (1200.0, 6500.0),
    "h": (500.0, 3500.0),
}
_WORD_VOWELS = ("a", "e", "i", "o", "u")
_WORD_ONSETS = ("", "b", "d", "g", "l", "m", "n", "s", "sh", "f", "h")
_WORD_ONSET_P = np.array([2, 1, 1, 1, 1.5, 1, 1, 1.5, 1, 1, 1], dtype=float)
_BACKCHANNELS = ((("", "m"), ("h", "m")), (("", "@"), ("h", "@")), (("", "m"),))
_SYLLABLE_NAMES = {("", "m"): "mm", ("h", "m"): "hm", ("", "@"): "uh", ("h", "@"): "huh"}


# ---------------------------------------------------------------- ground truth records


@dataclass(frozen=True)
class Voice:
    speaker: str
    f0_hz: float  # mean pitch
    formant_scale: float  # vocal tract length factor (1.0 = the table above)
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
    # "delay_ms", "rir", "rt60_s"}, "gain_db": {mic: dB}, "noise_db": {mic: dB}} (see the module doc)
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


# ---------------------------------------------------------------- the conversation plan


@dataclass(frozen=True)
class _Syl:
    start: int  # samples at the synthesis rate
    end: int
    onset: str  # "" or a consonant
    onset_len: int  # samples of the consonant at the start of the syllable
    vowel: str
    f0_factor: float  # pitch relative to the voice's mean
    gain: float  # peak loudness, linear

    @property
    def name(self) -> str:
        return _SYLLABLE_NAMES.get((self.onset, self.vowel), self.onset + self.vowel)


Word = list[_Syl]
Phrase = list[Word]


@dataclass
class _Turn:
    speaker: int
    began: str  # "start" | "gap" | "overlap" | "interruption"
    phrases: list[Phrase]

    @property
    def start(self) -> int:
        return self.phrases[0][0][0].start

    @property
    def end(self) -> int:
        return self.phrases[-1][-1][-1].end

    def syllables(self) -> list[_Syl]:
        return [s for p in self.phrases for w in p for s in w]


@dataclass
class _Backchannel:
    speaker: int
    host_turn: int
    word: Word


class _Planner:
    """Draws one conversation as syllables on integer sample positions."""

    def __init__(self, rng: np.random.Generator, sample_rate: int, num_samples: int):
        self.rng = rng
        self.sr = sample_rate
        self.n = num_samples

    def samples(self, lo_s: float, hi_s: Optional[float] = None) -> int:
        """A duration in samples, uniform in [lo_s, hi_s] seconds (or exactly lo_s)."""
        sec = lo_s if hi_s is None else self.rng.uniform(lo_s, hi_s)
        return int(round(sec * self.sr))

    def word(self, start: int, n_syllables: int) -> Word:
        syls: Word = []
        t = start
        for _ in range(n_syllables):
            onset = str(self.rng.choice(_WORD_ONSETS, p=_WORD_ONSET_P / _WORD_ONSET_P.sum()))
            length = self.samples(0.13, 0.24)
            if onset in _NOISE_ONSETS:
                onset_len = self.samples(0.045, 0.08)
            elif onset:
                onset_len = self.samples(0.025, 0.045)
            else:
                onset_len = 0
            vowel = str(self.rng.choice(_WORD_VOWELS))
            syls.append(_Syl(t, t + length, onset, onset_len, vowel, 1.0, 1.0))
            t += length  # syllables of a word are contiguous: one voiced group
        return syls

    def phrase(self, start: int, n_words: int, *, min_end: Optional[int] = None) -> Phrase:
        """``n_words`` words, and more while the phrase ends before ``min_end`` (samples)."""
        words: Phrase = []
        t = start
        while len(words) < n_words or (min_end is not None and words[-1][-1].end < min_end):
            n_syl = int(self.rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
            w = self.word(t, n_syl)
            words.append(w)
            t = w[-1].end + self.samples(0.0, 0.035)  # short junctures between words
        return self._contour(words)

    def _contour(self, words: Phrase, *, rise: bool = False) -> Phrase:
        """Pitch declination and stress accents over a phrase; loudness falls a little toward its end."""
        syls = [s for w in words for s in w]
        pos = np.linspace(0.0, 1.0, len(syls)) if len(syls) > 1 else np.zeros(1)
        decl = (1.0 + 0.06 * pos) if rise else (1.08 - 0.16 * pos)
        out: Phrase = []
        i = 0
        for w in words:
            new_w: Word = []
            for j, s in enumerate(w):
                stressed = j == 0 and self.rng.random() < 0.7
                accent = 1.0 + (self.rng.uniform(0.04, 0.1) if stressed else self.rng.uniform(-0.03, 0.02))
                gain = (1.0 if stressed else self.rng.uniform(0.65, 0.85)) * (1.0 - 0.2 * pos[i])
                new_w.append(replace(s, f0_factor=float(decl[i] * accent), gain=float(gain)))
                i += 1
            out.append(new_w)
        return out

    def turn(
        self, speaker: int, start: int, began: str, *, long: bool = False, first_min_end: Optional[int] = None
    ) -> _Turn:
        """A turn from ``start``; ``first_min_end``: its first phrase goes on at least until then."""
        # A turn about to be interrupted needs room for the interruption (2 phrases of 3-5 words).
        n_phrases = 2 if long else int(self.rng.choice([1, 2, 3], p=[0.4, 0.45, 0.15]))
        phrases: list[Phrase] = []
        t = start
        for k in range(n_phrases):
            n_words = int(self.rng.integers(3, 6)) if long else int(self.rng.integers(2, 5))
            p = self.phrase(t, n_words, min_end=first_min_end if k == 0 else None)
            phrases.append(p)
            t = p[-1][-1].end + self.samples(0.25, 0.65)  # a pause within the turn
        return _Turn(speaker, began, phrases)

    def backchannel(self, start: int) -> Word:
        shape = _BACKCHANNELS[int(self.rng.integers(len(_BACKCHANNELS)))]
        syls: Word = []
        t = start
        for k, (onset, vowel) in enumerate(shape):
            # At most ~0.56 s in all, whether one syllable or two.
            length = self.samples(0.25, 0.55) if len(shape) == 1 else self.samples(0.12, 0.26)
            onset_len = self.samples(0.04, 0.06) if onset else 0
            syls.append(_Syl(t, t + length, onset, onset_len, vowel, 1.0, 1.0))
            t += length + (self.samples(0.015, 0.04) if k == 0 else 0)
        # Backchannels are soft and rise a little in pitch.
        contoured = self._contour([syls], rise=True)[0]
        return [replace(s, gain=0.6 * s.gain) for s in contoured]


def _truncate(turn: _Turn, keep: Callable[[_Syl], bool]) -> Optional[_Turn]:
    """The turn cut after its longest prefix of syllables that ``keep`` accepts (None when empty)."""
    phrases: list[Phrase] = []
    for p in turn.phrases:
        words: Phrase = []
        for w in p:
            kept = [s for s in w if keep(s)]
            if kept:
                words.append(kept)
            if len(kept) < len(w):
                break
        if words:
            phrases.append(words)
        if sum(map(len, words)) < sum(map(len, p)):
            break
    return _Turn(turn.speaker, turn.began, phrases) if phrases else None


def _cut_off(turn: _Turn, stop: int, min_syllable: int) -> _Turn:
    """The turn broken off at ``stop``, mid-syllable: later syllables dropped, the one under ``stop``
    ending there (kept at least ``min_syllable`` samples past its consonant onset, so it is audible)."""
    kept = _truncate(turn, lambda s: s.start < stop)
    if kept is None:  # not reached: stop lies well after the turn's start
        raise ValueError("cut before the turn starts")
    last_word = kept.phrases[-1][-1]
    s = last_word[-1]
    last_word[-1] = replace(s, end=min(s.end, max(stop, s.start + s.onset_len + min_syllable)))
    return kept


def _interruption_point(
    plan: _Planner, turn: _Turn, end_limit: int, other_free: int
) -> Optional[tuple[int, int]]:
    """(t_in, stop): where the other speaker breaks in and where this one, cut off, stops; None when the
    turn has no room. Both lie in one phrase, so the holder speaks all through [t_in, stop] (0.35-0.6 s:
    an interruption overlaps for longer than a turn transition does). t_in is at least 0.5 s into the
    turn and not before ``other_free`` (the interrupter is done with their own previous turn); stop is
    at least 0.25 s before the turn's planned end (something is left unsaid) and 0.9 s before the
    session's last speech (room for the interrupter to take the floor)."""
    d = plan.samples(0.35, 0.6)
    earliest = max(turn.start + plan.samples(0.5), other_free)
    latest_stop = min(turn.end - plan.samples(0.25), end_limit - plan.samples(0.9))
    spans = []
    for p in turn.phrases:
        lo = max(p[0][0].start, earliest)
        hi = min(p[-1][-1].end - plan.samples(0.1), latest_stop) - d
        if hi > lo:
            spans.append((lo, hi))
    if not spans:
        return None
    u = int(plan.rng.integers(sum(hi - lo for lo, hi in spans)))
    for lo, hi in spans:
        if u < hi - lo:
            return lo + u, lo + u + d
        u -= hi - lo
    raise AssertionError("unreachable")


def _plan_conversation(rng: np.random.Generator, sr: int, n: int) -> tuple[list[_Turn], list[_Backchannel]]:
    """Turns alternate between the speakers; each transition is a gap, an overlap or an interruption.

    The first three transitions are a shuffle of all three kinds, so any session long enough for four
    turns holds each of them; backchannels are placed afterwards inside long turns of the other speaker.
    Overlapping transitions overlap by at most 0.2 s, interruptions by at least ~0.3 s (see
    ``_interruption_point``): the overlap length is what tells them apart in the activity.
    """
    plan = _Planner(rng, sr, n)
    end_limit = n - plan.samples(0.35)
    schedule = list(rng.permutation(["gap", "overlap", "interruption"]))
    turns: list[_Turn] = []
    last_end = [0, 0]
    speaker = int(rng.integers(2))
    t = plan.samples(0.4, 0.8)
    began = "start"
    hold_until: Optional[int] = None  # an interrupter talks on past the moment the interrupted one stops
    while t < end_limit - plan.samples(0.5):
        if schedule:
            nxt = schedule.pop(0)
        else:
            nxt = str(rng.choice(["gap", "overlap", "interruption"], p=[0.45, 0.3, 0.25]))
        turn = plan.turn(speaker, t, began, long=(nxt == "interruption"), first_min_end=hold_until)
        hold_until = None
        if turn.end > end_limit:
            cut = _truncate(turn, lambda s: s.end <= end_limit)
            if cut is not None:
                turns.append(cut)
            break
        other_free = last_end[1 - speaker] + plan.samples(0.15)
        point = _interruption_point(plan, turn, end_limit, other_free) if nxt == "interruption" else None
        if nxt == "interruption" and point is None:
            schedule.insert(0, "interruption")  # still owed; this transition becomes an overlap
            nxt = "overlap"
        if point is not None:
            t_in, stop = point
            turn = _cut_off(turn, stop, plan.samples(0.05))
            next_start, began = t_in, "interruption"
            hold_until = turn.end + plan.samples(0.3)  # the interrupter holds on: they take the floor
        elif nxt == "overlap":
            # People start a little early at a turn's natural end: 40-200 ms of overlap.
            next_start = max(turn.end - plan.samples(0.04, 0.2), turn.start + plan.samples(0.3))
            began = "overlap"
        else:
            next_start = turn.end + plan.samples(0.2, 0.9)
            began = "gap"
        turns.append(turn)
        last_end[speaker] = turn.end
        speaker = 1 - speaker
        # Never let a speaker start a turn while still finishing their own previous one.
        next_start = max(next_start, last_end[speaker] + plan.samples(0.15))
        t = next_start
    return turns, _place_backchannels(plan, turns)


def _place_backchannels(plan: _Planner, turns: list[_Turn]) -> list[_Backchannel]:
    rng = plan.rng
    placed: list[_Backchannel] = []
    spans: list[list[tuple[int, int]]] = [[], []]
    for tr in turns:
        spans[tr.speaker].extend((p[0][0].start, p[-1][-1].end) for p in tr.phrases)
    margin = plan.samples(0.2)
    for i, tr in enumerate(turns):
        if tr.end - tr.start < plan.samples(1.6) or (placed and rng.random() > 0.5):
            continue
        listener = 1 - tr.speaker
        for _ in range(8):
            start = int(rng.integers(tr.start + plan.samples(0.4), tr.end - plan.samples(1.1)))
            word = plan.backchannel(start)
            lo, hi = word[0].start, word[-1].end
            if hi > tr.end - plan.samples(0.25):
                continue
            if any(lo < b + margin and a - margin < hi for a, b in spans[listener]):
                continue
            placed.append(_Backchannel(listener, i, word))
            spans[listener].append((lo, hi))
            break
    return placed


# ---------------------------------------------------------------- truth from the plan


def _sec(samples: int, sr: int) -> float:
    # The nearest float to samples/sr; its repr is the exact decimal for rates like 16000 (k/16000 s
    # has at most 7 decimals), so microturn.clock reads the same sample back.
    return samples / sr


def _truth_lists(
    turns: list[_Turn], bcs: list[_Backchannel], sr: int
) -> tuple[list[TruthSegment], list[TruthWord], list[TruthEvent]]:
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
                words.append(TruthWord(spk, name, _sec(w[0].start, sr), _sec(w[-1].end, sr)))
            if j > 0:
                prev_end = tr.phrases[j - 1][-1][-1].end
                events.append(TruthEvent("pause", _sec(prev_end, sr), _sec(p[0][0].start, sr), spk))
        events.append(TruthEvent("turn", _sec(tr.start, sr), _sec(tr.end, sr), spk, cause=tr.began))
    for bc in bcs:
        spk, other = SPEAKERS[bc.speaker], SPEAKERS[1 - bc.speaker]
        lo, hi = bc.word[0].start, bc.word[-1].end
        segs.append((bc.speaker, lo, hi, "backchannel", bc.host_turn))
        words.append(TruthWord(spk, "-".join(s.name for s in bc.word), _sec(lo, sr), _sec(hi, sr)))
        events.append(TruthEvent("backchannel", _sec(lo, sr), _sec(hi, sr), spk, other))
    floor_end = 0
    for prev, tr in zip(turns, turns[1:]):
        floor_end = max(floor_end, prev.end)
        a, b = SPEAKERS[tr.speaker], SPEAKERS[prev.speaker]
        if tr.start > floor_end:
            events.append(TruthEvent("gap", _sec(floor_end, sr), _sec(tr.start, sr), a, b))
        if tr.began == "interruption":
            events.append(TruthEvent("interruption", _sec(tr.start, sr), _sec(prev.end, sr), a, b))
    # Overlaps: every interval where both speak; the later starter says why.
    segs.sort(key=lambda s: (s[1], s[0]))
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
            events.append(TruthEvent("overlap", _sec(lo, sr), _sec(hi, sr), who, other, cause))
    segments = [
        TruthSegment(SPEAKERS[s], _sec(a, sr), _sec(b, sr), k, t)  # type: ignore[arg-type]
        for s, a, b, k, t in segs
    ]
    words.sort(key=lambda w: (w.start_s, w.speaker))
    order = {"turn": 0, "gap": 1, "pause": 2, "overlap": 3, "backchannel": 4, "interruption": 5}
    events.sort(key=lambda e: (e.start_s, order[e.kind], e.speaker or ""))
    return segments, words, events


# ---------------------------------------------------------------- rendering


def _ramp(length: int, attack: int, release: int) -> np.ndarray:
    """float64 [length]: raised-cosine attack and release around a flat top."""
    env = np.ones(length)
    a, r = min(attack, length // 3), min(release, length // 3)
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[length - r :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(r) + 1) / r)
    return env


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Unit-RMS noise limited to [lo_hz, hi_hz] (one FFT over the whole session)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo_hz) | (freqs > min(hi_hz, 0.47 * sr))] = 0.0
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _render_voice(
    rng: np.random.Generator, voice: Voice, syls: Sequence[_Syl], n: int, sr: int
) -> np.ndarray:
    """float64 [n]: one speaker's clean speech, normalised to TARGET_RMS over its active samples."""
    env = np.zeros(n)
    t_knots: list[float] = []
    f0_knots: list[float] = []
    fmt_knots: list[tuple[float, float, float]] = []
    noise_env = {k: np.zeros(n) for k in _NOISE_ONSETS}
    attack, release = int(0.012 * sr), int(0.03 * sr)
    for s in sorted(syls, key=lambda s: s.start):
        v_start = s.start + (s.onset_len if s.onset in _NOISE_ONSETS else 0)
        shape = _ramp(s.end - v_start, attack, release) * s.gain
        if s.onset in _VOICED_ONSETS:
            shape[: s.onset_len] *= np.linspace(0.35, 1.0, s.onset_len)  # a softer murmur before the vowel
        env[v_start : s.end] = np.maximum(env[v_start : s.end], shape)
        if s.onset in _NOISE_ONSETS:
            span = min(s.onset_len + int(0.01 * sr), s.end - s.start)
            burst = _ramp(span, int(0.01 * sr), int(0.015 * sr)) * s.gain
            noise_env[s.onset][s.start : s.start + span] = burst
        vowel_f = _VOWELS[s.vowel]
        onset_f = _VOICED_ONSETS.get(s.onset, vowel_f)
        nucleus = v_start + (s.onset_len if s.onset in _VOICED_ONSETS else 0)
        f0 = voice.f0_hz * s.f0_factor
        for t, f, fm in ((v_start, f0 * 1.02, onset_f), (nucleus, f0, vowel_f), (s.end, f0 * 0.96, vowel_f)):
            t_knots.append(float(t))
            f0_knots.append(f)
            fmt_knots.append(fm)

    idx = np.flatnonzero(env > 0)
    out = np.zeros(n)
    if idx.size == 0:
        return out
    tk = np.asarray(t_knots)
    # Slow random pitch drift (+-1.5 %) so no two syllables are the same tone.
    drift_t = np.arange(0, n + sr // 20, sr // 20, dtype=float)
    drift = np.interp(idx, drift_t, 0.015 * rng.uniform(-1, 1, drift_t.size))
    f0 = np.interp(idx, tk, np.asarray(f0_knots)) * (1.0 + drift)
    formants = np.asarray(fmt_knots) * voice.formant_scale
    fmt = [np.interp(idx, tk, formants[:, j]) for j in range(3)]
    bandwidths, formant_gains = (90.0, 110.0, 170.0), (1.0, 0.7, 0.35)
    phase = 2.0 * np.pi * np.cumsum(f0) / sr  # continuous within each voiced stretch
    top_hz = min(4500.0, 0.45 * sr)
    voiced = np.zeros(idx.size)
    rot = np.exp(1j * phase)  # e^{i k phase} by repeated multiplication: cheaper than sin per harmonic
    zk = np.ones(idx.size, dtype=np.complex128)
    for k in range(1, int(top_hz / f0.min()) + 1):
        zk *= rot
        fk = k * f0
        resonance = 0.04 + sum(
            w_j / (1.0 + ((fk - fmt[j]) * (1.0 / bandwidths[j])) ** 2) for j, w_j in enumerate(formant_gains)
        )
        voiced += ((k ** -voice.tilt) * resonance * (fk < top_hz)) * zk.imag
    voiced /= max(float(np.sqrt(np.mean(voiced**2))), 1e-12)
    voiced += 0.05 * rng.standard_normal(idx.size)  # breathiness
    out[idx] = voiced * env[idx]
    for onset, band in _NOISE_ONSETS.items():
        if noise_env[onset].any():
            out += 0.45 * _band_noise(rng, n, sr, *band) * noise_env[onset]
    active = (env > 0) | np.any([e > 0 for e in noise_env.values()], axis=0)
    return out * (TARGET_RMS / max(float(np.sqrt(np.mean(out[active] ** 2))), 1e-12))


def _background(rng: np.random.Generator, n: int, sr: int, level_db: float) -> np.ndarray:
    """Pinkish room noise at ``level_db`` relative to the speech level."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec /= np.sqrt(np.maximum(freqs, 50.0))
    x = np.fft.irfft(spec, n)
    return x * (TARGET_RMS * 10 ** (level_db / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12))


def synthetic_rir(rng: np.random.Generator, sr: int, rt60_s: float) -> np.ndarray:
    """A room impulse response: direct path, a few early reflections (2-25 ms later), then
    exponentially decaying noise reaching -60 dB at ``rt60_s`` (a diffuse late tail)."""
    n = int(round(rt60_s * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * 10 ** (-3.0 * t / rt60_s) * 0.3  # -60 dB at rt60
    h[0] = 1.0
    for _ in range(5):
        k = int(rng.integers(int(0.002 * sr), int(0.025 * sr)))
        h[k] += float(rng.uniform(-0.6, 0.6))
    return h


def trim_rir(h: np.ndarray) -> np.ndarray:
    """A measured response from its direct path on (the propagation delay is set separately)."""
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    start = int(np.argmax(np.abs(h) >= 0.1 * float(np.max(np.abs(h)))))
    return h[start:]


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` filtered by ``h``, same length as ``x`` (FFT convolution)."""
    size = 1 << int(np.ceil(np.log2(x.size + h.size - 1)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]


def room_bleed(source: np.ndarray, rir: Optional[np.ndarray], level_db: float, delay: int) -> np.ndarray:
    """``source`` as another microphone hears it: through ``rir`` (None: unfiltered) scaled to unit
    energy, ``delay`` samples later, ``level_db`` down (for a white source: its RMS relative to the
    source's; a unit-energy response neither adds nor removes power on average, whatever the
    source's spectrum, so a recording's rumble does not set the level of its speech)."""
    heard = np.asarray(source, dtype=np.float64)
    if rir is not None:
        h = np.asarray(rir, dtype=np.float64)
        heard = _convolve(heard, h / max(float(np.sqrt(np.sum(h**2))), 1e-12))
    return 10 ** (level_db / 20) * _delayed(heard, delay)


def _room_tracks(
    rng: np.random.Generator,
    clean: list[np.ndarray],
    sr: int,
    crosstalk: str,
    leakage_db: Optional[float],
    noise_db: float,
    room_irs: Optional[Sequence[np.ndarray]],
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Each microphone: its speaker + the other speaker through the room + its own noise floor.

    Levels are set on the clean voices (each at TARGET_RMS over its speech), so ``level_db`` is the
    other voice's level at this microphone relative to this microphone's own talker."""
    info: dict[str, Any] = {"mode": crosstalk, "gain_db": {}, "noise_db": {}}
    tracks = []
    for i, mic in enumerate(SPEAKERS):
        other = clean[1 - i]
        level = float(leakage_db) if leakage_db is not None else round(float(rng.uniform(-20.0, -6.0)), 2)
        delay = int(round(float(rng.uniform(0.002, 0.008)) * sr))
        gain = round(float(rng.uniform(-3.0, 3.0)), 2) if crosstalk == "room" else 0.0
        floor = round(noise_db + float(rng.uniform(-4.0, 4.0)), 2) if crosstalk == "room" else noise_db
        leak_info: dict[str, Any] = {"from": SPEAKERS[1 - i], "level_db": level, "delay_ms": round(1000 * delay / sr, 3)}
        h: Optional[np.ndarray] = None
        if crosstalk == "room":
            if room_irs:
                k = int(rng.integers(len(room_irs)))
                h, leak_info["rir"] = trim_rir(room_irs[k]), f"room_irs[{k}]"
            else:
                rt60 = round(float(rng.uniform(0.2, 0.7)), 3)
                h, leak_info["rir"], leak_info["rt60_s"] = synthetic_rir(rng, sr, rt60), "synthetic", rt60
        leak = room_bleed(other, h, level, delay)
        g = 10 ** (gain / 20)
        tracks.append(g * (clean[i] + leak + _background(rng, clean[i].size, sr, floor)))
        info[f"to_{mic}"] = leak_info
        info["gain_db"][mic], info["noise_db"][mic] = gain, floor
    return tracks, info


def _delayed(x: np.ndarray, d: int) -> np.ndarray:
    return np.concatenate([np.zeros(d), x[: x.size - d]]) if d > 0 else x


def _tone(t: np.ndarray, f0: float, partials: int, vibrato_hz: float = 0.0, depth: float = 0.0) -> np.ndarray:
    """Harmonic tone (1/k partials) with a sinusoidal vibrato of ``depth`` (relative pitch)."""
    phase = 2 * np.pi * f0 * (t - depth * np.cos(2 * np.pi * vibrato_hz * t) / (2 * np.pi * max(vibrato_hz, 1e-9)))
    return sum(np.sin(k * phase) / k for k in range(1, partials + 1))


def music_and_effects(seed: int = 0, sample_rate: int = 16000, seconds: float = 20.0) -> np.ndarray:
    """float64 [samples]: audio with no speech in it, for checking that the VAD stays quiet.

    In turn: a band (chords with vibrato, bass, kick and snare on a 2 Hz beat, hi-hat at 4 Hz, a
    lead melody with vibrato: pitched notes at the syllable rate, the hard case), applause (dense
    noise clicks), a bell and a whoosh (swept noise), then the band again. Deterministic per seed."""
    rng = np.random.default_rng([seed, 18])
    sr, n = sample_rate, int(round(seconds * sample_rate))
    t = np.arange(n) / sr
    x = np.zeros(n)
    band = (t < 0.45 * seconds) | (t >= 0.75 * seconds)
    chords = ([220.0, 277.2, 329.6], [196.0, 246.9, 293.7], [174.6, 220.0, 261.6], [164.8, 207.7, 246.9])
    for k in range(int(np.ceil(seconds / 2))):  # a chord every 2 s
        seg = (t >= 2 * k) & (t < 2 * k + 2) & band
        tt = t[seg] - 2 * k
        env = np.minimum(tt / 0.05, 1.0) * np.exp(-0.4 * tt)
        notes = chords[k % len(chords)]
        x[seg] += 0.05 * env * sum(_tone(tt, f, 8, 5.5, 0.012) for f in notes)
        x[seg] += 0.08 * env * _tone(tt, notes[0] / 4, 4)  # bass
    beat = 0.5
    for b in np.arange(0, seconds, beat / 2):
        s = int(b * sr)
        if not band[min(s, n - 1)]:
            continue
        m = min(n - s, int(0.25 * sr))
        tt = np.arange(m) / sr
        if int(round(b / (beat / 2))) % 2 == 0:  # kick on the beat, snare between
            x[s : s + m] += 0.3 * np.sin(2 * np.pi * (50 + 80 * np.exp(-tt / 0.03)) * tt) * np.exp(-tt / 0.08)
        else:
            x[s : s + m] += 0.1 * rng.standard_normal(m) * np.exp(-tt / 0.05)
        h = min(n - s, int(0.04 * sr))  # hi-hat: a short bright tick every half beat
        x[s : s + h] += 0.03 * np.diff(rng.standard_normal(h + 1)) * np.exp(-np.arange(h) / (0.01 * sr))
    melody = [440.0, 493.9, 523.3, 587.3, 523.3, 493.9, 440.0, 392.0]
    for k, start in enumerate(np.arange(0, seconds, 0.25)):  # a note every 250 ms (4 Hz)
        seg = (t >= start) & (t < start + 0.24) & band
        tt = t[seg] - start
        x[seg] += 0.04 * np.minimum(tt / 0.02, 1.0) * np.exp(-3 * tt) * _tone(tt, melody[k % len(melody)], 6, 6.0, 0.02)
    clap = (t >= 0.45 * seconds) & (t < 0.6 * seconds)  # applause: ~300 claps/s, each a 4 ms noise burst
    for s in np.sort(rng.integers(int(0.45 * seconds * sr), int(0.6 * seconds * sr), int(300 * 0.15 * seconds))):
        m = min(n - s, int(0.004 * sr))
        x[s : s + m] += 0.2 * rng.uniform(0.3, 1.0) * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.001 * sr))
    x[clap] = np.convolve(x[clap], np.ones(3) / 3, mode="same")
    bell = (t >= 0.6 * seconds) & (t < 0.675 * seconds)
    tb = t[bell] - 0.6 * seconds
    partials = (523.0, 1410.0, 2627.0, 3950.0)  # inharmonic, as a struck bell's
    x[bell] += 0.2 * np.exp(-tb / 0.4) * sum(np.sin(2 * np.pi * f * tb) / (i + 1) for i, f in enumerate(partials))
    whoosh = (t >= 0.675 * seconds) & (t < 0.75 * seconds)
    tw = (t[whoosh] - 0.675 * seconds) / (0.075 * seconds)
    noise = _band_noise(rng, int(whoosh.sum()), sr, 300.0, min(6000.0, 0.45 * sr))
    x[whoosh] += 0.15 * np.sin(np.pi * tw) * noise / max(float(np.std(noise)), 1e-12)
    return x / max(float(np.max(np.abs(x))), 1e-12) * 0.5


def loudness_envelope(wave: np.ndarray, sample_rate: int, times_s: np.ndarray, window_s: float) -> np.ndarray:
    """float64 [len(times_s)]: RMS of ``wave`` over a window centred on each time (0 outside the wave).

    The video cue is drawn from this; tests use it on the decoded audio to check sync.
    """
    cs = np.concatenate([[0.0], np.cumsum(np.asarray(wave, dtype=np.float64) ** 2)])
    half = window_s / 2
    lo = np.clip(np.round((times_s - half) * sample_rate).astype(np.int64), 0, wave.size)
    hi = np.clip(np.round((times_s + half) * sample_rate).astype(np.int64), 0, wave.size)
    width = hi - lo
    return np.where(width > 0, np.sqrt((cs[hi] - cs[lo]) / np.maximum(width, 1)), 0.0)


def _video_frames(
    rng: np.random.Generator,
    clean: Sequence[np.ndarray],
    sr: int,
    times_s: np.ndarray,
    frame_size: tuple[int, int],
    fps: int,
) -> np.ndarray:
    """uint8 [n, h * 3 // 2, w]: yuv420p frames (PyAV's layout: Y rows, then the U and V planes flat).

    Luma of the left half follows A's loudness and the right half B's, over a faint static texture;
    the halves are tinted (A cool, B warm) for people looking at the demo.
    """
    w, h = frame_size
    levels = np.stack([loudness_envelope(c, sr, times_s, 1.0 / fps) for c in clean], axis=1)  # [n, 2]
    luma = np.round(16.0 + 219.0 * np.clip(levels / VIDEO_REF_RMS, 0.0, 1.0)).astype(np.int16)
    left = np.arange(w) < w // 2
    rows = np.where(left[None, :], luma[:, :1], luma[:, 1:])  # [n, w]
    texture = rng.integers(-5, 6, size=(h, w), dtype=np.int16)
    y = rows[:, None, :] + texture[None]
    y[:, :, w // 2 - 1 : w // 2 + 1] = 16  # a dark divider
    left_c = np.arange(w // 2) < w // 4
    u = np.broadcast_to(np.where(left_c, 140, 112).astype(np.uint8), (h // 2, w // 2))
    v = np.broadcast_to(np.where(left_c, 118, 140).astype(np.uint8), (h // 2, w // 2))
    frames = np.empty((len(times_s), h * 3 // 2, w), dtype=np.uint8)
    frames[:, :h] = np.clip(y, 0, 255)
    frames[:, h:] = np.concatenate([u.ravel(), v.ravel()]).reshape(h // 2, w)
    return frames


# ---------------------------------------------------------------- container writing (PyAV)

_BITEXACT = {"fflags": "+bitexact"}  # no encoder version tags or creation times in the files
_CODEC_BITEXACT = {"flags": "+bitexact"}


def _pcm_frames(wave: np.ndarray, sr: int, block: int = 16384):
    """AudioFrames (packed s16) from float [channels, samples]."""
    import av

    ch = wave.shape[0]
    layout = "mono" if ch == 1 else "stereo"
    pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    for start in range(0, pcm.shape[1], block):
        part = np.ascontiguousarray(pcm[:, start : start + block].T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(part, format="s16", layout=layout)
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        yield frame


def _commit(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)


def write_audio_file(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write float [channels, samples] as 16-bit WAV or FLAC (by suffix), bit-exact."""
    import av

    fmt = {".wav": ("wav", "pcm_s16le"), ".flac": ("flac", "flac")}[path.suffix]
    tmp = path.with_name(f".{path.name}.partial")
    with av.open(str(tmp), "w", format=fmt[0], container_options=_BITEXACT) as out:
        stream = out.add_stream(fmt[1], rate=sample_rate, layout="mono" if wave.shape[0] == 1 else "stereo")
        stream.format = "s16"
        stream.options = dict(_CODEC_BITEXACT)
        for frame in _pcm_frames(wave, sample_rate):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    _commit(tmp, path)


def _video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(
    path: Path, frames: np.ndarray, fps: int, start_frame: int, mixed: np.ndarray, sample_rate: int
) -> str:
    """MP4 with yuv420p ``frames`` [n, h*3/2, w] from PTS ``start_frame`` (at 1/fps) and mono AAC audio
    from PTS 0. Returns the video codec used."""
    import av

    tmp = path.with_name(f".{path.name}.partial")
    codec = _video_codec()
    with av.open(str(tmp), "w", format="mp4", container_options=_BITEXACT) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1] * 2 // 3
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, fps)
        vs.codec_context.gop_size = 2 * fps
        opts = {**_CODEC_BITEXACT, "threads": "1"}
        if codec == "libx264":
            opts.update(preset="veryfast", crf="20")
        else:
            vs.bit_rate = 400_000
        vs.options = opts
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        aus.bit_rate = 64_000
        aus.options = {**_CODEC_BITEXACT, "aac_coder": "fast"}  # 3x faster than twoloop, same size
        # Interleave roughly by time so the file streams well.
        audio_frames = list(_float_frames(mixed, sample_rate))
        ai = 0
        for i, img in enumerate(frames):
            vt = (start_frame + i) / fps
            while ai < len(audio_frames) and audio_frames[ai].pts / sample_rate <= vt:
                out.mux(aus.encode(audio_frames[ai]))
                ai += 1
            vf = av.VideoFrame.from_ndarray(img, format="yuv420p")
            vf.pts = start_frame + i
            vf.time_base = Fraction(1, fps)
            out.mux(vs.encode(vf))
        for f in audio_frames[ai:]:
            out.mux(aus.encode(f))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    _commit(tmp, path)
    return codec


def _float_frames(wave: np.ndarray, sr: int, block: int = 4096):
    import av

    x = np.clip(wave, -1.0, 1.0).astype(np.float32)
    for start in range(0, x.size, block):
        block_x = np.ascontiguousarray(x[None, start : start + block])
        frame = av.AudioFrame.from_ndarray(block_x, format="fltp", layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        yield frame


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    _commit(tmp, path)


# ---------------------------------------------------------------- public API


def _voices(rng: np.random.Generator) -> tuple[Voice, Voice]:
    def draw(lo: float, hi: float, digits: int) -> float:
        return round(float(rng.uniform(lo, hi)), digits)

    # A: lower pitch, longer vocal tract, brighter; B: higher pitch, shorter tract, softer.
    a = Voice("A", draw(110, 130, 2), draw(0.96, 1.04, 3), draw(0.95, 1.1, 3))
    b = Voice("B", draw(190, 230, 2), draw(1.13, 1.22, 3), draw(1.05, 1.25, 3))
    return a, b


def _check_args(
    duration_s: float, layout: str, sample_rate: int, frame_size: tuple[int, int], fps: int, audio_format: str
) -> None:
    if not duration_s >= 2.0:
        raise ValueError(f"duration_s must be at least 2 s, got {duration_s!r}")
    if layout not in ("per_speaker", "stereo", "mixed"):
        raise ValueError(f"layout must be per_speaker, stereo or mixed, got {layout!r}")
    if sample_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
        raise ValueError(f"unsupported sample_rate {sample_rate!r}")
    w, h = frame_size
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ValueError(f"frame_size must be even and at least 16x16, got {frame_size!r}")
    if not 1 <= fps <= 60:
        raise ValueError(f"fps must be in 1..60, got {fps!r}")
    if audio_format not in ("wav", "flac"):
        raise ValueError(f"audio_format must be wav or flac, got {audio_format!r}")


def synthesize_session(
    out_dir: Path,
    session_id: str,
    *,
    seed: int = 0,
    index: int = 0,
    duration_s: float = 20.0,
    video: bool = True,
    av_offset_ms: float = 0.0,
    layout: Layout = "per_speaker",
    sample_rate: int = 16000,
    frame_size: tuple[int, int] = (160, 120),
    fps: int = 15,
    leakage_db: Optional[float] = None,
    noise_db: float = -45.0,
    vary_starts: bool = True,
    audio_format: Literal["wav", "flac"] = "wav",
    crosstalk: Literal["room", "direct"] = "room",
    room_irs: Optional[Sequence[np.ndarray]] = None,
) -> SessionTruth:
    """Write one session's media, transcript and truth into ``out_dir`` (created) and return the truth.

    The conversation depends only on (seed, index, duration_s, sample_rate), so session i of a corpus is
    the same whatever the number of sessions. ``vary_starts`` draws per-speaker file offsets (stated in
    the manifest) and a later video stream start inside the MP4; off, every source starts at 0.
    Cross-talk (``crosstalk``, ``leakage_db``, ``noise_db``, ``room_irs`` at ``sample_rate``): see the
    module doc; ``leakage_db=None`` draws each direction in -20..-6 dB (``"direct"``: -25 dB).
    """
    _check_args(duration_s, layout, sample_rate, frame_size, fps, audio_format)
    if crosstalk not in ("room", "direct"):
        raise ValueError(f"crosstalk must be room or direct, got {crosstalk!r}")
    if leakage_db is not None and not leakage_db <= 0:
        raise ValueError(f"leakage_db must be <= 0 (the other voice is quieter), got {leakage_db!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sr = sample_rate
    n = int(round(duration_s * sr))
    # Independent streams per purpose: changing how noise is drawn never changes the conversation.
    # spawn(5)[:4] == spawn(4): the room stream was added without changing the others
    children = np.random.SeedSequence([seed, index]).spawn(5)
    plan_rng, voice_rng, noise_rng, start_rng, room_rng = (np.random.default_rng(c) for c in children)

    voices = _voices(plan_rng)
    turns, bcs = _plan_conversation(plan_rng, sr, n)
    segments, words, events = _truth_lists(turns, bcs, sr)
    syls: list[list[_Syl]] = [[], []]
    for tr in turns:
        syls[tr.speaker].extend(tr.syllables())
    for bc in bcs:
        syls[bc.speaker].extend(bc.word)
    clean = [_render_voice(voice_rng, voices[i], syls[i], n, sr) for i in range(2)]

    # Per-speaker tracks: own voice + the other through the room + this microphone's noise.
    if leakage_db is None and crosstalk == "direct":
        leakage_db = -25.0
    tracks, room = _room_tracks(room_rng, clean, sr, crosstalk, leakage_db, noise_db, room_irs)
    mixed = clean[0] + clean[1] + _background(noise_rng, n, sr, noise_db)

    # One speaker's file starts with the session, the other's 20-350 ms later (whole milliseconds),
    # stated in the manifest; the lead-in silence (>= 0.4 s) means no speech is lost.
    late = int(start_rng.integers(2)) if vary_starts and start_rng.random() < 0.6 else None
    late_by = int(round(int(start_rng.integers(20, 351)) * sr / 1000))

    files: dict[str, str] = {}
    offsets: dict[str, float] = {}
    ext = audio_format
    if layout == "per_speaker":
        for i, spk in enumerate(SPEAKERS):
            off = late_by if i == late else 0
            write_audio_file(out_dir / f"{spk}.{ext}", tracks[i][None, off:], sr)
            files[f"audio_{spk}"] = f"{spk}.{ext}"
            offsets[spk] = _sec(off, sr)
    elif layout == "stereo":
        write_audio_file(out_dir / f"stereo.{ext}", np.stack(tracks), sr)
        files["audio_stereo"] = f"stereo.{ext}"
        offsets["stereo"] = 0.0
    else:
        write_audio_file(out_dir / f"mixed.{ext}", mixed[None], sr)
        files["audio_mixed"] = f"mixed.{ext}"
        offsets["mixed"] = 0.0

    video_start_s: Optional[float] = None
    if video:
        start_frame = int(start_rng.integers(0, 4)) if vary_starts else 0
        n_frames = int(np.floor(duration_s * fps)) - start_frame
        times = (start_frame + np.arange(n_frames)) / fps - av_offset_ms / 1000.0  # content times
        frames = _video_frames(noise_rng, clean, sr, times, frame_size, fps)
        write_mp4(out_dir / "video.mp4", frames, fps, start_frame, mixed, sr)
        files["video"] = "video.mp4"
        video_start_s = start_frame / fps

    transcript = {
        "words": [{"speaker": w.speaker, "word": w.word, "start": w.start_s, "end": w.end_s} for w in words]
    }
    _write_json(out_dir / "transcript.json", transcript)
    files["transcript"] = "transcript.json"
    files["truth"] = "truth.json"
    truth = SessionTruth(
        session_id=session_id,
        seed=seed,
        index=index,
        duration_s=_sec(n, sr),
        sample_rate=sr,
        fps=fps,
        frame_size=(int(frame_size[0]), int(frame_size[1])),
        layout=layout,
        av_offset_ms=float(av_offset_ms),
        video_start_s=video_start_s,
        audio_offsets_s=offsets,
        # the mean of the two directions' levels (each one is in crosstalk["to_<mic>"])
        leakage_db=round(float(np.mean([room[f"to_{m}"]["level_db"] for m in SPEAKERS])), 3),
        noise_db=float(noise_db),
        voices=voices,
        files=files,
        segments=tuple(segments),
        words=tuple(words),
        events=tuple(events),
        crosstalk=room,
    )
    _write_json(out_dir / "truth.json", truth.to_json())
    return truth


def manifest_row(truth: SessionTruth, folder: str) -> dict[str, Any]:
    """The manifest row for a session whose files sit in ``folder`` (relative to the manifest)."""
    f = truth.files
    audio: list[dict[str, Any]] = []
    if truth.layout == "per_speaker":
        audio = [
            {"uri": f"{folder}/{f[f'audio_{s}']}", "channel": 0, "speaker": s, "offset_s": truth.audio_offsets_s[s]}
            for s in SPEAKERS
        ]
    elif truth.layout == "stereo":
        audio = [
            {"uri": f"{folder}/{f['audio_stereo']}", "channel": i, "speaker": s, "offset_s": 0.0}
            for i, s in enumerate(SPEAKERS)
        ]
    else:
        audio = [{"uri": f"{folder}/{f['audio_mixed']}", "channel": 0, "speaker": None, "offset_s": 0.0}]
    return {
        "session_id": truth.session_id,
        "video": {"uri": f"{folder}/{f['video']}", "offset_s": 0.0} if "video" in f else None,
        "audio": audio,
        "transcript": {"uri": f"{folder}/{f['transcript']}", "format": "json"},
        "language": "en",
        "meta": {
            "generator": "microturn.synth",
            "seed": truth.seed,
            "index": truth.index,
            "truth": f"{folder}/{f['truth']}",
        },
    }


def synthesize_corpus(
    out_dir: Path,
    sessions: int = 4,
    seed: int = 0,
    duration_s: float = 20.0,
    *,
    video: bool = True,
    av_offset_ms: float | list[float] = 0.0,
    layout: Layout = "per_speaker",
    sample_rate: int = 16000,
    frame_size: tuple[int, int] = (160, 120),
    fps: int = 15,
    **session_kw: Any,
) -> Path:
    """Writes media + ground truth for ``sessions`` two-party conversations and ``out_dir/sessions.jsonl``
    (manifest rows as in microturn/manifest.py: session_id, video {uri, offset_s}, audio [{uri, channel,
    speaker, offset_s}], transcript {uri, format: "json"}, language "en", meta). URIs are relative to the
    manifest, so the corpus can move. Returns the manifest path.

    ``av_offset_ms`` is one value for all sessions or one per session. Session folders are
    ``out_dir/<session_id>/``; ids are ``synth-<seed>-<index:03d>``. Extra keywords go to
    ``synthesize_session`` (leakage_db, noise_db, vary_starts, audio_format, crosstalk, room_irs).
    """
    if sessions < 1:
        raise ValueError(f"sessions must be at least 1, got {sessions!r}")
    if isinstance(av_offset_ms, (int, float)):
        offsets = [float(av_offset_ms)] * sessions
    else:
        offsets = [float(x) for x in av_offset_ms]
    if len(offsets) != sessions:
        raise ValueError(f"av_offset_ms holds {len(offsets)} values for {sessions} sessions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(sessions):
        sid = f"synth-{seed}-{i:03d}"
        truth = synthesize_session(
            out_dir / sid,
            sid,
            seed=seed,
            index=i,
            duration_s=duration_s,
            video=video,
            av_offset_ms=offsets[i],
            layout=layout,
            sample_rate=sample_rate,
            frame_size=frame_size,
            fps=fps,
            **session_kw,
        )
        rows.append(manifest_row(truth, sid))
    manifest = out_dir / "sessions.jsonl"
    tmp = out_dir / ".sessions.jsonl.partial"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    _commit(tmp, manifest)
    return manifest


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m microturn.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--layout", choices=["per_speaker", "stereo", "mixed"], default="per_speaker")
    ap.add_argument("--av-offset-ms", type=float, default=0.0)
    ap.add_argument("--no-video", action="store_true")
    args = ap.parse_args(argv)
    path = synthesize_corpus(
        args.out,
        args.sessions,
        args.seed,
        args.duration,
        video=not args.no_video,
        av_offset_ms=args.av_offset_ms,
        layout=args.layout,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
