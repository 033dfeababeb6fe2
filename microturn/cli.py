"""The `microturn` command line.

Exit codes: 0 success, 1 invalid data (validation found problems, a build failed), 2 usage errors
(bad flags, bad config, missing paths). User mistakes print one clear message, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="microturn: build 200 ms micro-turn training data for interaction models.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_INVALID = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_config(config: Optional[Path], overrides: List[str]):
    from microturn.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="folder for the generated media and sessions.jsonl"),
    sessions: int = typer.Option(4, "--sessions", min=1),
    seed: int = typer.Option(0, "--seed"),
    duration_s: float = typer.Option(20.0, "--duration", min=1.0, help="seconds per session"),
    layout: str = typer.Option("per_speaker", "--layout", help="per_speaker | stereo | mixed"),
    video: bool = typer.Option(True, "--video/--no-video"),
) -> None:
    """Generate demo conversations (real media files, ground truth, a session manifest)."""
    from microturn.synth import synthesize_corpus

    if layout not in ("per_speaker", "stereo", "mixed"):
        _fail(f"--layout must be per_speaker, stereo or mixed, not {layout!r}")
    manifest = synthesize_corpus(out, sessions=sessions, seed=seed, duration_s=duration_s, layout=layout, video=video)
    console.print(f"wrote {sessions} session(s) of {duration_s:g} s; manifest: [bold]{manifest}[/]")


@app.command()
def build(
    input: str = typer.Option(..., "--input", help="session manifest (.jsonl or .parquet; path or URI)"),
    out: str = typer.Option(..., "--out", help="output folder (path or URI)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config"),
    set_: List[str] = typer.Option([], "--set", help="dotted override, e.g. tokenizers.audio.bandwidth_kbps=3"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="size of the embedded Ray"),
    address: Optional[str] = typer.Option(None, "--address", help="existing Ray cluster (default: embedded)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose"),
) -> None:
    """Build (or resume) a corpus from a session manifest."""
    from microturn.jobs.build import run_build
    from microturn.manifest import ManifestError

    _setup_logging(verbose)
    overrides = list(set_)
    if num_cpus is not None:
        overrides.append(f"job.num_cpus={num_cpus}")
    cfg = _load_config(config, overrides)
    try:
        summary = run_build(input, out, cfg, address=address, progress=not quiet)
    except ManifestError as exc:
        _fail(str(exc))
    _print_build_summary(summary)


def _print_build_summary(s) -> None:
    table = Table(title="microturn build", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("sessions in", f"{s.sessions_in}"),
        ("hours in", f"{s.media_s_in / 3600:.4f}"),
        ("sessions in shards", f"{s.sessions_ok}"),
        ("samples", f"{s.samples}"),
        ("shards", f"{s.shards} ({s.shard_bytes / 1e6:.1f} MB)"),
        ("quarantined", f"{s.quarantined}" + (f"  {s.rejects_by_reason}" if s.rejects_by_reason else "")),
        ("resumed (done earlier)", f"{s.resumed_sessions}"),
        ("wall time", f"{s.wall_s:.1f} s"),
        ("throughput", f"{s.throughput:.1f} media-s per s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print(f"output: [bold]{s.out_uri}[/]  (dataset.json, index.parquet, quarantine.parquet, shards/)")


@app.command()
def validate(
    path: str = typer.Argument(..., help="corpus folder (path or URI)"),
    deep: bool = typer.Option(False, "--deep", help="decode every sample"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Check a corpus: checksums, manifest, index; --deep decodes every sample. Exit 0 only when clean."""
    import json

    from microturn import storage
    from microturn.validate import validate_dataset

    if not storage.exists(path):
        _fail(f"no such corpus: {path}")
    report = validate_dataset(path, deep=deep)
    if json_out:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        _print_validation(report, path)
    raise typer.Exit(0 if report.ok else EXIT_INVALID)


def _print_validation(report, path: str) -> None:
    if report.ok:
        console.print(f"[bold green]valid[/]: {path}")
        return
    table = Table(title=f"{len(report.problems)} problem(s) in {path}")
    table.add_column("code", style="bold red")
    table.add_column("where")
    table.add_column("message")
    for p in report.problems:
        table.add_row(p.code, p.where, p.message)
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
