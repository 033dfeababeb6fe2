"""`microturn stats`: figures about a whole corpus, read from its shards.

Definitions follow the event stage (microturn/pipeline/events.py): ``speech_ratio`` = frames where anyone
speaks / valid frames; ``overlap_ratio`` = frames where two or more speak / frames where anyone speaks;
rates are per minute of conversation, ``backchannel_rate`` and ``interruption_rate`` per turn.

Windows clip events at their edges (``clipped``); events are stitched back across consecutive windows of a
session before their durations are measured, so a 2 s pause split by a window boundary counts once, as
2 s. Token statistics: per audio codebook the share of the 1024 codes in use and the empirical entropy
(bits) over valid frames of all streams; the same for frame-codec tokens, and the share of text frames
that carry a token.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from microturn.clock import GRID
from microturn.pipeline.events import duration_distribution
from microturn.report.corpus import Target, iter_samples, read_index
from microturn.report.progress import progress
from microturn.report.sample import EVENT_KINDS, SampleView

DURATION_KINDS = ("turn", "gap", "pause", "overlap")


def entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max: no -0.0


def _stitch(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join events cut by window edges: same kind/stream/other, one ends where the next begins."""
    events = sorted(events, key=lambda e: (e["start_frame"], e["end_frame"]))
    open_at_end: dict[tuple, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        ident = (e["kind"], e.get("stream"), e.get("other"))
        prev = open_at_end.get(ident)
        if prev is not None and prev.get("clipped") and e.get("clipped") and prev["end_frame"] == e["start_frame"]:
            prev["end_frame"] = e["end_frame"]
            prev["clipped"] = bool(e.get("clipped"))
            continue
        e = dict(e)
        out.append(e)
        open_at_end[ident] = e
    return out


@dataclass
class _Accumulator:
    samples: int = 0
    valid_frames: int = 0
    speech_frames: int = 0
    overlap_frames: int = 0
    stream_speech_frames: int = 0
    stream_frames: int = 0
    sessions: set[str] = field(default_factory=set)
    speakers: set[str] = field(default_factory=set)
    streams_per_session: dict[str, int] = field(default_factory=dict)
    session_events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    code_counts: Optional[np.ndarray] = None  # [K, 1024]
    frame_token_counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    text_frames: int = 0
    text_token_frames: int = 0
    words: int = 0
    sample_speech: list[float] = field(default_factory=list)
    sample_overlap: list[float] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)
    session_bleed: dict[str, tuple[Optional[float], Optional[float]]] = field(default_factory=dict)

    def add(self, v: SampleView) -> None:
        self.samples += 1
        vf = v.valid_frames
        self.valid_frames += vf
        act = v.activity[:, :vf] > 0
        talking = act.sum(axis=0)
        self.speech_frames += int((talking >= 1).sum())
        self.overlap_frames += int((talking >= 2).sum())
        self.stream_speech_frames += int(act.sum())
        self.stream_frames += act.size
        self.sessions.add(v.session_id)
        self.speakers.update(f"{v.session_id}/{s}" for s in v.speakers)
        self.streams_per_session[v.session_id] = v.num_streams
        f0 = int(v.meta.get("start_frame", 0))
        for e in v.events:
            if str(e.get("kind")) in EVENT_KINDS:
                self.session_events[v.session_id].append(
                    {**e, "start_frame": int(e["start_frame"]) + f0, "end_frame": int(e["end_frame"]) + f0}
                )
        if v.codes is not None:  # token statistics of the representations the corpus holds
            self._add_codes(v.codes[:, :, :vf])
        if v.frames is not None:
            ids, counts = np.unique(v.frames, return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist()):
                self.frame_token_counts[i] += c
        text = v.text[:, :vf] if v.text is not None else np.zeros((0, 0), np.int32)
        if text.size:
            ids, counts = np.unique(text, return_counts=True)
            pad = int(ids[np.argmax(counts)])  # PAD fills the frames between words
            self.text_frames += text.size
            self.text_token_frames += int((text != pad).sum())
        self.words += len(v.words)
        self.sample_speech.append(v.speech_ratio())
        self.sample_overlap.append(v.overlap_ratio())
        self.fingerprints.add(str(sorted((v.meta.get("fingerprints") or {}).items())))
        quality = v.meta.get("quality")
        if isinstance(quality, dict) and v.session_id not in self.session_bleed:
            self.session_bleed[v.session_id] = (_number(quality.get("overlap_ratio")),
                                                _number(quality.get("activity_correlation")))  # fmt: skip


    def _add_codes(self, codes: np.ndarray) -> None:
        vocab = max(1024, int(codes.max()) + 1 if codes.size else 1024)
        if self.code_counts is None or self.code_counts.shape[1] < vocab:
            grown = np.zeros((codes.shape[1], vocab), dtype=np.int64)
            if self.code_counts is not None:
                grown[:, : self.code_counts.shape[1]] = self.code_counts
            self.code_counts = grown
        for k in range(codes.shape[1]):
            self.code_counts[k] += np.bincount(codes[:, k, :].ravel().astype(np.int64), minlength=self.code_counts.shape[1])


# A session above either is worth a look: its other talker was probably labelled speech on each
# microphone (docs/crosstalk.md); conversations sit near 0.05-0.15 overlap and below 0 correlation.
BLEED_OVERLAP = 0.2
BLEED_CORRELATION = 0.3


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def bleed_summary(session_bleed: dict[str, tuple[Optional[float], Optional[float]]]) -> dict[str, Any]:
    """Per-session bleed figures of the corpus: their spread and the sessions past the thresholds."""
    overlaps = [o for o, _ in session_bleed.values() if o is not None]
    corrs = [c for _, c in session_bleed.values() if c is not None]
    flagged = sorted(
        sid for sid, (o, c) in session_bleed.items()
        if (o is not None and o > BLEED_OVERLAP) or (c is not None and c > BLEED_CORRELATION)
    )

    def spread(xs: list[float]) -> Optional[dict[str, float]]:
        if not xs:
            return None
        a = np.asarray(xs, dtype=np.float64)
        return {"median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
                "max": round(float(a.max()), 4)}  # fmt: skip

    return {"sessions_measured": len(session_bleed), "session_overlap_ratio": spread(overlaps),
            "activity_correlation": spread(corrs), "flagged_sessions": len(flagged),
            "flagged": flagged[:20], "thresholds": {"overlap": BLEED_OVERLAP, "correlation": BLEED_CORRELATION}}  # fmt: skip


def corpus_stats(target: Target, *, show_progress: bool = True) -> dict[str, Any]:
    """Every figure as a JSON-ready dict (the raw duration lists are under ``_durations`` for plots)."""
    acc = _Accumulator()
    expected = len(read_index(target.dataset_uri)) or None
    layout = target.layout
    with progress("reading samples", expected, enabled=show_progress) as advance:
        for ref in target.shards:
            for view in iter_samples(ref.uri, layout):
                acc.add(view)
                advance(1)
    return _finish(acc, target)


def _finish(acc: _Accumulator, target: Target) -> dict[str, Any]:
    durations: dict[str, list[float]] = {k: [] for k in DURATION_KINDS}
    counts = {k: 0 for k in EVENT_KINDS}
    for events in acc.session_events.values():
        for e in _stitch(events):
            counts[e["kind"]] += 1
            if e["kind"] in durations:
                durations[e["kind"]].append(float(GRID.frames_to_seconds(e["end_frame"] - e["start_frame"])))
    seconds = float(GRID.frames_to_seconds(acc.valid_frames))
    minutes = seconds / 60
    per_codebook = []
    if acc.code_counts is not None:
        for k, row in enumerate(acc.code_counts):
            used = int((row > 0).sum())
            ent = entropy_bits(row)
            per_codebook.append({"codebook": k, "codes_used": used, "usage": round(used / 1024, 4),
                                 "entropy_bits": round(ent, 4), "perplexity": round(2 ** ent, 2)})
    ft = np.asarray(list(acc.frame_token_counts.values()), dtype=np.int64)
    turns = max(1, counts["turn"])
    out = {
        "uri": target.uri,
        "shards": len(target.shards),
        "samples": acc.samples,
        "sessions": len(acc.sessions),
        "speakers": len(acc.speakers),
        "streams": sum(acc.streams_per_session.values()),
        "hours": round(seconds / 3600, 6),
        "speech_ratio": round(acc.speech_frames / acc.valid_frames, 6) if acc.valid_frames else 0.0,
        "overlap_ratio": round(acc.overlap_frames / acc.speech_frames, 6) if acc.speech_frames else 0.0,
        "stream_speech_ratio": round(acc.stream_speech_frames / acc.stream_frames, 6) if acc.stream_frames else 0.0,
        "words": acc.words,
        "events": counts,
        "gaps": duration_distribution(durations["gap"]),
        "pauses": duration_distribution(durations["pause"]),
        "turns": duration_distribution(durations["turn"]),
        "overlaps": duration_distribution(durations["overlap"]),
        "turns_per_min": round(counts["turn"] / minutes, 4) if minutes else None,
        "backchannels_per_min": round(counts["backchannel"] / minutes, 4) if minutes else None,
        "interruptions_per_min": round(counts["interruption"] / minutes, 4) if minutes else None,
        "backchannel_rate": round(counts["backchannel"] / turns, 4),
        "interruption_rate": round(counts["interruption"] / turns, 4),
        "tokens": {
            "audio_codebooks": per_codebook,
            "frames": {"tokens": int(ft.sum()), "distinct": int(ft.size), "entropy_bits": round(entropy_bits(ft), 4)},
            "text": {"frames_with_token": round(acc.text_token_frames / acc.text_frames, 6) if acc.text_frames else 0.0},
        },
        "fingerprint_sets": len(acc.fingerprints),
        "bleed": bleed_summary(acc.session_bleed),
        "_durations": durations,
        "_sample_ratios": {"speech": acc.sample_speech, "overlap": acc.sample_overlap},
    }
    return out


def public(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats without the raw lists kept for plotting."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}


# ---------------------------------------------------------------- terminal


def print_stats(stats: dict[str, Any], console) -> None:
    from rich.table import Table

    from microturn.report import safe

    top = Table(title=f"corpus {safe(stats['uri'])}", show_header=False)
    top.add_column("what", style="bold")
    top.add_column("value", justify="right")
    for label, value in (
        ("hours", f"{stats['hours']:.4f}"),
        ("sessions / speakers / samples / shards",
         f"{stats['sessions']} / {stats['speakers']} / {stats['samples']} / {stats['shards']}"),
        ("speech ratio (anyone speaking)", f"{stats['speech_ratio']:.3f}"),
        ("overlap ratio (of speech)", f"{stats['overlap_ratio']:.3f}"),
        ("words", str(stats["words"])),
        ("turns / min", _f(stats["turns_per_min"])),
        ("backchannels / min  (per turn)", f"{_f(stats['backchannels_per_min'])}  ({stats['backchannel_rate']:.3f})"),
        ("interruptions / min (per turn)", f"{_f(stats['interruptions_per_min'])}  ({stats['interruption_rate']:.3f})"),
        ("sessions flagged for bleed (overlap > 0.2 or activity corr. > 0.3)",
         f"{stats['bleed']['flagged_sessions']} of {stats['bleed']['sessions_measured']}"
         + (f": {safe(', '.join(stats['bleed']['flagged'][:5]))}" if stats["bleed"]["flagged"] else "")),
    ):
        top.add_row(label, value)
    console.print(top)
    dist = Table(title="durations (s)")
    for col in ("", "count", "mean", "median", "p10", "p90", "max"):
        dist.add_column(col, justify="right" if col else "left")
    for name in ("turns", "gaps", "pauses", "overlaps"):
        d = stats[name]
        dist.add_row(name, str(d["count"]), *(_f(d.get(k)) for k in ("mean_s", "median_s", "p10_s", "p90_s", "max_s")))
    console.print(dist)
    tok = Table(title="audio tokens per codebook")
    for col in ("codebook", "codes used", "usage", "entropy bits", "perplexity"):
        tok.add_column(col, justify="right")
    for c in stats["tokens"]["audio_codebooks"]:
        tok.add_row(str(c["codebook"]), str(c["codes_used"]), f"{c['usage']:.3f}", f"{c['entropy_bits']:.2f}",
                    f"{c['perplexity']:.1f}")
    console.print(tok)
    fr = stats["tokens"]["frames"]
    console.print(f"frame tokens: {fr['tokens']} ({fr['distinct']} distinct, {fr['entropy_bits']:.2f} bits); "
                  f"text: {stats['tokens']['text']['frames_with_token']:.3f} of frames carry a token")


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------- HTML


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(stats: dict[str, Any]) -> dict[str, str]:
    """Plot name -> PNG data URI."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = {}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, kind in zip(axes, DURATION_KINDS):
        vals = stats["_durations"][kind]
        ax.hist(vals, bins=20, color="tab:blue") if vals else ax.text(0.5, 0.5, "none", ha="center",
                                                                       transform=ax.transAxes)
        ax.set_title(f"{kind} durations (s), n={len(vals)}", fontsize=9)
    fig.tight_layout()
    out["durations"] = _png_data_uri(fig)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3))
    axes[0].hist(stats["_sample_ratios"]["speech"], bins=20, range=(0, 1), color="tab:green")
    axes[0].set_title("speech ratio per sample", fontsize=9)
    axes[1].hist(stats["_sample_ratios"]["overlap"], bins=20, range=(0, 1), color="tab:red")
    axes[1].set_title("overlap ratio per sample", fontsize=9)
    kinds = list(stats["events"])
    axes[2].bar(kinds, [stats["events"][k] for k in kinds], color="tab:purple")
    axes[2].set_title("events", fontsize=9)
    axes[2].tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    out["ratios"] = _png_data_uri(fig)
    plt.close(fig)

    cbs = stats["tokens"]["audio_codebooks"]
    if cbs:
        fig, ax = plt.subplots(figsize=(14, 3))
        ks = [c["codebook"] for c in cbs]
        ax.bar(ks, [c["entropy_bits"] for c in cbs], color="tab:blue", label="entropy (bits)")
        ax.plot(ks, [10 * c["usage"] for c in cbs], "o-", color="tab:orange", label="usage x 10")
        ax.set_xlabel("codebook")
        ax.set_ylim(0, 10.5)
        ax.legend(fontsize=8)
        ax.set_title("audio codebooks: entropy (max 10 bits) and share of codes used", fontsize=9)
        fig.tight_layout()
        out["codebooks"] = _png_data_uri(fig)
        plt.close(fig)
    return out


def html_report(stats: dict[str, Any]) -> str:
    import json

    pics = plots(stats)
    pub = public(stats)
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in pub.items() if not isinstance(v, dict)
    )
    imgs = "".join(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="{uri}">' for name, uri in pics.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>microturn stats</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>microturn corpus statistics</h1><p>{html.escape(stats['uri'])}</p><table>{rows}</table>{imgs}"
        f"<h2>all figures (JSON)</h2><pre>{html.escape(json.dumps(pub, indent=2, sort_keys=True))}</pre>"
        "</body></html>"
    )
