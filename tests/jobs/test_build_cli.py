"""`microturn build` exit codes: usage errors are 2, a build that shards nothing is 1."""

import json
import subprocess
import sys

from microturn.storage import read_parquet
from tests.jobs.util import REPO


def _run(*args):
    return subprocess.run([sys.executable, "-m", "microturn.cli", "build", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_a_build_where_every_row_is_bad_exits_1_and_quarantines_every_row(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"session_id": "has.dot", "audio": [{"uri": "a.wav"}]}) + "\n{nope\n")
    res = _run("--input", str(manifest), "--out", str(tmp_path / "out"), "--quiet")
    assert res.returncode == 1, res.stderr
    assert "no session made it into a shard" in res.stderr
    rows = read_parquet(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert [(r["stage"], r["reason"]) for r in rows] == [("manifest", "invalid_row")] * 2


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    res = _run("--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "manifest not found" in res.stderr and "Traceback" not in res.stderr
    res = _run("--input", "x.jsonl", "--out", str(tmp_path / "o"), "--set", "chunk.window_chunks=lots")
    assert res.returncode == 2 and "chunk.window_chunks" in res.stderr and "Traceback" not in res.stderr
