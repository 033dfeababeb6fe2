"""The session manifest: per-row errors, duplicate ids, relative URIs, JSONL and Parquet alike."""

import json

import pytest

from microturn.manifest import ManifestError, load_manifest, write_manifest


def _write(tmp_path, rows, name="sessions.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


GOOD = {
    "session_id": "s1",
    "video": {"uri": "a.mp4", "offset_s": 0.0},
    "audio": [
        {"uri": "a.wav", "channel": 0, "speaker": "A", "offset_s": 0.0},
        {"uri": "b.wav", "channel": 0, "speaker": "B"},
    ],
    "transcript": {"uri": "t.json", "format": "json"},
    "language": "en",
    "meta": {"corpus": "demo"},
}


def test_the_documented_row_shape_loads_and_resolves_relative_uris(tmp_path):
    sessions, problems = load_manifest(_write(tmp_path, [GOOD]))
    assert problems == []
    (s,) = sessions
    assert s.video.uri == str(tmp_path / "a.mp4")
    assert [a.speaker for a in s.audio] == ["A", "B"]
    assert s.audio[1].uri == str(tmp_path / "b.wav")
    assert s.transcript.format == "json"


def test_bad_rows_are_reported_per_row_and_good_rows_survive(tmp_path):
    rows = [
        GOOD,
        {**GOOD, "session_id": "s1"},  # duplicate
        {**GOOD, "session_id": "has.dot"},
        {**GOOD, "session_id": "s4", "audio": [{"uri": "x.wav", "channel": -1, "speaker": "A"}]},
        {**GOOD, "session_id": "s5", "colour": "red"},
        "{not json",
        {"session_id": "s7"},  # no media at all
    ]
    sessions, problems = load_manifest(_write(tmp_path, rows))
    assert [s.session_id for s in sessions] == ["s1"]
    by_line = {p.line: p.message for p in problems}
    assert "duplicate session_id" in by_line[2]
    assert "session_id" in by_line[3]
    assert "audio.0.channel" in by_line[4]
    assert "colour: unknown key" in by_line[5]
    assert "not valid JSON" in by_line[6]
    assert "at least one audio source or a video" in by_line[7]


def test_strict_mode_raises_with_every_problem(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(ManifestError, match="duplicate session_id") as info:
        load_manifest(path, strict=True)
    assert len(info.value.problems) == 1


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.jsonl")


def test_mixed_track_must_be_alone(tmp_path):
    row = {**GOOD, "audio": [{"uri": "m.wav", "speaker": None}, {"uri": "b.wav", "speaker": "B"}]}
    _, problems = load_manifest(_write(tmp_path, [row]))
    assert "mixed track" in problems[0].message


def test_parquet_manifest_matches_jsonl(tmp_path):
    sessions, _ = load_manifest(_write(tmp_path, [GOOD, {**GOOD, "session_id": "s2", "video": None}]))
    pq_path = write_manifest(tmp_path / "sessions.parquet", sessions)
    again, problems = load_manifest(pq_path)
    assert problems == []
    assert again == sessions


def test_jsonl_manifest_round_trips_specs_and_plain_rows(tmp_path):
    sessions, _ = load_manifest(_write(tmp_path, [GOOD, {**GOOD, "session_id": "s2", "video": None}]))
    again, problems = load_manifest(write_manifest(tmp_path / "out" / "a.jsonl", sessions))
    assert problems == [] and again == sessions
    path = write_manifest(tmp_path / "b.jsonl", [GOOD])
    assert (tmp_path / "b.jsonl").read_text() == json.dumps(GOOD, sort_keys=True) + "\n"
    assert load_manifest(path)[0][0].session_id == "s1"
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # written atomically


def test_crafted_rows_are_row_problems_never_a_crash(tmp_path):
    rows = [
        GOOD,
        "[" * 100_000,  # RecursionError in json
        '{"session_id": "s3", "n": %s}' % ("9" * 5000),  # ValueError: int past the digit limit
        {**GOOD, "session_id": "s4", "meta": "[" * 100_000},  # Parquet-style meta text, too deep
        {**GOOD, "session_id": "s5", "audio": [{"uri": "a\u0000b.wav", "speaker": "A"}]},
        {**GOOD, "session_id": "s6\n"},  # ids must match in full: a trailing newline is not an id
        {**GOOD, "session_id": "s7", "audio": [{"uri": "a.wav", "speaker": "A\n"}]},
    ]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    sessions, problems = load_manifest(p)
    assert [s.session_id for s in sessions] == ["s1"]
    assert [pr.line for pr in problems] == [2, 3, 4, 5, 6, 7]
    assert "nested too deeply" in problems[0].message and "NUL" in problems[3].message


@pytest.mark.parametrize("offset", [float("inf"), float("nan"), 1e300, -1e300])
def test_offsets_must_be_finite_and_bounded(tmp_path, offset):
    row = {**GOOD, "audio": [{"uri": "a.wav", "speaker": "A", "offset_s": offset}]}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(row) + "\n")  # json writes Infinity/NaN, and Python reads them back
    sessions, problems = load_manifest(p)
    assert sessions == [] and "audio.0.offset_s" in problems[0].message


def test_a_damaged_parquet_manifest_is_a_manifest_error(tmp_path):
    p = tmp_path / "m.parquet"
    p.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    with pytest.raises(ManifestError):
        load_manifest(p)
