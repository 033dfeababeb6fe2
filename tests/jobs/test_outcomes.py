"""Session outcomes on storage: which one wins, and the config they were built with (no Ray needed)."""

import json
import subprocess
import sys

import pytest

from microturn.records import Rejection
from tests.jobs.util import REPO


def _ok_part(work, sid, config_hash):
    from microturn.jobs.outcomes import part_uri
    from microturn.pipeline.shard import write_part
    from microturn.storage import write_bytes_atomic

    write_part(part_uri(str(work), sid, ".tar"), [])  # the tar and its summary, empty
    summary = {"status": "ok", "session_id": sid, "media_s": 1.0, "config_hash": config_hash}
    write_bytes_atomic(part_uri(str(work), sid, ".json"), json.dumps(summary).encode())


def test_a_timeout_reject_wins_over_the_late_part_of_the_cancelled_task(tmp_path):
    """The driver wrote `timeout`; the cancelled task finished anyway and wrote its part afterwards. The
    next run must see the driver's decision, whatever order the files were written in."""
    from microturn.jobs.outcomes import read_outcome, write_reject

    work = tmp_path / "_work"
    write_reject(str(work), Rejection("s1", "a.wav", "job", "timeout", "too slow"), "h")
    _ok_part(work, "s1", "h")
    assert read_outcome(str(work), "s1")["rejection"]["reason"] == "timeout"


def test_retry_failed_discards_the_reject_and_any_late_part(tmp_path):
    from microturn.jobs.outcomes import discard_outcome, read_outcome, write_reject

    work = tmp_path / "_work"
    write_reject(str(work), Rejection("s1", "a.wav", "job", "timeout", "too slow"), "h")
    _ok_part(work, "s1", "h")
    discard_outcome(str(work), "s1")
    assert read_outcome(str(work), "s1") is None
    assert list((work / "sessions").iterdir()) == []


def test_a_part_without_its_samples_summary_is_no_outcome(tmp_path):
    """The sink takes a part's index rows from its summary: a part without one is run again."""
    from microturn.jobs.outcomes import read_outcome

    work = tmp_path / "_work"
    _ok_part(work, "s1", "h")
    assert read_outcome(str(work), "s1")["status"] == "ok"
    (work / "sessions" / "s1.samples.json").unlink()
    assert read_outcome(str(work), "s1") is None


def _bad_manifest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{nope\n")
    return manifest


def test_resuming_a_corpus_built_with_another_config_is_refused_unless_rebuilt(tmp_path):
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.jobs.outcomes import ConfigMismatch

    out = tmp_path / "out"
    manifest = _bad_manifest(tmp_path)
    run_build(str(manifest), str(out), load_config(), progress=False)
    other = load_config(None, ["chunk.window_chunks=10"])
    with pytest.raises(ConfigMismatch, match="--rebuild"):
        run_build(str(manifest), str(out), other, progress=False)
    run_build(str(manifest), str(out), load_config(None, ["job.num_cpus=1"]), progress=False)  # job settings may change
    summary = run_build(str(manifest), str(out), other, progress=False, rebuild=True)
    assert summary.quarantined == 1
    assert json.loads((out / "dataset.json").read_text())["config_hash"] == other.config_hash()


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b"[" * 100_000])
def test_a_damaged_dataset_json_is_a_config_mismatch_not_a_traceback(tmp_path, damage):
    from microturn.jobs.outcomes import ConfigMismatch, check_config

    (tmp_path / "dataset.json").write_bytes(damage)
    with pytest.raises(ConfigMismatch, match="cannot be read.*--rebuild"):
        check_config(str(tmp_path), {}, "h" * 64)


def test_session_outcomes_built_with_another_config_are_refused(tmp_path):
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.jobs.outcomes import ConfigMismatch

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"session_id": "s1", "audio": [{"uri": "a.wav"}]}) + "\n")
    out = tmp_path / "out"
    _ok_part(out / "_work", "s1", "0" * 64)
    with pytest.raises(ConfigMismatch, match="1 finished session"):
        run_build(str(manifest), str(out), load_config(), progress=False)


def test_the_cli_refuses_a_config_change_with_exit_2(tmp_path):
    manifest = _bad_manifest(tmp_path)
    cmd = [sys.executable, "-m", "microturn.cli", "build", "--input", str(manifest), "--out", str(tmp_path / "o"), "--quiet"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=120).returncode == 1  # every row bad
    res = subprocess.run(cmd + ["--set", "chunk.window_chunks=10"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--rebuild" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(cmd + ["--set", "chunk.window_chunks=10", "--rebuild"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no session made it into a shard" in res.stderr
