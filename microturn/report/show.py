"""`microturn show`: one sample in the terminal.

A timeline with one column per 200 ms chunk (rows of 10 s): per speaker, how much of each chunk they
speak, their words placed at their start chunk, and the turn-taking events; then token summaries per
stream, the tokenizer fingerprints and the provenance (source files, channels, offsets).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from microturn.clock import CODEC_RATE, GRID
from microturn.report import safe
from microturn.report.sample import SampleView

LEVELS = " ▁▃▅▇█"  # fraction of the chunk spoken, 0 .. 1
EVENT_MARKS = {  # one character per event kind, drawn over the chunks it covers
    "overlap": "O",
    "interruption": "I",
    "backchannel": "b",
    "gap": "-",
    "pause": ".",
    "turn": "=",
}
# Which event wins a chunk when several cover it (the rare ones first).
EVENT_PRIORITY = ("interruption", "backchannel", "overlap", "gap", "pause", "turn")
PADDING = "░"


def activity_line(fractions: np.ndarray, valid_chunks: int) -> str:
    """One character per chunk: the share of the chunk spoken (padding chunks are shaded)."""
    out = []
    for c, f in enumerate(fractions):
        if c >= valid_chunks:
            out.append(PADDING)
        else:
            out.append(LEVELS[min(len(LEVELS) - 1, int(math.ceil(float(f) * (len(LEVELS) - 1))))])
    return "".join(out)


def words_lines(words: list[dict[str, Any]], stream: int, c0: int, c1: int, max_lines: int = 6) -> list[str]:
    """The words of one stream that start in chunks [c0, c1), each written from its start chunk.

    Words are wider than the 200 ms they take, so they go on as many lines as needed (a word takes the
    first line where its columns are free), shifted left only when they would run past the row's end.
    Words that find no line within ``max_lines`` are left out, and a last line says how many (the
    JSON output has them all): dense real speech holds more words than a terminal row can.
    """
    width = c1 - c0
    lines: list[list[str]] = []
    left_out = 0
    for w in sorted((w for w in words if int(w.get("stream", -1)) == stream), key=lambda w: int(w["start_frame"])):
        chunk = GRID.frame_to_chunk(int(w["start_frame"]))
        if not c0 <= chunk < c1:
            continue
        text = str(w.get("text", ""))
        if len(text) > width:
            text = text[: width - 1] + "…"
        col = min(chunk - c0, width - len(text))
        for line in lines:
            if all(ch == " " for ch in line[max(col - 1, 0) : col + len(text) + 1]):
                break
        else:
            if len(lines) == max_lines:
                left_out += 1
                continue
            line = [" "] * width
            lines.append(line)
        line[col : col + len(text)] = list(text)
    out = ["".join(line) for line in lines]
    if left_out:
        out.append(f"(+{left_out} more word{'s' * (left_out > 1)} here: show --json lists them all)"[:width])
    return out


def events_line(events: list[dict[str, Any]], num_chunks: int, stream: Any) -> str:
    """Event marks for one stream (``stream`` int) or for events between speakers (``stream`` None)."""
    best = [len(EVENT_PRIORITY)] * num_chunks
    line = [" "] * num_chunks
    for e in events:
        if e.get("stream") != stream:
            continue
        kind = str(e.get("kind"))
        rank = EVENT_PRIORITY.index(kind) if kind in EVENT_PRIORITY else len(EVENT_PRIORITY)
        c0 = GRID.frame_to_chunk(int(e["start_frame"]))
        c1 = max(c0 + 1, GRID.frame_to_chunk(int(e["end_frame"]) + GRID.frames_per_chunk - 1))
        for c in range(c0, min(c1, num_chunks)):
            if rank < best[c]:
                best[c] = rank
                line[c] = EVENT_MARKS.get(kind, "?")
    return "".join(line)


def ruler(c0: int, c1: int, window_start_s: float) -> str:
    """Seconds marks every second (5 chunks); session time, not window time."""
    per_s = int(1 / GRID.chunk_seconds)
    line = [" "] * (c1 - c0)
    for c in range(c0, c1):
        if c % per_s == 0:
            label = f"|{window_start_s + c / per_s:g}s"
            for i, ch in enumerate(label):
                if c - c0 + i < len(line):
                    line[c - c0 + i] = ch
    return "".join(line)


def codebook_entropy_bits(codes_KF: np.ndarray) -> list[float]:
    """Empirical entropy of each codebook's codes (bits; log2(1024) = 10 is the most a codebook can use)."""
    out = []
    for row in codes_KF:
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log2(p)).sum()) if counts.size else 0.0)
    return out


def show_sample(view: SampleView, console, *, width_chunks: int = 50) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.print(_header(view))
    chunk_act = view.chunk_activity()
    n = view.num_chunks
    speakers = view.speakers
    name_w = max(len(s) for s in speakers + ["events"]) + 1
    body = Text()
    for c0 in range(0, n, width_chunks):
        c1 = min(n, c0 + width_chunks)
        body.append(" " * (name_w + 6) + ruler(c0, c1, view.start_s) + "\n", style="dim")
        for s, spk in enumerate(speakers):
            body.append(f"{spk:<{name_w}} talk ", style="bold")
            body.append(activity_line(chunk_act[s], view.valid_chunks)[c0:c1] + "\n", style=_colour(s))
            for line in words_lines(view.words, s, c0, c1):
                body.append(f"{'':<{name_w}} word ", style="dim")
                body.append(line + "\n")
            marks = events_line(view.events, n, s)[c0:c1]
            if marks.strip():
                body.append(f"{'':<{name_w}} evnt ", style="dim")
                body.append(marks + "\n", style="magenta")
        shared = events_line(view.events, n, None)[c0:c1]
        if shared.strip():
            body.append(f"{'both':<{name_w}} evnt ", style="dim")
            body.append(shared + "\n", style="magenta")
        if c1 < n:
            body.append("\n")
    body.rstrip()
    console.print(Panel(body, title="timeline (one column = 200 ms)"))
    legend = "  ".join(f"{m} {k}" for k, m in EVENT_MARKS.items())
    console.print(f"[dim]talk: {LEVELS[1]}..{LEVELS[-1]} share of the chunk spoken, {PADDING} padding; events: {legend}[/]")

    console.print(_tokens(view))
    console.print(_video(view))
    reps = view.representations
    console.print("[bold]representations[/]: " + ("  ".join(
        f"{safe(name)} ({', '.join(map(safe, members))})" for name, members in reps.items()) or "none"))
    console.print(_members(view))

    fp = Table(title="fingerprints", show_header=False)
    for k, v in sorted((view.meta.get("fingerprints") or {}).items()):
        fp.add_row(safe(k), safe(v), style="yellow" if "untrained" in str(v) else None)
    console.print(fp)
    console.print(_provenance(view))


def _header(view: SampleView):
    from rich.panel import Panel

    m = view.meta
    lines = [
        f"session [bold]{safe(view.session_id)}[/]  window {view.window_index}  "
        f"start {view.start_s:.2f} s (sample {m.get('start_sample', '?')})  "
        f"duration {view.duration_s:.2f} s of {float(GRID.frames_to_seconds(view.num_frames)):.1f}",
        f"speakers {safe(', '.join(view.speakers))}  speech {view.speech_ratio():.2f}  overlap {view.overlap_ratio():.2f}  "
        f"words {len(view.words)}  language {safe(m.get('language') or '-')}",
    ]
    if m.get("flags"):
        lines.append(f"flags {safe(', '.join(map(str, m['flags'])))}")
    return Panel("\n".join(lines), title=safe(view.key))


def _members(view: SampleView):
    """Every array member of the sample, in table order: dtype, shape by dimension symbol, value range."""
    from rich.table import Table

    table = Table(title="members")
    for col in ("member", "dtype", "shape", "values"):
        table.add_column(col)
    for suffix, arr in view.arrays.items():
        spec = view.table.get(suffix)
        dims = spec.dims if spec is not None and len(spec.dims) == arr.ndim else ("",) * arr.ndim
        shape = " x ".join(f"{d}={n}" if d else str(n) for d, n in zip(dims, arr.shape))
        values = f"{arr.min()}..{arr.max()}" if arr.size else "empty"
        table.add_row(safe(suffix), str(arr.dtype), shape, values)
    return table


def _tokens(view: SampleView):
    """Per stream: the codes (distinct values and entropy per codebook), dMel bins, text tokens, words
    (a column for each representation the sample holds)."""
    from rich.table import Table

    tokens = Table(title="tokens per stream")
    columns = {"stream": True, "speaker": True, "codes K x F": view.codes is not None,
               "distinct/codebook": view.codes is not None, "entropy bits": view.codes is not None,
               "dmel M x F": view.dmel is not None, "dmel bins": view.dmel is not None,
               "text tokens": view.text is not None, "words": True}
    for col, shown in columns.items():
        if shown:
            tokens.add_column(col)
    pad = _pad_id(view.text) if view.text is not None else -1
    for s, spk in enumerate(view.speakers):
        row = [str(s), safe(spk)]
        if view.codes is not None:
            codes = view.codes[s, :, : view.valid_frames]
            distinct = [int(np.unique(r).size) for r in codes]
            ent = codebook_entropy_bits(codes)
            row += [f"{view.codes.shape[1]} x {view.codes.shape[2]}",
                    f"{min(distinct, default=0)}..{max(distinct, default=0)}",
                    f"{min(ent, default=0):.1f}..{max(ent, default=0):.1f}"]
        if view.dmel is not None:
            bins = view.dmel[s, :, : view.valid_frames]
            row += [f"{view.dmel.shape[1]} x {view.dmel.shape[2]}",
                    f"{bins.min()}..{bins.max()}, mean {bins.mean():.1f}" if bins.size else "empty"]
        if view.text is not None:
            row.append(f"{int((view.text[s, : view.valid_frames] != pad).sum())} non-PAD")
        row.append(str(sum(1 for w in view.words if w.get("stream") == s)))
        tokens.add_row(*row)
    return tokens


def _video(view: SampleView) -> str:
    n = int(view.frame_chunks.shape[0])
    if not n:
        return "[bold]video[/]: no frames in this window"
    covered = sorted(set(int(c) for c in view.frame_chunks))
    held = []
    if view.pixels is not None:
        held.append(f"pixels {view.pixels.shape[1]}x{view.pixels.shape[2]} RGB")
    if view.frames is not None:
        held.append(f"{view.frames.shape[1]}x{view.frames.shape[2]} frame-codec tokens "
                    f"({np.unique(view.frames).size} distinct)")
    return f"[bold]video[/]: {n} frame(s), chunks {covered[0]}..{covered[-1]}: {'; '.join(held) or 'chunk index only'}"


def _provenance(view: SampleView):
    from rich.table import Table

    src = view.meta.get("sources") or {}
    table = Table(title="provenance")
    for col in ("stream", "speaker", "source", "channel", "offset (samples)"):
        table.add_column(col, overflow="fold")
    for i, a in enumerate(src.get("audio") or []):
        off = int(a.get("offset_sample", 0))
        table.add_row(str(i), safe(a.get("speaker")), safe(a.get("uri")), safe(a.get("channel", "")),
                      f"{off / CODEC_RATE:+.3f} s ({off})")
    video = src.get("video")
    if video:
        off = int(video.get("offset_sample", 0))
        table.add_row("video", "", safe(video.get("uri")), "", f"{off / CODEC_RATE:+.3f} s ({off})")
    return table


def _colour(stream: int) -> str:
    return ("cyan", "green", "yellow", "blue")[stream % 4]


def _pad_id(text_SF: np.ndarray) -> int:
    """PAD is the id that fills the frames between words: the most frequent id of the text stream."""
    if text_SF.size == 0:
        return -1
    ids, counts = np.unique(text_SF, return_counts=True)
    return int(ids[np.argmax(counts)])
