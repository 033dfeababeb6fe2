"""Fuzzed manifests: every row, however odd, is a session or a row problem; nothing else escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.align.transcripts import TRANSCRIPT_FORMATS
from microturn.manifest import ManifestError, load_manifest, parse_rows
from tests.fuzz.fuzzkit import FUZZ, record

pytestmark = pytest.mark.slow

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=4,
)
IDS = st.sampled_from(["s1", "s2", "a-b_c", "has.dot", "s1\n", "", "x" * 129, "-lead"])
NUMBERS = st.sampled_from([0, -1, 1e300, -1e300, float("inf"), float("nan"), 2**70, 0.5, True]) | st.floats() | st.integers()
URIS = st.sampled_from(["a.wav", "s3://b/c.wav", "/abs/x.mp4", "a\u0000b", "", "../../etc/passwd", "é ü.wav"])


def _maybe(key: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


def _merge(parts: list[dict]) -> dict:
    out: dict = {}
    for p in parts:
        out.update(p)
    return out


AUDIO = st.tuples(
    _maybe("uri", URIS), _maybe("channel", NUMBERS), _maybe("speaker", st.none() | IDS),
    _maybe("offset_s", NUMBERS), _maybe("extra", JSON),
).map(lambda t: _merge(list(t))) | JSON
ROWS = st.tuples(
    _maybe("session_id", IDS | JSON),
    _maybe("audio", st.lists(AUDIO, max_size=3) | JSON),
    _maybe("video", st.tuples(_maybe("uri", URIS), _maybe("offset_s", NUMBERS)).map(lambda t: _merge(list(t))) | JSON),
    _maybe("transcript", st.fixed_dictionaries({"uri": URIS, "format": st.sampled_from([*TRANSCRIPT_FORMATS, "srt"])})),
    _maybe("meta", JSON | st.sampled_from(["[" * 5000, "{}", "", '{"a": %s}' % ("9" * 5000)])),
    _maybe("language", JSON),
).map(lambda t: _merge(list(t))) | JSON
VALID = st.fixed_dictionaries(  # rows that mostly pass, so the accepted path is fuzzed too
    {"session_id": st.sampled_from(["s1", "s2", "s3"]),
     "audio": st.lists(st.fixed_dictionaries({"uri": st.sampled_from(["a.wav", "b.flac"])},
                                              optional={"speaker": st.sampled_from(["A", "B"]),
                                                        "offset_s": NUMBERS, "channel": st.integers(-1, 3)}),
                       max_size=2)},
    optional={"video": st.fixed_dictionaries({"uri": URIS}), "meta": JSON, "language": st.just("en")},
)
ROWS = VALID | ROWS


@FUZZ
@given(rows=st.lists(ROWS, min_size=1, max_size=3))
def test_every_row_is_a_session_or_a_problem(rows):
    sessions, problems = parse_rows(list(enumerate(rows, start=1)), "/base")
    assert len(sessions) + len(problems) == len(rows)  # each row accounted for exactly once
    assert all(1 <= p.line <= len(rows) for p in problems)
    record("manifest_rows", f"{len(sessions)}ok+{len(problems)}bad")


LINES = st.one_of(
    ROWS.map(lambda r: json.dumps(r)),
    TEXT,
    st.sampled_from(["[" * 100_000, "9" * 5000, "{broken", "# comment", "", "   ", "null", "[]", "NaN"]),
)


@FUZZ
@given(lines=st.lists(LINES, min_size=1, max_size=3))
def test_every_jsonl_line_is_a_session_or_a_problem(tmp_path, lines):
    text = "\n".join(lines) + "\n"
    path = tmp_path / "m.jsonl"  # one file, rewritten by every case
    path.write_text(text, encoding="utf-8")
    counted = [raw for raw in text.splitlines() if raw.strip() and not raw.lstrip().startswith("#")]
    try:
        sessions, problems = load_manifest(path)
    except ManifestError:  # a manifest with no row at all
        assert not counted
        record("manifest_jsonl", "ManifestError")
        return
    assert len(sessions) + len(problems) == len(counted)
    record("manifest_jsonl", "ok")
