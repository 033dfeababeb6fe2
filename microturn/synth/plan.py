"""Planning one conversation: who says which syllables when, on integer sample positions.

Conversations hold gaps, overlapping transitions (the next speaker starts 40-200 ms before the turn's
natural end: people start a little early), backchannels ("mm-hm" inside the other's turn, not taking
the floor), interruptions (the other starts inside a turn and takes the floor; the interrupted speaker
talks on for about 0.3-0.7 s, then stops mid-word, well before the planned end of the turn) and pauses
within turns. The overlap lengths loosely follow conversation research: turn transitions cluster around
0 to +200 ms with short overlaps, interruptions overlap for longer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from microturn.synth.phones import (
    BACKCHANNEL_SHAPES,
    NOISE_ONSET_BANDS_HZ,
    SYLLABLE_NAMES,
    WORD_ONSET_WEIGHTS,
    WORD_ONSETS,
    WORD_VOWELS,
)


@dataclass(frozen=True)
class Syllable:
    start: int  # samples at the synthesis rate
    end: int
    onset: str  # "" or a consonant
    onset_len: int  # samples of the consonant at the start of the syllable
    vowel: str
    f0_factor: float  # pitch relative to the voice's mean
    gain: float  # peak loudness, linear

    @property
    def name(self) -> str:
        return SYLLABLE_NAMES.get((self.onset, self.vowel), self.onset + self.vowel)


Word = list[Syllable]
Phrase = list[Word]


@dataclass(frozen=True)
class Turn:
    speaker: int
    began: str  # "start" | "gap" | "overlap" | "interruption"
    phrases: list[Phrase]

    @property
    def start(self) -> int:
        return self.phrases[0][0][0].start

    @property
    def end(self) -> int:
        return self.phrases[-1][-1][-1].end

    def syllables(self) -> list[Syllable]:
        return [s for p in self.phrases for w in p for s in w]


@dataclass(frozen=True)
class Backchannel:
    speaker: int
    host_turn: int  # index of the other speaker's turn it sits in
    word: Word


class _Planner:
    """Draws words, phrases, turns and backchannels as syllables on integer sample positions."""

    def __init__(self, rng: np.random.Generator, sample_rate: int):
        self.rng = rng
        self.sr = sample_rate

    def samples(self, lo_s: float, hi_s: Optional[float] = None) -> int:
        """A duration in samples, uniform in [lo_s, hi_s] seconds (or exactly lo_s)."""
        sec = lo_s if hi_s is None else self.rng.uniform(lo_s, hi_s)
        return int(round(sec * self.sr))

    def word(self, start: int, n_syllables: int) -> Word:
        syls: Word = []
        t = start
        for _ in range(n_syllables):
            onset = str(self.rng.choice(WORD_ONSETS, p=WORD_ONSET_WEIGHTS / WORD_ONSET_WEIGHTS.sum()))
            length = self.samples(0.13, 0.24)
            if onset in NOISE_ONSET_BANDS_HZ:
                onset_len = self.samples(0.045, 0.08)
            elif onset:
                onset_len = self.samples(0.025, 0.045)
            else:
                onset_len = 0
            vowel = str(self.rng.choice(WORD_VOWELS))
            syls.append(Syllable(t, t + length, onset, onset_len, vowel, 1.0, 1.0))
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
    ) -> Turn:
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
        return Turn(speaker, began, phrases)

    def backchannel(self, start: int) -> Word:
        shape = BACKCHANNEL_SHAPES[int(self.rng.integers(len(BACKCHANNEL_SHAPES)))]
        syls: Word = []
        t = start
        for k, (onset, vowel) in enumerate(shape):
            # At most ~0.56 s in all, whether one syllable or two.
            length = self.samples(0.25, 0.55) if len(shape) == 1 else self.samples(0.12, 0.26)
            onset_len = self.samples(0.04, 0.06) if onset else 0
            syls.append(Syllable(t, t + length, onset, onset_len, vowel, 1.0, 1.0))
            t += length + (self.samples(0.015, 0.04) if k == 0 else 0)
        # Backchannels are soft and rise a little in pitch.
        contoured = self._contour([syls], rise=True)[0]
        return [replace(s, gain=0.6 * s.gain) for s in contoured]


def _truncate(turn: Turn, keep: Callable[[Syllable], bool]) -> Optional[Turn]:
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
    return Turn(turn.speaker, turn.began, phrases) if phrases else None


def _cut_off(turn: Turn, stop: int, min_syllable: int) -> Turn:
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
    plan: _Planner, turn: Turn, end_limit: int, other_free: int
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


def plan_conversation(rng: np.random.Generator, sr: int, n: int) -> tuple[list[Turn], list[Backchannel]]:
    """Turns alternate between the speakers; each transition is a gap, an overlap or an interruption.

    The first three transitions are a shuffle of all three kinds, so any session long enough for four
    turns holds each of them; backchannels are placed afterwards inside long turns of the other speaker.
    Overlapping transitions overlap by at most 0.2 s, interruptions by at least ~0.3 s (see
    ``_interruption_point``): the overlap length is what tells them apart in the activity.
    """
    plan = _Planner(rng, sr)
    end_limit = n - plan.samples(0.35)
    schedule = list(rng.permutation(["gap", "overlap", "interruption"]))
    turns: list[Turn] = []
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


def _place_backchannels(plan: _Planner, turns: list[Turn]) -> list[Backchannel]:
    rng = plan.rng
    placed: list[Backchannel] = []
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
            placed.append(Backchannel(listener, i, word))
            spans[listener].append((lo, hi))
            break
    return placed


def speaker_syllables(turns: list[Turn], backchannels: list[Backchannel]) -> list[list[Syllable]]:
    """Everything each speaker (0, 1) says: their turns' syllables, then their backchannels'."""
    syls: list[list[Syllable]] = [[], []]
    for tr in turns:
        syls[tr.speaker].extend(tr.syllables())
    for bc in backchannels:
        syls[bc.speaker].extend(bc.word)
    return syls
