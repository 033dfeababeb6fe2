"""A session's time budget: ``job.session_timeout_base_s + job.session_timeout_per_media_min_s x
media minutes``, computed by the driver from the probed duration just before the session's task starts.

Why the driver probes: a hung task cannot be trusted to report anything, so the budget must be known
where the cut-off happens. The driver reads container headers only (``probe.header_duration_s``: FFmpeg
opens the file, reading a bounded amount of its start, and nothing is demuxed or decoded), a few
milliseconds per local file and a few ranged reads per object (``s3://`` included), at submission time,
while earlier sessions are running. Any exception of the probe means "unknown length" (the session's own
task reports the real error). The probe still runs FFmpeg's demuxer set-up on untrusted input inside the
driver: a file that crashes libav itself (a segfault, not an exception) would take the driver down.

A header's length is not trusted beyond what the pipeline accepts: it is clamped to
``decode.max_duration_s + decode.duration_tolerance_s`` (a header claiming 1000 hours gets the budget of
the longest session decode accepts, and decode rejects it as ``too_long``).

Unknown duration (a header without one, or a source the probe cannot open): the session gets the budget
of the longest session the pipeline accepts (``decode.max_duration_s``). Such a session is either
rejected quickly by its own task (unreadable input) or it decodes, and decode refuses anything longer
than ``max_duration_s``; so that budget is enough for every session that can succeed, and a hang is
still cut off, only later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from microturn.config import BuildConfig
from microturn.manifest import SessionSpec

log = logging.getLogger("microturn.budget")

RAISE_HINT = "--set job.session_timeout_per_media_min_s=<seconds>"


@dataclass(frozen=True)
class SessionBudget:
    seconds: float
    media_s: Optional[float]  # probed length; None when unknown
    base_s: float
    per_media_min_s: float

    def timeout_message(self) -> str:
        """What a timeout quarantine row says: the budget, how it was computed, how to raise it."""
        if self.media_s is None:
            media = "unknown length, budgeted as decode.max_duration_s"
        else:
            media = f"{self.media_s / 60:.1f} media min"
        return (f"session ran longer than its budget of {self.seconds:g} s (job.session_timeout_base_s "
                f"{self.base_s:g} + job.session_timeout_per_media_min_s {self.per_media_min_s:g} x {media}); "
                f"raise it with {RAISE_HINT} or job.session_timeout_base_s, then re-run with --retry-failed")


def probed_duration_s(spec: SessionSpec) -> Optional[float]:
    """The longest source of the session by its headers, or None when no source tells."""
    from microturn.pipeline.probe import header_duration_s

    durations = []
    for uri in [a.uri for a in spec.audio] + ([spec.video.uri] if spec.video else []):
        try:
            d = header_duration_s(uri)
        except Exception:  # noqa: BLE001 - any probe failure means "unknown": the task reports the real error
            log.debug("no header duration for %s", uri, exc_info=True)
            d = None
        if d is not None and d > 0:
            durations.append(d)
    return max(durations) if durations else None


def session_budget(spec: SessionSpec, cfg: BuildConfig) -> SessionBudget:
    return budget_for(probed_duration_s(spec), cfg)


def budget_for(media_s: Optional[float], cfg: BuildConfig) -> SessionBudget:
    """The budget of a session of ``media_s`` seconds (None: unknown, see the module docstring)."""
    if media_s is not None:
        # A header can claim any length: never budget more than the longest session decode accepts.
        media_s = min(media_s, cfg.decode.max_duration_s + cfg.decode.duration_tolerance_s)
    minutes = (media_s if media_s is not None else cfg.decode.max_duration_s) / 60
    job = cfg.job
    seconds = job.session_timeout_base_s + job.session_timeout_per_media_min_s * minutes
    return SessionBudget(round(seconds, 3), media_s, job.session_timeout_base_s, job.session_timeout_per_media_min_s)
