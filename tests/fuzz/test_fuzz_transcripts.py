"""Fuzzed transcripts in all five formats: each file is segments or ``StageError("align", ...)``.

Inputs are built from the formats' own tokens (so many parse, and the parsers' deeper paths run) mixed
with numbers that cost a naive parser hours (``1e999999999``), overlong digits, odd text and bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.align.transcripts import MAX_TIME_S, TRANSCRIPT_FORMATS, read_transcript
from microturn.records import StageError
from tests.fuzz.fuzzkit import FUZZ, record

pytestmark = pytest.mark.slow

NUMBERS = st.sampled_from([
    "0", "1.5", "-0.25", "3.", ".5", "1e3", "2.5E-2", "1e999999999", "-1e999999999", "1e-999999999", "9" * 60,
    "1" + "0" * 4400, "nan", "inf", "1/3", "0x10", "1_000", "+7", "1e18", "1e19", "12345678901",
]) | st.integers(-10, 10**6).map(str) | st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str)
WORDS = st.sampled_from(["hello", "<NA>", "<sil>", "<o,f0,male>", ";;", "[/]", "é", '"', '""', "\t", "_a_b"]) | st.text(max_size=6)
TOKEN = NUMBERS | WORDS


def _line(tokens: list[str]) -> str:
    return " ".join(tokens)


def _lines(prefix: st.SearchStrategy, n_numbers: int) -> st.SearchStrategy:
    """Lines shaped like the format (prefix fields, numbers, words), some with tokens dropped."""
    row = st.tuples(prefix, st.lists(NUMBERS, min_size=n_numbers, max_size=n_numbers), st.lists(TOKEN, max_size=4))
    shaped = row.map(lambda r: _line([*r[0], *r[1], *r[2]]))
    return st.lists(shaped | st.lists(TOKEN, max_size=6).map(_line), max_size=5).map("\n".join)


STM = _lines(st.tuples(st.just("rec"), st.sampled_from(["1", "A"]), st.sampled_from(["A", "B", "<NA>"])), 2)
CTM = _lines(st.tuples(st.just("rec"), st.sampled_from(["1", "2", "0", "A"])), 2)
RTTM = st.tuples(
    st.sampled_from(["LEXEME", "SPEAKER", "NOISE"]), NUMBERS, NUMBERS, WORDS, st.sampled_from(["spk1", "<NA>", "B"])
).map(lambda t: f"{t[0]} rec 1 {t[1]} {t[2]} {t[3]} lex {t[4]} <NA> <NA>")
RTTM_DOC = st.lists(RTTM | st.lists(TOKEN, max_size=9).map(_line), max_size=5).map("\n".join)
JSON_WORD = st.fixed_dictionaries(
    {"word": WORDS, "start": NUMBERS | st.floats() | st.integers(), "end": NUMBERS | st.floats()},
    optional={"speaker": st.none() | WORDS | st.integers()},
)
JSON_DOC = st.one_of(
    st.lists(JSON_WORD, max_size=4).map(lambda ws: json.dumps({"words": ws})),
    st.lists(JSON_WORD, max_size=3).map(json.dumps),
    st.sampled_from(["[" * 100_000, '{"words": 5}', "{}", "null", '{"words": [1, "a", null]}']),
)
TG_INTERVAL = st.tuples(NUMBERS, NUMBERS, WORDS).map(lambda t: f'{t[0]}\n{t[1]}\n"{t[2]}"')
TG_TIER = st.tuples(
    st.sampled_from(["IntervalTier", "TextTier"]), st.sampled_from(["A", "B - words", "B - phones"]),
    st.lists(TG_INTERVAL, max_size=3), st.integers(-1, 5),
).map(lambda t: f'"{t[0]}"\n"{t[1]}"\n0\n9\n{t[3] if t[3] >= 0 else len(t[2])}\n' + "\n".join(t[2]))
TEXTGRID = st.tuples(st.lists(TG_TIER, max_size=3), st.sampled_from(["<exists>", "<absent>"]), st.integers(-1, 4)).map(
    lambda t: f'File type = "ooTextFile"\nObject class = "TextGrid"\n0\n9\n{t[1]}\n'
    f'{t[2] if t[2] >= 0 else len(t[0])}\n' + "\n".join(t[0])
)
DOCS = {"stm": STM, "ctm": CTM, "rttm": RTTM_DOC, "json": JSON_DOC, "textgrid": TEXTGRID}
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])


def _check(fmt: str, path: Path, raw: bytes) -> None:
    path.write_bytes(raw)
    try:
        segments = read_transcript(str(path), fmt)
    except StageError as exc:
        assert exc.stage == "align" and exc.reason == "bad_transcript", exc
        record(f"transcript_{fmt}", exc.reason)
        return
    for s in segments:  # what comes back is bounded and ordered
        assert 0 <= s.start_s <= s.end_s <= 2 * MAX_TIME_S
    assert segments == sorted(segments, key=lambda s: (s.start_s, s.end_s))
    record(f"transcript_{fmt}", "ok" if segments else "ok_empty")


@pytest.mark.parametrize("fmt", TRANSCRIPT_FORMATS)
def test_every_transcript_is_segments_or_a_bad_transcript(fmt, tmp_path):
    path = tmp_path / f"t.{fmt}"  # one file, rewritten by every case

    @FUZZ
    @given(doc=DOCS[fmt], encoding=ENCODINGS, cut=st.none() | st.integers(0, 400))
    def check(doc: str, encoding: str, cut):
        raw = doc.encode(encoding, errors="replace")
        _check(fmt, path, raw if cut is None else raw[:cut])

    check()
