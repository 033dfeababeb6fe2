"""Sidecar transcripts: JSON words, STM, RTTM, CTM and Praat TextGrid, parsed to timed segments.

Every reader returns ``Segment``s (speaker key, text, start/end seconds as exact rationals, and
whether the segment is one word or a whole utterance). ``to_words`` places them on the session
clock: word-level segments keep their own times (``timing="source"``); utterances are split into
words with times shared out by character length (``timing="interpolated"``). When an alignment
model is configured, utterances go through whisperX alignment instead (see whisperx_words.py).

``FORMATS`` is the one list of transcript formats: the manifest's ``transcript.format`` values, the
sidecar extensions ``microturn manifest`` recognises and the parsers all come from it. A new format is a
parser here plus its entry (and its tests).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal, Optional, Sequence

from microturn.clock import GRID, to_fraction
from microturn.records import StageError, Word
from microturn.storage import read_bytes


@dataclass(frozen=True)
class Segment:
    speaker: Optional[str]  # speaker id / tier name / channel key ("channel:1"); None when absent
    text: str
    start_s: Fraction
    end_s: Fraction
    level: Literal["word", "utterance"]


_NA = {"<NA>", "<na>", ""}
_IGNORE = {"ignore_time_segment_in_scoring", "<sil>", "sil", "sp", "<eps>"}


def _bad(uri: str, msg: str) -> StageError:
    return StageError("align", "bad_transcript", msg, source=uri)


def _level(text: str) -> Literal["word", "utterance"]:
    return "word" if len(text.split()) <= 1 else "utterance"


# Bounds on a time as written: ``Fraction("1e999999999")`` builds a 10**999999999 integer (hours of CPU,
# gigabytes), so a number is refused before it is converted when its text is long or its exponent large.
MAX_TIME_CHARS = 40
MAX_TIME_EXPONENT = 18
MAX_TIME_S = Fraction(10**9)  # ~31 years: no recording is longer; larger times are typos or attacks
_TIME_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?")


def parse_time(value: object) -> Fraction:
    """Exact seconds from a transcript time (a decimal string, an int or a float), with bounded cost.

    Raises ``ValueError`` for anything that is not a plain decimal number of at most
    ``MAX_TIME_CHARS`` characters with an exponent of at most ``MAX_TIME_EXPONENT``, or whose
    magnitude exceeds ``MAX_TIME_S``."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TIME_CHARS:
            raise ValueError(f"time {text[:MAX_TIME_CHARS]!r}... is longer than {MAX_TIME_CHARS} characters")
        m = _TIME_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a decimal number")
        if m.group(1) is not None and abs(int(m.group(1))) > MAX_TIME_EXPONENT:
            raise ValueError(f"time {text!r} has an exponent beyond +-{MAX_TIME_EXPONENT}")
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        raise ValueError("time is out of range")
    t = to_fraction(value)  # type: ignore[arg-type]
    if abs(t) > MAX_TIME_S:
        raise ValueError(f"time {float(t):.6g} s is out of range (|t| <= {MAX_TIME_S} s)")
    return t


def _load_json(text: str, uri: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise _bad(uri, "not valid JSON: JSON nested too deeply") from None
    except ValueError as exc:  # bad syntax, over-long integers
        raise _bad(uri, f"not valid JSON: {exc}") from None


def parse_json(text: str, uri: str) -> list[Segment]:
    data = _load_json(text, uri)
    items = data.get("words") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise _bad(uri, 'expected {"words": [...]}')
    out = []
    for i, w in enumerate(items):
        if not isinstance(w, dict):
            raise _bad(uri, f"words[{i}] is not an object")
        word = w.get("word", w.get("text"))
        if not isinstance(word, str) or "start" not in w or "end" not in w:
            raise _bad(uri, f"words[{i}] needs word, start and end")
        try:
            start, end = parse_time(w["start"]), parse_time(w["end"])
        except (TypeError, ValueError) as exc:
            raise _bad(uri, f"words[{i}]: bad time: {exc}") from None
        spk = w.get("speaker")
        out.append(Segment(str(spk) if spk is not None else None, word.strip(), start, end, "word"))
    return out


def _number(tok: str, uri: str, line: int) -> Fraction:
    try:
        return parse_time(tok)
    except ValueError as exc:
        raise _bad(uri, f"line {line}: {exc}") from None


def parse_stm(text: str, uri: str) -> list[Segment]:
    """``file channel speaker start end [<label>] transcript``; ``;;`` starts a comment."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split()
        if len(parts) < 5:
            raise _bad(uri, f"line {n}: STM needs file channel speaker start end [text]")
        start, end = _number(parts[3], uri, n), _number(parts[4], uri, n)
        rest = parts[5:]
        if rest and rest[0].startswith("<") and rest[0].endswith(">"):
            rest = rest[1:]
        words = [w for w in rest if w.lower() not in _IGNORE]
        if words:
            out.append(Segment(parts[2], " ".join(words), start, end, _level(" ".join(words))))
    return out


def parse_rttm(text: str, uri: str) -> list[Segment]:
    """RTTM: ``LEXEME`` lines are words; ``SPEAKER`` lines with an orthography field are utterances.
    Speaker turns without text carry no words (they are activity, which the VAD measures)."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith(";"):
            continue
        if len(parts) < 8:
            raise _bad(uri, f"line {n}: RTTM needs 9-10 fields")
        kind, start, dur, ortho, name = parts[0], _number(parts[3], uri, n), _number(parts[4], uri, n), parts[5], parts[7]
        if kind not in ("LEXEME", "SPEAKER") or ortho in _NA or ortho.lower() in _IGNORE:
            continue
        ortho = ortho.replace("_", " ")
        speaker = None if name in _NA else name
        out.append(Segment(speaker, ortho, start, start + dur, "word" if kind == "LEXEME" else _level(ortho)))
    return out


def parse_ctm(text: str, uri: str) -> list[Segment]:
    """``file channel start duration word [confidence]``; the channel is the speaker key."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith(";;"):
            continue
        if len(parts) < 5:
            raise _bad(uri, f"line {n}: CTM needs file channel start duration word")
        start, dur = _number(parts[2], uri, n), _number(parts[3], uri, n)
        if parts[4].lower() in _IGNORE:
            continue
        out.append(Segment(f"channel:{parts[1]}", parts[4], start, start + dur, "word"))
    return out


_TG_TOKEN = re.compile(r'"((?:[^"]|"")*)"|\[\s*\d+\s*\]|(<exists>|<absent>)|(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)')


def parse_textgrid(text: str, uri: str) -> list[Segment]:
    """Praat TextGrid, long or short text format; each interval tier is a speaker (MFA's
    ``speaker - words`` tiers are used and their ``phones`` tiers skipped)."""
    tokens: list[tuple[str, str]] = []
    for m in _TG_TOKEN.finditer(text):
        if m.group(1) is not None:
            tokens.append(("s", m.group(1).replace('""', '"')))
        elif m.group(3) is not None:
            tokens.append(("n", m.group(3)))
        elif m.group(2) is not None:
            tokens.append(("flag", m.group(2)))
    pos = 0

    def take(kind: str) -> str:
        nonlocal pos
        if pos >= len(tokens) or tokens[pos][0] != kind:
            raise _bad(uri, f"TextGrid: unexpected content near token {pos}")
        pos += 1
        return tokens[pos - 1][1]

    try:
        if take("s") != "ooTextFile" or take("s") != "TextGrid":
            raise _bad(uri, "not a Praat TextGrid")
        take("n"), take("n")
        if take("flag") != "<exists>":
            return []
        num_tiers = int(take("n"))
        out = []
        for _ in range(num_tiers):
            tier_class, name = take("s"), take("s")
            take("n"), take("n")
            size = int(take("n"))
            for _ in range(size):
                if tier_class == "IntervalTier":
                    xmin, xmax, label = parse_time(take("n")), parse_time(take("n")), take("s")
                else:  # point tier: a time and a mark
                    xmin = parse_time(take("n"))
                    xmax, label = xmin, take("s")
                words = " ".join(w for w in label.split() if w.lower() not in _IGNORE)
                if tier_class != "IntervalTier" or not words or name.lower().endswith("phones"):
                    continue
                speaker = name.rsplit(" - ", 1)[0] if name.lower().endswith(" - words") else name
                out.append(Segment(speaker, words, xmin, xmax, _level(words)))
    except ValueError as exc:
        raise _bad(uri, f"TextGrid: {exc}") from None
    return out


@dataclass(frozen=True)
class TranscriptFormat:
    name: str  # the manifest's ``transcript.format``
    extension: str  # of a sidecar file, as written (matched case-insensitively)
    parse: Callable[[str, str], list[Segment]]  # (text, uri) -> segments


FORMATS: dict[str, TranscriptFormat] = {
    f.name: f
    for f in (
        TranscriptFormat("json", ".json", parse_json),
        TranscriptFormat("stm", ".stm", parse_stm),
        TranscriptFormat("rttm", ".rttm", parse_rttm),
        TranscriptFormat("ctm", ".ctm", parse_ctm),
        TranscriptFormat("textgrid", ".TextGrid", parse_textgrid),
    )
}
TRANSCRIPT_FORMATS: tuple[str, ...] = tuple(FORMATS)


def format_of_extension(extension: str) -> Optional[str]:
    """The transcript format of a sidecar file extension (``".TextGrid"``, ``".stm"``...), or None."""
    for f in FORMATS.values():
        if f.extension.lower() == extension.lower():
            return f.name
    return None


def read_transcript(uri: str, fmt: str) -> list[Segment]:
    """Read and parse a transcript; bad files raise ``StageError("align", "bad_transcript")``."""
    try:
        raw = read_bytes(uri)
    except FileNotFoundError:
        raise StageError("align", "transcript_not_found", "transcript file does not exist", source=uri) from None
    except OSError as exc:
        raise StageError("align", "transcript_unreadable", str(exc), source=uri) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("utf-16")  # Praat writes UTF-16 TextGrids
        except UnicodeDecodeError:
            raise _bad(uri, "not UTF-8 or UTF-16 text") from None
    segments = FORMATS[fmt].parse(text, uri)
    for s in segments:
        if s.end_s < s.start_s or s.start_s < 0:
            raise _bad(uri, f"segment {s.text!r} has times {float(s.start_s)}..{float(s.end_s)}")
    return sorted(segments, key=lambda s: (s.start_s, s.end_s))


def speaker_to_stream(
    speaker: Optional[str], speakers: Sequence[str], channels: Sequence[int], channel_base: int = 1
) -> Optional[int]:
    """Index of the stream a transcript speaker belongs to (by id, then by channel); None = unknown.

    With a single stream (a mixed track) every speaker maps to it. Channel keys (``channel:2``,
    ``channel:B``) are matched to the streams' file channels; digits count from ``channel_base``
    (CTM's convention is 1)."""
    if len(speakers) == 1:
        return 0
    if speaker is None:
        return None
    lowered = [s.lower() for s in speakers]
    if speaker.lower() in lowered:
        return lowered.index(speaker.lower())
    if speaker.startswith("channel:"):
        key = speaker.split(":", 1)[1]
        if key.isdigit():
            ch = int(key) - channel_base
        elif len(key) == 1 and key.isalpha():
            ch = ord(key.upper()) - ord("A")
        else:
            return None
        if ch in channels:
            return list(channels).index(ch)
    return None


def channel_base(segments: Sequence[Segment]) -> int:
    """0 when any channel key is ``0`` (a 0-based file), else CTM's usual 1."""
    return 0 if any(s.speaker == "channel:0" for s in segments) else 1


def to_words(
    segments: Sequence[Segment], streams_of: Sequence[Optional[int]], offset_s: Fraction = Fraction(0)
) -> list[Word]:
    """Words on the session clock (24 kHz samples). ``streams_of[i]`` is the stream of segment i;
    segments of unknown speakers are skipped. ``offset_s`` shifts transcript time onto the session
    clock (transcripts are timed like the audio they describe)."""
    words: list[Word] = []
    for seg, stream in zip(segments, streams_of):
        if stream is None:
            continue
        start = GRID.seconds_to_samples(seg.start_s + offset_s)
        end = max(start, GRID.seconds_to_samples(seg.end_s + offset_s))
        tokens = seg.text.split()
        if seg.level == "word" or len(tokens) == 1:
            words.append(Word(" ".join(tokens), start, end, stream, "source"))
            continue
        # share the utterance's time out by characters (+1 for the space): a fair prior for speech
        weights = [len(t) + 1 for t in tokens]
        total = sum(weights)
        acc = 0
        for tok, w in zip(tokens, weights):
            w_start = start + (end - start) * acc // total
            acc += w
            w_end = start + (end - start) * acc // total
            words.append(Word(tok, w_start, w_end, stream, "interpolated"))
    words.sort(key=lambda w: (w.start_sample, w.stream))
    return words
