"""A process tree's memory, as the benchmarks sample it: children count, and a process that is gone
reads as nothing rather than failing the sampler."""

from __future__ import annotations

import os
import subprocess
import sys

from microturn.report.processes import process_tree, rss_mb, tree_rss_mb


def test_a_process_tree_holds_the_children_it_started_and_their_memory():
    holds_64_mb = "import sys, time; b = bytearray(64 << 20); sys.stdout.write('x'); sys.stdout.flush(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", holds_64_mb], stdout=subprocess.PIPE)
    try:
        assert child.stdout.read(1) == b"x"  # its 64 MB are allocated and touched
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert rss_mb(child.pid) > 64
        assert rss_mb(child.pid, "VmHWM:") >= rss_mb(child.pid)
        assert tree_rss_mb(os.getpid()) >= rss_mb(os.getpid()) + rss_mb(child.pid) - 1  # both, sampled apart
    finally:
        child.kill()
        child.wait()
    assert child.pid not in process_tree(os.getpid())
    assert rss_mb(child.pid) == 0.0
