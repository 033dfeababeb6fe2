"""Tokenize stage: AlignedSession -> TokenizedSession.

Every speaker stream is padded with silence to whole chunks (``GRID.padded_samples``) and encoded
in one call (the audio tokenizer batches windows across streams); each stream gets its text stream
on the same frame grid; video frames (if any) are cropped/resized to the frame codec's input size and
encoded. Frames past the padded audio are dropped: the grid is set by the audio.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from microturn.clock import GRID
from microturn.records import AlignedSession, StageError, TokenizedSession
from microturn.tokenizers import TokenizerSet, layout_text


def padded_waves(aligned: AlignedSession) -> tuple[np.ndarray, int]:
    """float32 [streams, padded_samples] and the real session length in samples."""
    decoded = aligned.decoded
    num_samples = decoded.num_samples
    if num_samples <= 0:
        raise StageError("tokenize", "empty_session", "the session holds no audio samples")
    if not decoded.streams:
        raise StageError("tokenize", "no_audio_stream", "the session has no audio stream to tokenize")
    padded = GRID.padded_samples(num_samples)
    waves = np.zeros((len(decoded.streams), padded), dtype=np.float32)
    for i, stream in enumerate(decoded.streams):
        wave = np.asarray(stream.wave_24k, dtype=np.float32)
        if wave.ndim != 1:
            raise StageError("tokenize", "bad_audio_shape", f"stream {i}: wave_24k has shape {wave.shape}")
        n = min(len(wave), padded)  # streams shorter than the session end in silence
        waves[i, :n] = wave[:n]
    return waves, num_samples


def tokenize_session(aligned: AlignedSession, toks: TokenizerSet) -> TokenizedSession:
    waves, num_samples = padded_waves(aligned)
    codes = toks.audio.encode(waves)  # int16 [S, K, F]
    num_frames = codes.shape[-1]

    layouts = [layout_text(aligned.words, s, num_frames, toks.text) for s in range(waves.shape[0])]
    text = np.stack([lay.tokens for lay in layouts]).astype(np.int32)

    video = aligned.decoded.video
    h, w = toks.frames.grid
    if video is not None and len(video.frames_rgb):
        num_chunks = num_frames // GRID.frames_per_chunk
        chunks = np.asarray(video.frame_chunks, dtype=np.int32)
        keep = (chunks >= 0) & (chunks < num_chunks)
        frame_tokens = toks.frames.encode(np.asarray(video.frames_rgb)[keep])
        frame_chunks = chunks[keep]
    else:
        frame_tokens = np.zeros((0, h, w), dtype=np.int16)
        frame_chunks = np.zeros((0,), dtype=np.int32)

    quality = dict(aligned.quality)
    quality["text_layout"] = {
        "words": sum(lay.words for lay in layouts),
        "shifted": sum(lay.shifted for lay in layouts),
        "truncated": sum(lay.truncated for lay in layouts),
        "dropped": sum(lay.dropped for lay in layouts),
    }
    return TokenizedSession(
        aligned=replace(aligned, quality=quality),
        num_frames=num_frames,
        valid_frames=GRID.valid_frames(num_samples),
        codes=codes,
        text=text,
        frame_tokens=frame_tokens,
        frame_chunks=frame_chunks,
        fingerprints=toks.fingerprints(),
    )
