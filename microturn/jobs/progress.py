"""Build progress: a rich bar on a terminal, a log line every 10 s otherwise (Ray job logs).

Sessions that have run for longer than ``LONG_SESSION_S`` are listed at every tick with their elapsed
time and budget, so an hour-long recording is visible work in the log, not a silent gap.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional

TICK_S = 10.0
LONG_SESSION_S = 60.0
LONG_SESSIONS_SHOWN = 5


@dataclass(frozen=True)
class Running:
    session_id: str
    elapsed_s: float
    budget_s: float
    media_s: Optional[float]

    def describe(self) -> str:
        media = f"{self.media_s / 60:.1f} min media" if self.media_s is not None else "unknown length"
        return f"{self.session_id} {_clock(self.elapsed_s)} of {_clock(self.budget_s)} budget ({media})"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.media_s, self.t0 = total, 0, 0.0, time.perf_counter()
        self.enabled = enabled
        self._last_log = 0.0
        self._last_long = time.perf_counter()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(
                TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), transient=False,
            )
            self._task = self._bar.add_task("sessions", total=total, rate="")
            self._bar.start()

    def _rate(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return f"{self.media_s / 3600:.3f} h media, {self.media_s / elapsed:.1f}x realtime"

    def advance(self, media_s: float) -> None:
        self.done += 1
        self.media_s += media_s
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=self._rate())
        elif self.enabled and (time.perf_counter() - self._last_log > TICK_S or self.done == self.total):
            self._last_log = time.perf_counter()
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            self._print(f"{self.done}/{self.total} sessions, {self._rate()}, ETA {eta:.0f}s")

    def tick(self, running: list[Running]) -> None:
        """Every ``TICK_S``: list the long-running sessions, longest first."""
        now = time.perf_counter()
        if not self.enabled or now - self._last_long < TICK_S:
            return
        self._last_long = now
        long = sorted((r for r in running if r.elapsed_s >= LONG_SESSION_S), key=lambda r: -r.elapsed_s)
        if long:
            shown = "; ".join(r.describe() for r in long[:LONG_SESSIONS_SHOWN])
            more = f" (+{len(long) - LONG_SESSIONS_SHOWN} more)" if len(long) > LONG_SESSIONS_SHOWN else ""
            self._print(f"{self.done}/{self.total} sessions done; running: {shown}{more}")

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(f"[microturn] {line}", markup=False, highlight=False)
        else:
            print(f"[microturn] {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
