"""A process tree's memory, read from /proc (Linux): what the benchmarks sample while a build runs.

Read directly, not through ``ps``: a sampler that starts ``ps`` four times a second takes 3% of a core
from the run it measures."""

from __future__ import annotations

import os
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, so the Ray workers a build starts (children of its raylet) count."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone between the listing and the read
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    """Resident memory now (``VmRSS:``) or its high-water mark so far (``VmHWM:``, which catches the
    peaks between two samples); 0 for a process that is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants now."""
    return sum(rss_mb(p) for p in process_tree(pid))
