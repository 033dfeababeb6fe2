"""User mistakes end with one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "{missing}"),
        ("show", "{missing}", "s-000000"),
        ("render", "{missing}", "s-000000", "--out", "{tmp}/r"),
        ("validate", "{missing}"),
        ("stats", "{missing}"),
        ("manifest", "{missing}", "-o", "{tmp}/m.jsonl"),
        ("train", "--data", "{missing}", "--out", "{tmp}/run"),
        ("train-frame-codec", "--input", "{missing}", "--out", "{tmp}/c.pt"),
        ("inspect", "{tmp}"),  # a folder that is not a corpus
        ("validate", "{tmp}"),
    ],
)
def test_missing_or_wrong_paths_are_one_line_and_exit_2(cli, tmp_path, args):
    missing = tmp_path / "does-not-exist"
    code, out, err = cli(*(a.format(missing=missing, tmp=tmp_path) for a in args))
    assert code == 2
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def test_a_bad_flag_is_a_usage_error(cli):
    code, _, _ = cli("inspect", "--no-such-flag")
    assert code == 2


@pytest.mark.slow
def test_an_unknown_key_names_similar_keys(cli, corpus, index_rows):
    session = index_rows[0]["session_id"]
    code, out, err = cli("show", corpus, f"{session}-000999")
    assert code == 2
    assert "no sample" in err and index_rows[0]["key"] in err
    assert "Traceback" not in out + err


@pytest.mark.slow
def test_a_key_with_a_dot_is_refused(cli, corpus):
    code, _, err = cli("show", corpus, "a.b")
    assert code == 2 and "not a sample key" in err
