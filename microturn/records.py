"""Typed records passed between stages.

Stages are plain functions from one record to the next (see docs/architecture.md). Field names carry
their units: ``*_sample`` is a position at 24 kHz on the session clock (sample 0 = session start),
``*_frame`` a codec frame (320 samples), ``*_chunk`` a 200 ms chunk. Arrays document dtype and shape.
Records are frozen; numpy arrays inside them are treated as read-only by convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np

Stage = Literal["manifest", "probe", "decode", "align", "tokenize", "chunk", "shard", "job"]


class StageError(Exception):
    """A session (or one of its sources) cannot go on; it goes to quarantine with this reason.

    ``reason`` is a short machine-readable code (``no_audio_stream``, ``filtered:speech_ratio``,
    ``timeout``...); ``message`` says what happened in words a data engineer can act on.
    """

    def __init__(self, stage: Stage, reason: str, message: str, *, source: Optional[str] = None):
        super().__init__(f"[{stage}] {reason}: {message}" + (f" ({source})" if source else ""))
        self.stage = stage
        self.reason = reason
        self.message = message
        self.source = source


@dataclass(frozen=True)
class Rejection:
    """One row of quarantine.parquet."""

    session_id: str
    source: str  # the input URI (or the manifest line) that failed
    stage: str
    reason: str  # error type / code, e.g. "no_audio_stream", "filtered:speech_ratio", "timeout"
    message: str


# ---------------------------------------------------------------- probe / decode


@dataclass(frozen=True)
class StreamInfo:
    index: int
    kind: Literal["audio", "video", "subtitle", "data", "other"]
    codec: str
    start_s: Optional[float]  # stream start time in seconds, None when unknown
    duration_s: Optional[float]
    sample_rate: Optional[int] = None  # audio
    channels: Optional[int] = None  # audio
    width: Optional[int] = None  # video
    height: Optional[int] = None  # video
    average_fps: Optional[float] = None  # video


@dataclass(frozen=True)
class MediaInfo:
    uri: str
    format_name: str
    duration_s: Optional[float]
    streams: tuple[StreamInfo, ...]

    def first(self, kind: str) -> Optional[StreamInfo]:
        return next((s for s in self.streams if s.kind == kind), None)


@dataclass(frozen=True)
class AudioStream:
    """One speaker stream (or one mixed track) on the session clock."""

    speaker: str  # speaker id from the manifest; "mixed" for an undiarized mixed track
    source_uri: str
    channel: int
    wave_24k: np.ndarray  # float32 [num_samples] at 24 kHz, sample 0 = session start
    wave_16k: np.ndarray  # float32 [ceil(num_samples * 2 / 3)] at 16 kHz, same clock
    offset_sample: int = 0  # offset applied (manifest offset + start-time difference), 24 kHz


@dataclass(frozen=True)
class VideoFrames:
    """Frames sampled by presentation time on the chunk grid (one per chunk by default)."""

    source_uri: str
    frames_rgb: np.ndarray  # uint8 [n, height, width, 3]
    frame_chunks: np.ndarray  # int32 [n], chunk index of each frame, strictly increasing
    offset_sample: int = 0


@dataclass(frozen=True)
class DecodedSession:
    session_id: str
    num_samples: int  # session length at 24 kHz (longest source after offsets)
    streams: tuple[AudioStream, ...]
    video: Optional[VideoFrames]
    language: Optional[str] = None
    sources: dict[str, Any] = field(default_factory=dict)  # provenance for meta.json
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- align


@dataclass(frozen=True)
class Word:
    text: str
    start_sample: int  # 24 kHz, session clock
    end_sample: int
    stream: int  # index into the session's streams
    timing: Literal["aligned", "asr", "whisper", "source", "interpolated", "synthetic"] = "source"
    score: Optional[float] = None


@dataclass(frozen=True)
class AlignedSession:
    decoded: DecodedSession
    activity: np.ndarray  # uint8 [streams, frames] speech activity on the codec frame grid
    words: tuple[Word, ...]  # all streams, sorted by (start_sample, stream)
    av_offset_sample: int = 0  # residual audio/video offset estimate applied (24 kHz)
    av_offset_confidence: Optional[float] = None
    quality: dict[str, Any] = field(default_factory=dict)  # per-session and per-stream measures
    flags: tuple[str, ...] = ()  # e.g. "undiarized_mixed", "words:interpolated"


# ---------------------------------------------------------------- tokenize / chunk


@dataclass(frozen=True)
class Event:
    """A turn-taking event on the codec frame grid of the session."""

    kind: Literal["turn", "gap", "pause", "overlap", "backchannel", "interruption"]
    start_frame: int
    end_frame: int  # exclusive
    # The speaker it belongs to: for a gap the next speaker, for an overlap the one who joined.
    stream: Optional[int] = None
    # The other speaker involved: for a gap the previous speaker, for an overlap the one already talking.
    other: Optional[int] = None


@dataclass(frozen=True)
class TokenizedSession:
    aligned: AlignedSession
    num_frames: int  # padded to whole chunks: num_chunks * 15
    valid_frames: int  # frames holding real audio
    codes: np.ndarray  # int16 [streams, codebooks, num_frames]
    text: np.ndarray  # int32 [streams, num_frames]
    frame_tokens: np.ndarray  # int16 [n, h, w]
    frame_chunks: np.ndarray  # int32 [n]
    fingerprints: dict[str, str] = field(default_factory=dict)  # {"audio": ..., "frames": ..., "text": ...}


@dataclass(frozen=True)
class Sample:
    """One WebDataset sample: a window of one session, encoded and ready for a tar."""

    key: str  # "<session>-<window:06d>", no dots
    members: dict[str, bytes]  # member suffix ("meta.json", "codes.npy", ...) -> bytes
    index_row: dict[str, Any]  # the row for index.parquet (without the shard name)
