"""The human baseline: each recorded speaker of a two-speaker session takes the model's role in turn
(the other is the user), metrics pooled over sessions and roles, and a check of every session against
the human norms of conversation (BRIEF §8: median floor-transfer offset in 0-250 ms, 5-25 backchannels
per minute).

The baseline's ``backchannel_jsd`` compares the backchannel-time histograms of two halves of the corpus'
sessions (even and odd positions in reading order): a noise floor for a model's JSD against the whole
corpus' histogram (``human_reference``), which the baseline itself would match at 0 by construction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from microturn.evaluate.fdb import FdbConfig, PairFigures, aggregate, histogram, jensen_shannon, pair_figures
from microturn.evaluate.timeline import RolePair, SessionTimeline, read_timelines
from microturn.report.corpus import Target, load_build_config


@dataclass(frozen=True)
class Norms:
    floor_transfer_offset_s: tuple[float, float] = (0.0, 0.25)
    backchannels_per_min: tuple[float, float] = (5.0, 25.0)


def human_pairs(timelines: Sequence[SessionTimeline]) -> list[RolePair]:
    return [p for t in timelines for p in t.role_pairs()]


def human_reference(pairs: Sequence[RolePair], cfg: FdbConfig = FdbConfig()) -> np.ndarray:
    """The histogram of the human backchannel times (the sides in the model's role) a model is compared with."""
    return histogram([x for p in pairs for x in pair_figures(p, cfg).backchannel_offsets_s], cfg)


def config_of(target: Target) -> FdbConfig:
    """The metrics' thresholds with the corpus' own event thresholds (its config.yaml, else defaults)."""
    build_cfg, _ = load_build_config(target.dataset_uri)
    return FdbConfig(events=build_cfg.events)


def session_norms(figures: Sequence[tuple[str, PairFigures]], norms: Norms = Norms()) -> list[dict[str, Any]]:
    """Sessions outside the human band, each with the figures that are (both roles together: every
    floor transfer and every backchannel of the session)."""
    by_session: dict[str, list[PairFigures]] = defaultdict(list)
    for sid, f in figures:
        by_session[sid].append(f)
    out = []
    for sid, fs in by_session.items():
        ftos = [x for f in fs for x in f.floor_transfer_offsets_s]
        minutes = fs[0].minutes
        found: dict[str, Any] = {}
        fto = float(np.median(ftos)) if ftos else None
        lo, hi = norms.floor_transfer_offset_s
        if fto is not None and not lo <= fto <= hi:
            found["floor_transfer_offset_s"] = round(fto, 4)
        rate = sum(f.backchannels for f in fs) / minutes if minutes else None
        lo, hi = norms.backchannels_per_min
        if rate is not None and not lo <= rate <= hi:
            found["backchannels_per_min"] = round(rate, 4)
        if found:
            out.append({"session": sid, **found})
    return sorted(out, key=lambda r: r["session"])


def split_half_jsd(figures: Sequence[tuple[str, PairFigures]], cfg: FdbConfig) -> Optional[float]:
    """JSD between the backchannel-time histograms of the even and the odd sessions (None under two)."""
    order = list(dict.fromkeys(sid for sid, _ in figures))
    if len(order) < 2:
        return None
    half = {sid: i % 2 for i, sid in enumerate(order)}
    hists = [histogram([x for sid, f in figures if half[sid] == h for x in f.backchannel_offsets_s], cfg)
             for h in (0, 1)]
    return round(jensen_shannon(*hists), 4)


def human_baseline(target: Target, max_samples: Optional[int] = None, norms: Norms = Norms()) -> dict[str, Any]:
    """`microturn eval CORPUS`: the metrics of the recorded humans, and the norms check."""
    cfg = config_of(target)
    timelines = read_timelines(target, max_samples)
    pairs = human_pairs(timelines)
    figures = [(p.session_id, pair_figures(p, cfg)) for p in pairs]
    out = aggregate([f for _, f in figures], None, cfg)
    out["backchannel_jsd"] = split_half_jsd(figures, cfg)
    out["sessions"] = len({sid for sid, _ in figures})
    out["norms"] = {"band": {"floor_transfer_offset_s": list(norms.floor_transfer_offset_s),
                             "backchannels_per_min": list(norms.backchannels_per_min)},
                    "outside": session_norms(figures, norms),
                    "skipped_sessions": sorted(t.session_id for t in timelines if len(t.speakers) != 2),
                    # TOR needs words: a session without any (no transcript, no ASR) scores 0 at every case
                    "sessions_without_words": sorted(t.session_id for t in timelines
                                                     if len(t.speakers) == 2 and not any(t.words))}
    return out
