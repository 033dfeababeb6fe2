"""Tokenize stage: waves, frames and words -> every configured representation's arrays (``Tokens``).

``tokenize_input`` takes what tokenization reads out of the decoded media and the timeline: every
speaker stream padded with silence to whole chunks (``GRID.padded_samples``), the picked video frames
and the words. That record is all that crosses to a tokenizer actor (once per session); ``Tokens``,
which holds no waves, comes back.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.format import FRAME_INDEX
from microturn.media import spill
from microturn.records import DecodedMedia, StageError, Timeline, TokenizeInput, Tokens
from microturn.tokenizers import TokenizerSet
from microturn.tokenizers.representation import session_frames


def _rows_in_place(media: DecodedMedia, padded: int) -> Optional[np.ndarray]:
    """The streams' common buffer cut to ``padded`` when the streams are its rows, in order, and it
    holds silence up to ``padded`` (decode's views of a multi-channel file's buffer, whose unwritten
    capacity is zeros): a view, where a copy would hold the session's waves twice (0.7 GB per hour of stereo)."""
    base = media.streams[0].wave_24k.base
    if not (isinstance(base, np.ndarray) and base.ndim == 2 and base.dtype == np.float32 and base.flags.c_contiguous
            and base.shape[0] == len(media.streams) and base.shape[1] >= padded):
        return None
    for i, stream in enumerate(media.streams):
        w = stream.wave_24k
        if not (w.base is base and w.shape == (media.num_samples,) and w.strides == (4,)
                and w.ctypes.data == base.ctypes.data + i * base.strides[0]):
            return None
    view = base[:, :padded]
    return None if view[:, media.num_samples :].any() else view


def padded_waves(media: DecodedMedia) -> np.ndarray:
    """float32 [streams, padded_samples]: every stream on the session clock, silence to whole chunks
    (read only: it may share the streams' memory)."""
    if media.num_samples <= 0:
        raise StageError("tokenize", "empty_session", "the session holds no audio samples")
    if not media.streams:
        raise StageError("tokenize", "no_audio_stream", "the session has no audio stream to tokenize")
    padded = GRID.padded_samples(media.num_samples)
    in_place = _rows_in_place(media, padded)
    if in_place is not None:
        return in_place
    # spilled like the streams (streams of separate files): in memory this copy is 0.35 GB per stream-hour
    waves = spill.zeros((len(media.streams), padded), like=media.streams[0].wave_24k)
    for i, stream in enumerate(media.streams):
        wave = np.asarray(stream.wave_24k, dtype=np.float32)
        if wave.ndim != 1:
            raise StageError("tokenize", "bad_audio_shape", f"stream {i}: wave_24k has shape {wave.shape}")
        n = min(len(wave), padded)  # streams shorter than the session end in silence
        spill.copy(waves[i, :n], wave[:n])
    return waves


def tokenize_input(media: DecodedMedia, timeline: Timeline) -> TokenizeInput:
    """Frames of chunks past the padded audio are dropped here, once: the grid is set by the audio."""
    video = media.video
    if video is not None:
        chunks = np.asarray(video.frame_chunks, dtype=np.int32)
        keep = (chunks >= 0) & (chunks < GRID.num_chunks(media.num_samples))
        kept = int(keep.sum())
        if keep[:kept].all():  # the usual case, a prefix (chunks increase): a view, not a copy of every frame
            frames_rgb, frame_chunks = np.asarray(video.frames_rgb)[:kept], chunks[:kept]
        else:
            frames_rgb, frame_chunks = np.asarray(video.frames_rgb)[keep], chunks[keep]
    else:
        frames_rgb, frame_chunks = np.zeros((0, 1, 1, 3), dtype=np.uint8), np.zeros((0,), dtype=np.int32)
    return TokenizeInput(media.num_samples, padded_waves(media), frames_rgb, frame_chunks, timeline.words)


def tokenize_session(inp: TokenizeInput, toks: TokenizerSet) -> Tokens:
    """Every representation of ``toks`` on one session; member names never collide (checked)."""
    return tokenize_sessions([inp], toks)[0]


def tokenize_sessions(inps: Sequence[TokenizeInput], toks: TokenizerSet) -> list[Tokens]:
    """``tokenize_session`` of several sessions, each representation called once with all of them (its
    batched ``tokenize``: EnCodec fills one forward pass with windows of several sessions)."""
    per_session: list[dict[str, Any]] = [
        {"arrays": {FRAME_INDEX: np.asarray(inp.frame_chunks, dtype=np.int32)}, "reports": {}} for inp in inps]
    fill: dict[str, int] = {}
    window_meta: dict[str, object] = {}
    for rep in toks:
        for acc, (out, report) in zip(per_session, rep.tokenize(list(inps))):
            clash = sorted(set(out) & set(acc["arrays"]))
            if clash:
                raise StageError("tokenize", "member_clash", f"representation {rep.name!r} writes {clash} again")
            acc["arrays"].update(out)
            if report:
                acc["reports"][rep.name] = report
        fill.update(rep.fill)
        window_meta.update(rep.window_meta())
    tokens = []
    for inp, acc in zip(inps, per_session):
        num_frames, valid_frames = session_frames(inp)
        tokens.append(Tokens(num_frames=num_frames, valid_frames=valid_frames, arrays=acc["arrays"],
                             members=toks.member_specs(), fill=dict(fill), window_meta=dict(window_meta),
                             fingerprints=toks.fingerprints(), reports=acc["reports"]))
    return tokens
