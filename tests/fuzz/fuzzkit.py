"""Shared settings and bookkeeping of the fuzz suite (import as ``tests.fuzz.fuzzkit``).

Every property runs ``CASES`` generated inputs (derandomized: the same inputs on every run, so a failure
reproduces) and counts what happened to each input per parser in ``COUNTS``; the terminal summary
prints the counts, the suite's wall time, and writes them as JSON to ``$MICROTURN_FUZZ_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, settings

CASES = 2000
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# parser -> outcome ("ok", or the typed error's code) -> cases
COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)
_STARTED = time.perf_counter()


def record(parser: str, outcome: str) -> None:
    COUNTS[parser][outcome] += 1


def summary(terminalreporter: Any) -> None:
    if not COUNTS:
        return
    wall = time.perf_counter() - _STARTED
    terminalreporter.section("fuzz cases per parser (outcome: count)")
    for parser, outcomes in sorted(COUNTS.items()):
        top = ", ".join(f"{k}: {v}" for k, v in outcomes.most_common(6))
        terminalreporter.write_line(f"{parser:<22} {sum(outcomes.values()):>6} cases  ({top})")
    terminalreporter.write_line(f"fuzz wall time {wall:.1f} s")
    path = os.environ.get("MICROTURN_FUZZ_REPORT")
    if path:
        doc = {"wall_s": round(wall, 1), "cases": {p: dict(o) for p, o in sorted(COUNTS.items())}}
        with open(path, "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
