"""`microturn manifest DIR -o sessions.jsonl`: pairing media files by name (the documented rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_media import write_flac, write_mp4, write_wav


@pytest.fixture
def media(tmp_path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    write_mp4(d / "talk1.mp4")  # video + <session>.<speaker>.wav
    write_wav(d / "talk1.alice.wav", 1)
    write_wav(d / "talk1.bob.wav", 1)
    (d / "talk1.json").write_text(json.dumps({"words": []}))
    write_flac(d / "call_7_A.flac")  # <session>_<speaker>.flac, two files share the prefix
    write_flac(d / "call_7_B.flac")
    write_wav(d / "phone.wav", 2)  # lone stereo: one speaker per channel
    write_wav(d / "meeting.wav", 1)  # lone mono: a mixed track
    write_mp4(d / "silent_film.mp4")  # video alone: its own audio track
    (d / "notes.txt").write_text("not media")
    return d


def _rows(path: Path) -> dict[str, dict]:
    return {r["session_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_the_naming_rule_pairs_files_into_sessions(cli, media, tmp_path):
    out = tmp_path / "sessions.jsonl"
    code, stdout, stderr = cli("manifest", media, "-o", out)
    assert code == 0, stderr
    rows = _rows(out)
    assert set(rows) == {"talk1", "call_7", "phone", "meeting", "silent_film"}
    assert rows["talk1"]["video"]["uri"] == "media/talk1.mp4"  # relative to the manifest's folder
    assert [(a["speaker"], Path(a["uri"]).name) for a in rows["talk1"]["audio"]] == [
        ("alice", "talk1.alice.wav"), ("bob", "talk1.bob.wav")]
    assert rows["talk1"]["transcript"] == {"uri": "media/talk1.json", "format": "json"}
    assert [a["speaker"] for a in rows["call_7"]["audio"]] == ["A", "B"]
    assert [(a["speaker"], a["channel"]) for a in rows["phone"]["audio"]] == [("A", 0), ("B", 1)]
    assert [(a["speaker"], a["channel"]) for a in rows["meeting"]["audio"]] == [(None, 0)]
    assert rows["silent_film"]["audio"] == [] and "video" in rows["silent_film"]
    assert "notes.txt" in stderr and "skipped" in stderr
    assert "5 session(s)" in stdout


def test_the_manifest_loads_and_resolves_to_the_real_files(cli, media, tmp_path):
    from microturn.manifest import load_manifest

    out = tmp_path / "sessions.jsonl"
    assert cli("manifest", media, "-o", out)[0] == 0
    sessions, problems = load_manifest(out)
    assert problems == []
    for spec in sessions:
        for uri in spec.source_uris():
            assert Path(uri).is_file(), uri


def test_mixed_flag_keeps_a_stereo_file_as_one_mixed_track(cli, media, tmp_path):
    out = tmp_path / "sessions.jsonl"
    assert cli("manifest", media, "-o", out, "--mixed")[0] == 0
    assert [(a["speaker"], a["channel"]) for a in _rows(out)["phone"]["audio"]] == [(None, 0)]


def test_an_empty_folder_is_a_usage_error(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("manifest", empty, "-o", tmp_path / "m.jsonl")
    assert code == 2 and "no sessions found" in err
    assert not (tmp_path / "m.jsonl").exists()


def test_unsafe_names_become_safe_session_ids(cli, tmp_path):
    from microturn.report.folder_manifest import safe_id

    assert safe_id("my talk (1)") == "my_talk__1"
    assert safe_id("-x") == "s-x"  # ids must not start with "-"
    d = tmp_path / "m"
    d.mkdir()
    write_wav(d / "my talk.wav", 2)
    out = tmp_path / "s.jsonl"
    assert cli("manifest", d, "-o", out)[0] == 0
    assert set(_rows(out)) == {"my_talk"}
