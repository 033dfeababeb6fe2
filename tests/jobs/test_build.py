"""The build job on a real embedded Ray: every input accounted for, deterministic, resumable."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from microturn.storage import read_parquet
from tests.jobs.faults import CrashOnce, Hang
from tests.jobs.util import REPO, tree_bytes

pytestmark = pytest.mark.slow


def _build(manifest, out, cfg, cpus, hooks=()):
    from microturn.jobs.build import run_build

    return run_build(str(manifest), str(out), cfg.model_copy(update={"job": cfg.job.model_copy(update={"num_cpus": cpus})}),
                     progress=False, session_hooks=hooks)


@pytest.fixture(scope="module")
def built_2cpu(small_corpus_media, build_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus2")
    summary = _build(small_corpus_media, out, build_cfg, 2)
    return out, summary


def test_build_makes_a_valid_corpus_that_plain_webdataset_reads(built_2cpu):
    import webdataset as wds

    from microturn.validate import validate_dataset

    out, summary = built_2cpu
    assert summary.sessions_in == 3 and summary.sessions_ok == 3 and summary.quarantined == 0
    assert summary.shards >= 2
    assert 0 < summary.ray_start_s < summary.wall_s  # the embedded Ray's start, part of the wall time
    assert json.loads((out / "stats.json").read_text())["ray_start_s"] == summary.ray_start_s
    report = validate_dataset(str(out), deep=True)
    assert report.ok, report.problems
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    keys = []
    for sample in wds.WebDataset(shards, shardshuffle=False).decode():
        keys.append(sample["__key__"])
        codes = sample["codes.npy"]
        assert codes.dtype == np.int16 and codes.shape[0] == 2 and codes.shape[2] == 10 * 15
        assert sample["activity.npy"].shape == (2, 150)
        assert sample["meta.json"]["session_id"] in sample["__key__"]
    index = read_parquet(out / "index.parquet").to_pylist()
    assert keys == [r["key"] for r in index]
    assert len(keys) == summary.samples
    assert "." not in "".join(keys)


def test_one_and_two_cpus_give_byte_identical_corpora(built_2cpu, small_corpus_media, build_cfg, tmp_path):
    out2, _ = built_2cpu
    out1 = tmp_path / "corpus1"
    _build(small_corpus_media, out1, build_cfg, 1)
    a, b = tree_bytes(out1), tree_bytes(out2)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between 1 and 2 CPUs"


def test_rerun_skips_finished_work_and_changes_nothing(built_2cpu, small_corpus_media, build_cfg):
    out, _ = built_2cpu
    before = tree_bytes(out)
    summary = _build(small_corpus_media, out, build_cfg, 2)
    assert summary.resumed_sessions == 3
    assert tree_bytes(out) == before


def test_killed_worker_is_retried_and_changes_nothing(built_2cpu, small_corpus_media, build_cfg, tmp_path):
    out_ref, _ = built_2cpu
    marker = tmp_path / "crashed.pid"
    out = tmp_path / "corpus"
    summary = _build(small_corpus_media, out, build_cfg, 2, hooks=[CrashOnce("synth-11-001", str(marker))])
    assert marker.exists(), "the fault was never injected"
    assert summary.quarantined == 0
    assert tree_bytes(out) == tree_bytes(out_ref)


def _cli_build(manifest, out, extra=()):
    cmd = [sys.executable, "-m", "microturn.cli", "build", "--input", str(manifest), "--out", str(out),
           "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--num-cpus", "2",
           "--set", "chunk.window_chunks=10", "--set", "chunk.hop_chunks=10", "--set", "shard.target_bytes=60000",
           "--set", "job.session_timeout_base_s=300", *extra]
    return cmd


def test_killed_driver_resumes_to_identical_output(built_2cpu, small_corpus_media, tmp_path):
    out_ref, _ = built_2cpu
    out = tmp_path / "corpus"
    proc = subprocess.Popen(_cli_build(small_corpus_media, out), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sessions = out / "_work" / "sessions"
    deadline = time.time() + 240
    while time.time() < deadline and not list(sessions.glob("*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()
    # Nothing half-written is visible under a final name: every visible tar reads to its end.
    for tar in sorted((out / "shards").glob("*.tar")) if (out / "shards").exists() else []:
        with tarfile.open(tar) as tf:
            assert tf.getmembers(), f"{tar.name} is empty"
    for part in sorted((out / "_work" / "sessions").glob("*.tar")):
        with tarfile.open(part) as tf:
            assert tf.getmembers(), f"{part.name} is empty"
    subprocess.run(_cli_build(small_corpus_media, out), cwd=REPO, check=True, capture_output=True, timeout=600)
    assert read_parquet(out / "quarantine.parquet").to_pylist() == []
    assert tree_bytes(out) == tree_bytes(out_ref)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["resumed_sessions"] >= 1


def test_tokenizer_actor_pool_gives_the_same_corpus(built_2cpu, small_corpus_media, build_cfg, tmp_path):
    """Tokenizing in a pool of actors (how GPU clusters run) changes nothing in the output, whichever
    sessions the actor gathers into one call (3 CPUs: the actor and two session tasks feeding it)."""
    out_ref, _ = built_2cpu
    cfg = build_cfg.model_copy(update={"job": build_cfg.job.model_copy(update={"tokenizer_actors": 1})})
    out = tmp_path / "pooled"
    summary = _build(small_corpus_media, out, cfg, 3)
    assert summary.sessions_ok == 3
    assert tree_bytes(out) == tree_bytes(out_ref)


def test_a_worker_that_keeps_dying_is_quarantined_then_retried_on_request(built_2cpu, small_corpus_media, build_cfg, tmp_path):
    """With no retries left the session is quarantined as worker_crashed (the job goes on); a re-run with
    retry_failed processes it again and the corpus becomes identical to an undisturbed build."""
    from microturn.jobs.build import run_build

    out_ref, _ = built_2cpu
    crash = CrashOnce("synth-11-002", str(tmp_path / "crashed.pid"))
    cfg = build_cfg.model_copy(update={"job": build_cfg.job.model_copy(update={"max_retries": 0, "num_cpus": 2})})
    out = tmp_path / "corpus"
    first = run_build(str(small_corpus_media), str(out), cfg, progress=False, session_hooks=[crash])
    assert first.sessions_ok == 2 and first.rejects_by_reason == {"worker_crashed": 1}
    (row,) = read_parquet(out / "quarantine.parquet").to_pylist()
    assert row["session_id"] == "synth-11-002" and row["stage"] == "job"

    again = run_build(str(small_corpus_media), str(out), cfg, progress=False)
    assert again.rejects_by_reason == {"worker_crashed": 1}, "rejects are final unless retry is asked for"
    fixed = run_build(str(small_corpus_media), str(out), cfg, progress=False, retry_failed=True)
    assert fixed.sessions_ok == 3 and fixed.quarantined == 0
    assert tree_bytes(out) == tree_bytes(out_ref)


def test_a_hanging_session_is_cut_off_at_its_budget(small_corpus_media, build_cfg, tmp_path):
    """A session that never finishes is quarantined as `timeout` once its budget (base + per media
    minute x probed length) is spent, and the message says how to raise the budget.

    The budget's clock starts at submission, so it includes the start of a Ray worker: the base is
    generous (20 s) so that even a loaded machine starts the task, and the hang, well within it."""
    from microturn.jobs.build import run_build

    rows = [json.loads(line) for line in small_corpus_media.read_text().splitlines() if line.strip()]
    manifest = small_corpus_media.parent / "one-session.jsonl"
    manifest.write_text(json.dumps(rows[0]) + "\n")
    sid = rows[0]["session_id"]
    job = build_cfg.job.model_copy(update={"num_cpus": 1, "session_timeout_base_s": 20.0,
                                           "session_timeout_per_media_min_s": 30.0})
    cfg = build_cfg.model_copy(update={"job": job})
    marker = tmp_path / "hung"
    summary = run_build(str(manifest), str(tmp_path / "out"), cfg, progress=False,
                        session_hooks=[Hang(sid, str(marker))])
    assert summary.rejects_by_reason == {"timeout": 1}
    (row,) = read_parquet(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert row["session_id"] == sid and row["stage"] == "job" and row["reason"] == "timeout"
    (slow,) = summary.slowest_sessions
    budget = slow["budget_s"]
    assert budget == pytest.approx(20.0 + 30.0 * 8.0 / 60, abs=0.1)  # the synthetic sessions are 8 s long
    assert f"budget of {budget:g} s" in row["message"]
    assert "--set job.session_timeout_per_media_min_s=" in row["message"]
    assert slow["session_id"] == sid and slow["outcome"] == "timeout"
    assert marker.exists(), "the task was cut off before it even started (worker start-up took the whole budget)"
    # Cut off at its budget, not at the end of the hour-long hang (the margin absorbs a loaded machine).
    assert budget < slow["wall_s"] < budget + 60


_HELD_BUILD = """
import sys
from microturn.config import load_config
from microturn.jobs.build import run_build
from tests.jobs.faults import WaitForFile

manifest, out, release, *overrides = sys.argv[1:]
run_build(manifest, out, load_config("configs/demo.yaml", overrides), progress=False,
          session_hooks=[WaitForFile(release)])
"""


def test_two_builds_on_one_output_the_second_exits_2_and_the_first_finishes(small_corpus_media, tmp_path):
    """The first build's sessions wait for a file the test creates only after the second build has
    exited, so the first one is sure to hold the lock the whole time (no timing race)."""
    from microturn.validate import validate_dataset

    out = tmp_path / "corpus"
    release = tmp_path / "release"
    overrides = ["chunk.window_chunks=10", "chunk.hop_chunks=10", "shard.target_bytes=60000",
                 "job.session_timeout_base_s=300", "job.num_cpus=2"]
    first = subprocess.Popen([sys.executable, "-c", _HELD_BUILD, str(small_corpus_media), str(out), str(release),
                              *overrides], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / "_work" / "build.lock"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (lock.exists() and lock.read_text()):
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1]
        second = subprocess.run(_cli_build(small_corpus_media, out), cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        stderr = second.stderr.replace("\n", "")
        assert "build.lock" in stderr and f"pid {first.pid}" in stderr
        assert first.poll() is None, first.communicate()[1]
    finally:
        release.write_text("go")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    report = validate_dataset(str(out), deep=True)
    assert report.ok, report.problems
