"""The human-readable table of `microturn eval`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from microturn.evaluate.fdb import METRICS

# what each figure means and which way is better
_MEANING = {
    "tor_smooth": "turn-over at user turn ends, higher better",
    "response_latency_s": "median / mean, TOR = 1 cases",
    "pause_tor": "turn-over in user pauses, lower better",
    "stop_latency_s": "barge-in -> model stops, median",
    "backchannels_per_min": "< 1 s, 1-2 words",
    "backchannel_jsd": "vs human times, 0 = same",
    "floor_transfer_offset_s": "median, < 0 = overlap",
}


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " / ".join(_figure(v) for v in value.values())
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_evaluation(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"turn-taking, {result.get('sessions', 0)} session(s)")
    for col in ("metric", "value", "cases", "meaning"):
        table.add_column(col, justify="right" if col in ("value", "cases") else "left")
    for name in METRICS:
        table.add_row(name, _figure(result.get(name)), str(result["cases"].get(name, 0)), _MEANING[name])
    console.print(table)
    norms = result.get("norms")
    if not norms:
        return
    band = norms["band"]
    outside = norms["outside"]
    console.print(f"norms: floor-transfer offset {band['floor_transfer_offset_s']} s, backchannels "
                  f"{band['backchannels_per_min']} per min; {len(outside)} session(s) outside")
    for row in outside:
        figures = ", ".join(f"{k} {v}" for k, v in row.items() if k != "session")
        console.print(f"  {escape(row['session'])}: {figures}")
    if norms.get("skipped_sessions"):
        console.print(f"skipped (not two speakers): {len(norms['skipped_sessions'])} session(s)")
    if norms.get("sessions_without_words"):
        console.print(f"[yellow]no words[/] in {len(norms['sessions_without_words'])} session(s) (no transcript, no "
                      "ASR): their TOR is 0 at every case; build with align.asr_model_dir or transcripts")
