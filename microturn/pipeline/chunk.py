"""Cut a tokenized session into samples: windows of ``window_chunks`` 200 ms chunks every
``hop_chunks`` chunks, on the exact codec frame grid.

Every window has the full length ``F = window_chunks * 15`` frames; the last one of a session is
padded (codes 0, activity 0, text ``text_pad_id``) and ``meta.json["valid_frames"]`` says how many
frames are real. Nothing is dropped: windows run until the session's valid frames are covered.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from microturn.clock import GRID, Grid
from microturn.config import ChunkConfig
from microturn.format import FORMAT_VERSION, EVENT_KINDS, encode_sample, index_row_from_meta, sample_key
from microturn.records import Event, Sample, StageError, TokenizedSession, Word


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


def _speakers(tok: TokenizedSession) -> list[str]:
    return [s.speaker for s in tok.aligned.decoded.streams]


def _sources(tok: TokenizedSession) -> dict[str, Any]:
    decoded = tok.aligned.decoded
    streams = [
        {"uri": s.source_uri, "channel": int(s.channel), "speaker": s.speaker, "offset_sample": int(s.offset_sample)}
        for s in decoded.streams
    ]
    video = None
    if decoded.video is not None:
        video = {"uri": decoded.video.source_uri, "offset_sample": int(decoded.video.offset_sample)}
    return {"audio": streams, "video": video, **({"extra": decoded.sources} if decoded.sources else {})}


def _check(tok: TokenizedSession, grid: Grid) -> None:
    sid = tok.aligned.decoded.session_id
    S = len(tok.aligned.decoded.streams)
    if tok.num_frames % grid.frames_per_chunk:
        raise StageError("chunk", "bad_grid", f"num_frames {tok.num_frames} is not whole chunks", source=sid)
    if tok.codes.ndim != 3 or tok.codes.shape[0] != S or tok.codes.shape[2] != tok.num_frames:
        raise StageError("chunk", "bad_shape", f"codes shape {tok.codes.shape} != [{S}, K, {tok.num_frames}]",
                         source=sid)
    if tok.text.shape != (S, tok.num_frames):
        raise StageError("chunk", "bad_shape", f"text shape {tok.text.shape} != [{S}, {tok.num_frames}]", source=sid)
    if tok.frame_tokens.ndim != 3 or tok.frame_chunks.shape != (tok.frame_tokens.shape[0],):
        raise StageError("chunk", "bad_shape", f"frame tokens {tok.frame_tokens.shape} / chunks "
                                               f"{tok.frame_chunks.shape} disagree", source=sid)
    if not 0 < tok.valid_frames <= tok.num_frames:
        raise StageError("chunk", "empty_session" if tok.valid_frames <= 0 else "bad_grid",
                         f"valid_frames {tok.valid_frames} outside (0, {tok.num_frames}]", source=sid)


def make_samples(
    tok: TokenizedSession,
    events: Sequence[Event],
    cfg: ChunkConfig,
    *,
    text_pad_id: int = 0,
    grid: Grid = GRID,
) -> list[Sample]:
    """Windows of one session as encoded samples (members + index row), in window order.

    ``events`` are session-level events on the codec frame grid (``detect_events``). Each sample keeps
    the events and words that overlap its window, with window-relative frames (clipped at the edges and
    marked ``clipped``); the index row counts the events that *start* inside the window, so counts over
    non-overlapping windows add up to the session's.
    """
    _check(tok, grid)
    decoded = tok.aligned.decoded
    sid = decoded.session_id
    F = grid.chunk_to_frame(cfg.window_chunks)
    activity = _fit(np.asarray(tok.aligned.activity, dtype=np.uint8), 0, tok.num_frames, 0)
    codes = np.asarray(tok.codes, dtype=np.int16)
    text = np.asarray(tok.text, dtype=np.int32)
    frame_tokens = np.asarray(tok.frame_tokens, dtype=np.int16)
    frame_chunks = np.asarray(tok.frame_chunks, dtype=np.int32)
    valid_chunks = grid.frame_to_chunk(tok.valid_frames + grid.frames_per_chunk - 1)
    speakers, sources = _speakers(tok), _sources(tok)
    session_duration_s = float(grid.frames_to_seconds(tok.valid_frames))
    word_frames = [(grid.sample_to_frame(w.start_sample, "floor"), grid.sample_to_frame(w.end_sample, "ceil"))
                   for w in tok.aligned.words]

    samples = []
    for window_index, c0 in enumerate(window_starts(valid_chunks, cfg)):
        f0, f1 = grid.chunk_to_frame(c0), grid.chunk_to_frame(c0) + F
        valid = min(F, tok.valid_frames - f0)
        win_activity = _fit(activity, f0, F, 0)
        in_frames = (frame_chunks >= c0) & (frame_chunks < c0 + cfg.window_chunks)
        win_events = [e for e in events if e.end_frame > f0 and e.start_frame < f1]
        words = [_word_json(w, f0, F, grid) for w, (a, b) in zip(tok.aligned.words, word_frames)
                 if b > f0 and a < f1]
        talking = win_activity[:, :valid].astype(np.int32).sum(axis=0)
        speech = int((talking >= 1).sum())
        counts = {k: 0 for k in EVENT_KINDS}
        for e in win_events:
            if e.start_frame >= f0:
                counts[e.kind] += 1
        meta = {
            "format_version": FORMAT_VERSION,
            "session_id": sid,
            "window_index": window_index,
            "start_chunk": c0,
            "start_frame": f0,
            "start_sample": grid.frame_to_sample(f0),
            "num_frames": F,
            "valid_frames": valid,
            "session_num_frames": tok.num_frames,
            "session_valid_frames": tok.valid_frames,
            "speakers": speakers,
            "sources": sources,
            "fingerprints": dict(sorted(tok.fingerprints.items())),
            "codebooks": int(codes.shape[1]),
            "language": decoded.language,
            "flags": list(tok.aligned.flags),
            "quality": tok.aligned.quality,
            "av_offset_sample": int(tok.aligned.av_offset_sample),
            "stats": {
                "start_s": float(grid.frames_to_seconds(f0)),
                "duration_s": float(grid.frames_to_seconds(valid)),
                "session_duration_s": session_duration_s,
                "num_video_frames": int(in_frames.sum()),
                "speech_ratio": round(speech / valid, 6),
                "overlap_ratio": round(int((talking >= 2).sum()) / speech, 6) if speech else 0.0,
                "word_count": len(words),
                "event_counts": counts,
            },
        }
        members = encode_sample(
            meta=meta,
            codes=_fit(codes, f0, F, 0),
            activity=win_activity,
            text=_fit(text, f0, F, text_pad_id),
            words=words,
            frames=np.ascontiguousarray(frame_tokens[in_frames]),
            frame_chunks=(frame_chunks[in_frames] - c0).astype(np.int32),
            events=[_event_json(e, f0, F) for e in win_events],
        )
        key = sample_key(sid, window_index)
        samples.append(Sample(key=key, members=members,
                              index_row=index_row_from_meta(key, meta, sum(len(b) for b in members.values()))))
    return samples


def random_tokenized_session(
    session_id: str,
    num_samples: int,
    *,
    streams: int = 2,
    codebooks: int = 8,
    frame_hw: tuple[int, int] = (8, 8),
    audio_vocab: int = 1024,
    frames_vocab: int = 1000,
    text_vocab: int = 260,
    seed: int = 0,
    grid: Grid = GRID,
) -> TokenizedSession:
    """A tokenized session built from seeded random tokens and alternating speech, with no media and
    no models: for tests and benchmarks of chunking and sharding (its arrays have the real dtypes and
    shapes; its words and activity are consistent with each other)."""
    from microturn.records import AlignedSession, AudioStream, DecodedSession, VideoFrames

    rng = np.random.default_rng(seed)
    num_frames = grid.chunk_to_frame(grid.num_chunks(num_samples))
    valid_frames = grid.valid_frames(num_samples)
    chunks = num_frames // grid.frames_per_chunk
    wave = np.zeros(0, dtype=np.float32)
    decoded = DecodedSession(
        session_id=session_id,
        num_samples=num_samples,
        streams=tuple(AudioStream(speaker=f"spk{i}", source_uri=f"/data/{session_id}/spk{i}.wav", channel=0,
                                  wave_24k=wave, wave_16k=wave) for i in range(streams)),
        video=VideoFrames(source_uri=f"/data/{session_id}/video.mp4",
                          frames_rgb=np.zeros((0, 1, 1, 3), np.uint8), frame_chunks=np.zeros(0, np.int32)),
        language="en",
    )
    activity = np.zeros((streams, num_frames), dtype=np.uint8)
    words = []
    turn = int(grid.frame_rate * 2)  # 2 s turns, alternating speakers, with a word per 0.4 s
    for t, f in enumerate(range(0, valid_frames, turn)):
        s = t % streams
        end = min(valid_frames, f + turn - 10)
        activity[s, f:end] = 1
        for w, wf in enumerate(range(f, end - 20, 30)):
            words.append(Word(text=f"w{t}_{w}", start_sample=grid.frame_to_sample(wf),
                              end_sample=grid.frame_to_sample(wf + 25), stream=s, timing="synthetic"))
    aligned = AlignedSession(decoded=decoded, activity=activity, words=tuple(words),
                             quality={"speech_ratio": float(activity.max(axis=0).mean())})
    text = np.zeros((streams, num_frames), dtype=np.int32)
    for w in words:
        f = grid.sample_to_frame(w.start_sample)
        text[w.stream, f : f + 3] = rng.integers(3, text_vocab, size=3)
    return TokenizedSession(
        aligned=aligned,
        num_frames=num_frames,
        valid_frames=valid_frames,
        codes=rng.integers(0, audio_vocab, size=(streams, codebooks, num_frames), dtype=np.int16),
        text=text,
        frame_tokens=rng.integers(0, frames_vocab, size=(chunks, *frame_hw), dtype=np.int16),
        frame_chunks=np.arange(chunks, dtype=np.int32),
        fingerprints={"audio": "untrained:0", "frames": "untrained:0", "text": "bytes:v1"},
    )
