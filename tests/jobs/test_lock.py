"""One writer per corpus: the output lock (no Ray needed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.jobs.util import REPO


def test_a_second_lock_on_one_output_is_refused_naming_the_lock_and_its_holder(tmp_path):
    from microturn.jobs.lock import OutputLocked, lock_uri, output_lock

    with output_lock(str(tmp_path)) as uri:
        assert uri == lock_uri(str(tmp_path))
        holder = json.loads(open(uri).read())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(OutputLocked, match="build.lock") as err:
            with output_lock(str(tmp_path)):
                pass
        assert f"pid {os.getpid()}" in str(err.value)
    with output_lock(str(tmp_path)):  # released at the end of the block
        pass


_HOLD = "import sys, time\nfrom microturn.jobs.lock import output_lock\nwith output_lock(sys.argv[1]):\n" \
        "    print('locked', flush=True)\n    time.sleep(600)\n"


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_is_killed(tmp_path):
    """flock: the kernel releases the lock of a dead holder, so a killed build never leaves a stale lock."""
    from microturn.jobs.lock import OutputLocked, output_lock

    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked, match=f"pid {proc.pid}"):
            with output_lock(str(tmp_path)):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with output_lock(str(tmp_path)):
        pass


def test_a_second_build_on_the_same_output_exits_2_naming_the_lock(tmp_path):
    from microturn.jobs.lock import output_lock

    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("{nope\n")
    out = tmp_path / "out"
    with output_lock(str(out)):
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "microturn.cli", "build", "--input", str(manifest), "--out",
                              str(out), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    stderr = res.stderr.replace("\n", "")  # rich wraps long lines
    assert "build.lock" in stderr and f"pid {os.getpid()}" in stderr and "Traceback" not in stderr
    assert time.monotonic() - t0 < 60, "refused at once, not after waiting"
    assert not (out / "dataset.json").exists()
