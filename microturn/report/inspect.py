"""`microturn inspect`: what is in a corpus, a shard or a list of shards.

A corpus or a list gives one row per shard (samples, bytes, media hours, checksum status against
dataset.json); one shard (or ``--samples``) gives one row per sample (key, session, start, duration,
speech and overlap ratios, words, events). Both come as JSON-ready dicts: the CLI prints them as a table
or, with ``--json``, as they are.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from microturn.report import safe
from microturn import storage
from microturn.report.corpus import Target, iter_samples, read_index
from microturn.report.progress import progress
from microturn.report.sample import EVENT_COLUMNS, representations_of

CHECK_OK = "ok"
CHECK_MISMATCH = "MISMATCH"
CHECK_MISSING = "MISSING"
CHECK_UNKNOWN = "unknown"  # no checksum to compare with (a shard read without its corpus)
CHECK_SKIPPED = "not checked"


def shard_rows(target: Target, *, verify: bool = True, show_progress: bool = True) -> list[dict[str, Any]]:
    """One row per shard. Samples and hours come from the index when the corpus has one (else from a
    scan of the shard); the checksum is recomputed and compared with dataset.json's."""
    index = read_index(target.dataset_uri)
    per_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in index:
        per_shard[str(row.get("shard") or "").split("/")[-1]].append(row)
    sizes = {ref.name: storage.size(ref.uri) for ref in target.shards}
    total_bytes = sum(v for v in sizes.values() if v) if verify else 0
    rows = []
    with progress("checksums", total_bytes or None, unit="bytes", enabled=verify and show_progress) as advance:
        for ref in target.shards:
            size = sizes[ref.name]
            row: dict[str, Any] = {"shard": ref.name, "uri": ref.uri, "bytes": size}
            if ref.name in per_shard:
                rows_here = per_shard[ref.name]
                row["samples"] = len(rows_here)
                row["sessions"] = len({r.get("session_id") for r in rows_here})
                row["hours"] = round(sum(float(r.get("duration_s") or 0.0) for r in rows_here) / 3600, 6)
            elif size is not None:
                views = list(iter_samples(ref.uri, target.layout))
                row["samples"] = len(views)
                row["sessions"] = len({v.session_id for v in views})
                row["hours"] = round(sum(v.duration_s for v in views) / 3600, 6)
            row["checksum"] = _checksum_status(ref.sha256, ref.bytes, ref.uri, size, verify, advance)
            row["sha256"] = ref.sha256
            rows.append(row)
    return rows


def _checksum_status(expected: Optional[str], expected_bytes: Optional[int], uri: str, size: Optional[int],
                     verify: bool, advance) -> str:
    if size is None:
        return CHECK_MISSING
    if not verify:
        return CHECK_SKIPPED
    if expected is None:
        return CHECK_UNKNOWN
    if expected_bytes is not None and expected_bytes != size:
        advance(size)
        return CHECK_MISMATCH
    digest, _ = storage.file_sha256_and_size(uri, on_bytes=advance)
    return CHECK_OK if digest == expected else CHECK_MISMATCH


def sample_rows(target: Target, *, show_progress: bool = True) -> list[dict[str, Any]]:
    """One row per sample of every shard of the target, in shard order."""
    rows = []
    layout = target.layout
    with progress("samples", len(target.shards), enabled=show_progress and len(target.shards) > 1) as advance:
        for ref in target.shards:
            for view in iter_samples(ref.uri, layout):
                rows.append({"shard": ref.name, **view.summary()})
            advance(1)
    return rows


def inspect_report(target: Target, *, samples: bool = False, verify: bool = True,
                   show_progress: bool = True) -> dict[str, Any]:
    """The whole `inspect` answer as a JSON-ready dict."""
    out: dict[str, Any] = {"kind": target.kind, "uri": target.uri}
    if target.dataset is not None:
        out["dataset"] = {
            k: target.dataset.get(k)
            for k in ("format", "format_version", "config_hash", "totals", "tokenizers", "created_by")
            if k in target.dataset
        }
        # what each sample holds besides the format's own members, by representation (dataset.json members)
        out["dataset"]["representations"] = {k: list(v) for k, v in representations_of(target.layout.table).items()}
    if target.kind == "shard" or samples:
        out["samples"] = sample_rows(target, show_progress=show_progress)
    else:
        out["shards"] = shard_rows(target, verify=verify, show_progress=show_progress)
        out["totals"] = {
            "shards": len(out["shards"]),
            "samples": sum(r.get("samples") or 0 for r in out["shards"]),
            "bytes": sum(r.get("bytes") or 0 for r in out["shards"]),
            "hours": round(sum(r.get("hours") or 0.0 for r in out["shards"]), 6),
            "checksums_ok": all(r["checksum"] in (CHECK_OK, CHECK_SKIPPED, CHECK_UNKNOWN) for r in out["shards"]),
        }
    return out


def print_inspect(report: dict[str, Any], console) -> None:
    """Tables for people."""
    from rich.table import Table

    ds = report.get("dataset") or {}
    if ds:
        fps = {k: v.get("fingerprint") if isinstance(v, dict) else v for k, v in (ds.get("tokenizers") or {}).items()}
        console.print(f"[bold]{safe(report['uri'])}[/]  format {safe(ds.get('format'))} "
                      f"v{safe(ds.get('format_version'))}  config {safe(str(ds.get('config_hash', ''))[:12])}")
        for name, fp in fps.items():
            console.print(f"  {safe(f'{name:<7}')}{safe(fp)}", soft_wrap=True)
        reps = ds.get("representations") or {}
        named = ", ".join(f"{safe(k)} ({', '.join(map(safe, v))})" for k, v in reps.items())
        console.print(f"  representations: {named}", soft_wrap=True)
    if "shards" in report:
        table = Table(title=f"{len(report['shards'])} shard(s)")
        for col, just in (("shard", "left"), ("samples", "right"), ("sessions", "right"), ("MB", "right"),
                          ("hours", "right"), ("checksum", "left")):
            table.add_column(col, justify=just)
        for r in report["shards"]:
            status = r["checksum"]
            style = {"ok": "green", CHECK_MISMATCH: "bold red", CHECK_MISSING: "bold red"}.get(status, "yellow")
            table.add_row(
                safe(r["shard"]), _n(r.get("samples")), _n(r.get("sessions")),
                "-" if r.get("bytes") is None else f"{r['bytes'] / 1e6:.2f}",
                "-" if r.get("hours") is None else f"{r['hours']:.4f}", f"[{style}]{status}[/]",
            )
        t = report["totals"]
        table.add_section()
        table.add_row("total", _n(t["samples"]), "", f"{t['bytes'] / 1e6:.2f}", f"{t['hours']:.4f}",
                      "[green]ok[/]" if t["checksums_ok"] else "[bold red]problems[/]")
        console.print(table)
    if "samples" in report:
        table = Table(title=f"{len(report['samples'])} sample(s)", caption=EVENT_LEGEND)
        for col in ("key", "start s", "dur s", "speech", "per stream", "overlap", "words", "events"):
            table.add_column(col, justify="left" if col in ("key", "events") else "right", no_wrap=col == "key")
        for r in report["samples"]:
            events = " ".join(f"{SHORT[kind]}{r[col]}" for kind, col in EVENT_COLUMNS.items() if r.get(col))
            table.add_row(
                safe(r["key"]), f"{r['start_s']:.1f}", f"{r['duration_s']:.1f}", f"{r['speech_ratio']:.2f}",
                "/".join(f"{x:.2f}" for x in r["stream_speech_ratio"]), f"{r['overlap_ratio']:.2f}",
                str(r["word_count"]), events,
            )
        console.print(table)


SHORT = {"turn": "T", "gap": "G", "pause": "P", "overlap": "O", "backchannel": "B", "interruption": "I"}
EVENT_LEGEND = "events starting in the window: " + ", ".join(f"{v} {k}" for k, v in SHORT.items())


def _n(x: Any) -> str:
    return "-" if x is None else str(x)
