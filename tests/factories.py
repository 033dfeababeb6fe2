"""Records built without media or models, for tests and benchmarks of chunking, sharding and reading.

``random_tokenized_session`` gives what ``make_samples`` takes (header, timeline, tokens) filled with
seeded random tokens of the real dtypes and shapes and alternating speech whose words and activity
agree with each other.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from microturn.clock import GRID, Grid
from microturn.config import ChunkConfig, EventsConfig, ShardConfig
from microturn.format import DEFAULT_REPRESENTATION_MEMBERS, MemberSpec, TarStream, member_table
from microturn.pipeline.chunk import make_samples
from microturn.pipeline.events import detect_events
from microturn.pipeline.shard import ShardSink, finalize_dataset
from microturn.records import (
    AudioSource,
    Event,
    Provenance,
    Sample,
    SessionHeader,
    StreamSource,
    Timeline,
    Tokens,
    Word,
)

@dataclass(frozen=True)
class TokenizedSession:
    """A session as chunking sees it."""

    header: SessionHeader
    timeline: Timeline
    tokens: Tokens

    @property
    def codes(self) -> np.ndarray:
        return self.tokens.arrays["codes.npy"]

    @property
    def text(self) -> np.ndarray:
        return self.tokens.arrays["text.npy"]

    @property
    def frame_tokens(self) -> np.ndarray:
        return self.tokens.arrays["frames.npy"]

    @property
    def frame_chunks(self) -> np.ndarray:
        return self.tokens.arrays["frame_chunks.npy"]

    @property
    def activity(self) -> np.ndarray:
        return self.timeline.activity

    @property
    def words(self) -> tuple[Word, ...]:
        return self.timeline.words

    @property
    def num_frames(self) -> int:
        return self.tokens.num_frames

    @property
    def valid_frames(self) -> int:
        return self.tokens.valid_frames

    def samples(self, events: Sequence[Event], cfg: ChunkConfig) -> list[Sample]:
        return list(make_samples(self.header, self.timeline, self.tokens, events, cfg))


# the dMel and pixels representations' members (microturn/tokenizers/dmel.py, pixels.py) at the default hop
EXTRA_MEMBERS = (
    MemberSpec("dmel.npy", "npy", "uint8", ("S", "M", "F"), "dMel: log-mel bins per speaker stream", 15,
               tokenizer="dmel"),
    MemberSpec("pixels.npy", "npy", "uint8", ("N", "Y", "X", "C"), "RGB pixels of video frames", 55,
               tokenizer="pixels"),
)


def _header(session_id: str, streams: int) -> SessionHeader:
    uris = [f"/data/{session_id}/spk{i}.wav" for i in range(streams)]
    provenance = Provenance(
        origin=Fraction(0), audio_from_video=False,
        audio=tuple(AudioSource(u, 0, f"spk{i}", Fraction(0), Fraction(0), 0) for i, u in enumerate(uris)),
    )
    return SessionHeader(
        session_id=session_id,
        language="en",
        streams=tuple(StreamSource(u, 0, f"spk{i}", 0) for i, u in enumerate(uris)),
        video=StreamSource(f"/data/{session_id}/video.mp4", -1, "", 0),
        provenance=provenance,
    )


def _alternating_speech(streams: int, num_frames: int, valid_frames: int, grid: Grid) -> tuple[np.ndarray, list[Word]]:
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
    return activity, words


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
    representations: Sequence[str] = ("audio", "frames", "text"),
    dmel_channels: int = 8,
) -> TokenizedSession:
    """``representations``: which members besides text the session holds: codes (audio), frame tokens
    (frames), dMel bins [S, dmel_channels, F] of 16 bins (dmel), 80x80 RGB pixel frames (pixels)."""
    rng = np.random.default_rng(seed)
    num_frames = grid.chunk_to_frame(grid.num_chunks(num_samples))
    valid_frames = grid.valid_frames(num_samples)
    chunks = num_frames // grid.frames_per_chunk
    activity, words = _alternating_speech(streams, num_frames, valid_frames, grid)
    timeline = Timeline(activity=activity, words=tuple(words),
                        quality={"speech_ratio": float(activity.max(axis=0).mean())})
    text = np.zeros((streams, num_frames), dtype=np.int32)
    for w in words:
        f = grid.sample_to_frame(w.start_sample)
        text[w.stream, f : f + 3] = rng.integers(3, text_vocab, size=3)
    arrays = {
        "codes.npy": rng.integers(0, audio_vocab, size=(streams, codebooks, num_frames), dtype=np.int16),
        "text.npy": text,
        "frames.npy": rng.integers(0, frames_vocab, size=(chunks, *frame_hw), dtype=np.int16),
        "frame_chunks.npy": np.arange(chunks, dtype=np.int32),
    }
    if "dmel" in representations:
        arrays["dmel.npy"] = rng.integers(0, 16, size=(streams, dmel_channels, num_frames), dtype=np.uint8)
    if "pixels" in representations:
        arrays["pixels.npy"] = rng.integers(0, 256, size=(chunks, 80, 80, 3), dtype=np.uint8)
    held = {"audio": "codes.npy", "frames": "frames.npy", "dmel": "dmel.npy", "pixels": "pixels.npy"}
    kept = {"text.npy", *(held[r] for r in representations if r in held)}
    if not kept & {"frames.npy", "pixels.npy"}:  # no video member: no video frame to index
        arrays["frame_chunks.npy"] = np.zeros(0, dtype=np.int32)
    specs = {m.suffix: m for m in (*DEFAULT_REPRESENTATION_MEMBERS, *EXTRA_MEMBERS)}
    fingerprints = {"audio": "untrained:0", "frames": "untrained:0", "text": "bytes:v1", "dmel": "dmel/test",
                    "pixels": "pixels/80x80/rgb8/p40"}  # fmt: skip
    tokens = Tokens(
        num_frames=num_frames,
        valid_frames=valid_frames,
        arrays={k: v for k, v in arrays.items() if k in kept or k == "frame_chunks.npy"},
        members=tuple(specs[k] for k in specs if k in kept),
        fill={k: 0 for k in ("codes.npy", "text.npy", "dmel.npy") if k in kept},
        window_meta={"codebooks": codebooks} if "codes.npy" in kept else {},
        fingerprints={r: fingerprints[r] for r in ("text", *representations) if r in fingerprints},
    )
    return TokenizedSession(_header(session_id, streams), timeline, tokens)


def sample_tar_bytes(samples: Sequence[Sample]) -> bytes:
    """The tar bytes of ``samples`` in memory, as a part or a shard holds them."""
    buf = io.BytesIO()
    stream = TarStream(buf)
    for s in samples:
        stream.add_sample(s.key, s.members)
    stream.finish()
    return buf.getvalue()


def write_corpus(out: Path, tok: TokenizedSession, tokenizers: dict, *, window_chunks: int = 20,
                 edit: Callable[[Sample], Sample] = lambda s: s) -> Path:
    """A one-session corpus under ``out`` (one shard per sample) from ``tok``'s windows of
    ``window_chunks`` chunks with its turn-taking events, each sample passed through ``edit``."""
    samples = tok.samples(detect_events(tok.activity, EventsConfig()),
                          ChunkConfig(window_chunks=window_chunks, hop_chunks=window_chunks))
    sink = ShardSink(str(out), ShardConfig(target_bytes=1))
    sink.add_session([edit(s) for s in samples])
    # a corpus of other representations than format version 1's declares its members
    members = () if tok.tokens.members == DEFAULT_REPRESENTATION_MEMBERS else member_table(tok.tokens.members).to_json()
    finalize_dataset(str(out), sink, config_hash="h" * 64, tokenizers=tokenizers, rejections=[], sessions_in=1,
                     members=members)  # fmt: skip
    return out
