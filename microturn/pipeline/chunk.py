"""Cut a tokenized session into samples: windows of ``window_chunks`` 200 ms chunks every
``hop_chunks`` chunks, on the exact codec frame grid.

Every window has the full length ``F = window_chunks * 15`` frames; the last one of a session is
padded (each frame-grid member with its representation's fill: codes 0, activity 0, text PAD) and ``meta.json["valid_frames"]`` says how many
frames are real. Nothing is dropped: windows run until the session's valid frames are covered.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from microturn.clock import GRID, Grid
from microturn.config import ChunkConfig
from microturn.format import (
    EVENT_KINDS,
    FORMAT_VERSION,
    FRAME_INDEX,
    MemberTable,
    encode_sample,
    index_row_from_meta,
    member_table,
    sample_key,
)
from microturn.media import spill
from microturn.records import Event, Sample, SessionHeader, StageError, Timeline, Tokens, Word


def window_starts(valid_chunks: int, cfg: ChunkConfig) -> list[int]:
    """Start chunk of every window of a session with ``valid_chunks`` chunks of real audio.

    Windows start every ``hop_chunks`` chunks and stop once one reaches the end of the valid audio, so
    every valid chunk is in at least one window. A tail window that would hold fewer than
    ``min_valid_chunks`` valid chunks is pulled back to end at the session's end (it then overlaps the
    window before it) instead of being dropped.
    """
    if valid_chunks <= 0:
        return []
    W, H = cfg.window_chunks, cfg.hop_chunks
    starts = [0]
    while starts[-1] + W < valid_chunks:
        starts.append(starts[-1] + H)
    last = starts[-1]
    if len(starts) > 1 and valid_chunks - last < cfg.min_valid_chunks:
        starts[-1] = max(0, valid_chunks - W)
        if starts[-1] <= starts[-2]:  # the window before already reaches the end
            starts.pop()
    return starts


def _fit(array: np.ndarray, start: int, length: int, fill: int) -> np.ndarray:
    """``array[..., start:start+length]``, padded with ``fill`` past the array's end."""
    part = array[..., start : start + length]
    if part.shape[-1] == length:
        return np.ascontiguousarray(part)
    out = np.full(array.shape[:-1] + (length,), fill, dtype=array.dtype)
    out[..., : part.shape[-1]] = part
    return out


def _word_json(w: Word, f0: int, num_frames: int, grid: Grid) -> dict[str, Any]:
    start = grid.sample_to_frame(w.start_sample, "floor") - f0
    end = grid.sample_to_frame(w.end_sample, "ceil") - f0
    out: dict[str, Any] = {
        "text": w.text,
        "stream": int(w.stream),
        "start_frame": max(0, start),
        "end_frame": min(num_frames, max(end, start)),
        "timing": w.timing,
    }
    if start < 0 or end > num_frames:
        out["clipped"] = True  # the word crosses the window's edge
    if w.score is not None:
        out["score"] = round(float(w.score), 4)
    return out


def _event_json(e: Event, f0: int, num_frames: int) -> dict[str, Any]:
    start, end = e.start_frame - f0, e.end_frame - f0
    out: dict[str, Any] = {
        "kind": e.kind,
        "start_frame": max(0, start),
        "end_frame": min(num_frames, end),
        "stream": e.stream,
        "other": e.other,
    }
    if start < 0 or end > num_frames:
        out["clipped"] = True  # the event crosses the window's edge
    return out




def _check(header: SessionHeader, timeline: Timeline, tokens: Tokens, table: MemberTable, grid: Grid) -> None:
    sid, S, F = header.session_id, len(header.streams), tokens.num_frames
    if F % grid.frames_per_chunk:
        raise StageError("chunk", "bad_grid", f"num_frames {F} is not whole chunks", source=sid)
    dims = {suffix: spec.dims for suffix, spec in table.items()}
    for suffix, arr in tokens.arrays.items():
        want = dims.get(suffix)
        if want is None or arr.ndim != len(want):
            raise StageError("chunk", "bad_shape", f"{suffix} has shape {arr.shape}, its representation declares "
                                                   f"{want}", source=sid)
        fixed = {"S": S, "F": F}
        bad = [(d, n) for d, n in zip(want, arr.shape) if d in fixed and n != fixed[d]]
        if bad:
            raise StageError("chunk", "bad_shape", f"{suffix} shape {arr.shape} != {list(want)} with "
                                                   f"S={S}, F={F}", source=sid)
    chunks = F // grid.frames_per_chunk
    uneven = [s for s, arr in tokens.arrays.items() if dims[s][-1:] == ("T",) and arr.shape[-1] % chunks]
    if uneven:
        raise StageError("chunk", "bad_grid", f"{uneven} do not hold a whole number of steps per chunk", source=sid)
    n_frames = {arr.shape[0] for suffix, arr in tokens.arrays.items() if dims[suffix][:1] == ("N",)}
    if len(n_frames) > 1:
        raise StageError("chunk", "bad_shape", f"video-frame members disagree on their frame count {sorted(n_frames)}",
                         source=sid)
    if timeline.activity.shape[0] != S:
        raise StageError("chunk", "bad_shape", f"activity has {timeline.activity.shape[0]} streams, not {S}", source=sid)
    if not 0 < tokens.valid_frames <= F:
        raise StageError("chunk", "empty_session" if tokens.valid_frames <= 0 else "bad_grid",
                         f"valid_frames {tokens.valid_frames} outside (0, {F}]", source=sid)


def _release_read(arr: np.ndarray, rows: np.ndarray) -> None:
    """A spilled array's rows just copied go back to the kernel (the window's frames are consecutive)."""
    idx = np.flatnonzero(rows)
    if len(idx):
        spill.release(arr[idx[0] : idx[-1] + 1])


def _window_arrays(tokens: Tokens, activity: np.ndarray, f0: int, c0: int, in_frames: np.ndarray,
                   F: int, grid: Grid) -> dict[str, np.ndarray]:
    """Every array member of one window: frame-grid members cut at [f0, f0 + F) and padded with their
    representation's fill, members on a time axis of their own (``T``: steps per chunk = their session
    length / the session's chunks) cut at the same chunks, video-frame members cut to the window's frames."""
    chunks, window = tokens.num_frames // grid.frames_per_chunk, F // grid.frames_per_chunk
    frame_chunks = tokens.arrays[FRAME_INDEX]
    out = {"activity.npy": _fit(activity, f0, F, 0), FRAME_INDEX: (frame_chunks[in_frames] - c0).astype(np.int32)}
    for spec in tokens.members:
        arr = tokens.arrays[spec.suffix]
        if spec.dims[-1:] == ("F",):
            out[spec.suffix] = _fit(arr, f0, F, tokens.fill.get(spec.suffix, 0))
        elif spec.dims[-1:] == ("T",):
            steps = arr.shape[-1] // chunks
            out[spec.suffix] = _fit(arr, c0 * steps, window * steps, tokens.fill.get(spec.suffix, 0))
        elif spec.dims[:1] == ("N",):
            out[spec.suffix] = np.ascontiguousarray(arr[in_frames])
            _release_read(arr, in_frames)
        else:
            out[spec.suffix] = np.ascontiguousarray(arr)  # per-session constants repeat in every window
    return out


def _window_stats(activity: np.ndarray, valid: int, f0: int, in_frames: np.ndarray, words: list,
                  win_events: Sequence[Event], session_duration_s: float, grid: Grid) -> dict[str, Any]:
    talking = activity[:, :valid].astype(np.int32).sum(axis=0)
    speech = int((talking >= 1).sum())
    counts = {k: 0 for k in EVENT_KINDS}
    for e in win_events:
        if e.start_frame >= f0:
            counts[e.kind] += 1
    return {
        "start_s": float(grid.frames_to_seconds(f0)),
        "duration_s": float(grid.frames_to_seconds(valid)),
        "session_duration_s": session_duration_s,
        "num_video_frames": int(in_frames.sum()),
        "speech_ratio": round(speech / valid, 6),
        "overlap_ratio": round(int((talking >= 2).sum()) / speech, 6) if speech else 0.0,
        "word_count": len(words),
        "event_counts": counts,
    }


def _session_meta(header: SessionHeader, timeline: Timeline, tokens: Tokens) -> dict[str, Any]:
    """The part of meta.json every window of a session shares."""
    quality = dict(timeline.quality)
    quality.update({f"{name}_layout": report for name, report in tokens.reports.items()})
    return {
        "format_version": FORMAT_VERSION,
        "session_id": header.session_id,
        "session_num_frames": tokens.num_frames,
        "session_valid_frames": tokens.valid_frames,
        "speakers": header.speakers,
        "sources": header.sources_json(),
        "fingerprints": dict(sorted(tokens.fingerprints.items())),
        **tokens.window_meta,
        "language": header.language,
        "flags": list(timeline.flags),
        "quality": quality,
        "av_offset_sample": int(timeline.av_offset_sample),
    }


def make_samples(
    header: SessionHeader,
    timeline: Timeline,
    tokens: Tokens,
    events: Sequence[Event],
    cfg: ChunkConfig,
    *,
    grid: Grid = GRID,
) -> Iterator[Sample]:
    """Windows of one session as encoded samples (members + index row), in window order.

    ``events`` are session-level events on the codec frame grid (``detect_events``). Each sample keeps
    the events and words that overlap its window, with window-relative frames (clipped at the edges and
    marked ``clipped``); the index row counts the events that *start* inside the window, so counts over
    non-overlapping windows add up to the session's.

    The inputs are checked here; the samples are made as they are taken, so a writer holds one at a
    time (an hour with pixels is 0.4 GB of samples).
    """
    table = member_table(tokens.members)
    _check(header, timeline, tokens, table, grid)
    return _samples(header, timeline, tokens, events, cfg, grid, table)


def _samples(header: SessionHeader, timeline: Timeline, tokens: Tokens, events: Sequence[Event], cfg: ChunkConfig,
             grid: Grid, table: MemberTable) -> Iterator[Sample]:
    F = grid.chunk_to_frame(cfg.window_chunks)
    activity = _fit(np.asarray(timeline.activity, dtype=np.uint8), 0, tokens.num_frames, 0)
    frame_chunks = tokens.arrays[FRAME_INDEX]
    valid_chunks = grid.frame_to_chunk(tokens.valid_frames + grid.frames_per_chunk - 1)
    shared = _session_meta(header, timeline, tokens)
    session_duration_s = float(grid.frames_to_seconds(tokens.valid_frames))
    word_frames = [(grid.sample_to_frame(w.start_sample, "floor"), grid.sample_to_frame(w.end_sample, "ceil"))
                   for w in timeline.words]

    for window_index, c0 in enumerate(window_starts(valid_chunks, cfg)):
        f0, f1 = grid.chunk_to_frame(c0), grid.chunk_to_frame(c0) + F
        valid = min(F, tokens.valid_frames - f0)
        in_frames = (frame_chunks >= c0) & (frame_chunks < c0 + cfg.window_chunks)
        win_events = [e for e in events if e.end_frame > f0 and e.start_frame < f1]
        words = [_word_json(w, f0, F, grid) for w, (a, b) in zip(timeline.words, word_frames) if b > f0 and a < f1]
        arrays = _window_arrays(tokens, activity, f0, c0, in_frames, F, grid)
        meta = {
            **shared,
            "window_index": window_index,
            "start_chunk": c0,
            "start_frame": f0,
            "start_sample": grid.frame_to_sample(f0),
            "num_frames": F,
            "valid_frames": valid,
            "stats": _window_stats(arrays["activity.npy"], valid, f0, in_frames, words, win_events,
                                   session_duration_s, grid),
        }
        members = encode_sample(meta=meta, arrays=arrays, words=words,
                                events=[_event_json(e, f0, F) for e in win_events], table=table)
        key = sample_key(header.session_id, window_index)
        yield Sample(key=key, members=members,
                     index_row=index_row_from_meta(key, meta, sum(len(b) for b in members.values())))
