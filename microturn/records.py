"""Typed records passed between stages.

Stages are plain functions from one record to the next (see docs/architecture.md). Field names carry
their units: ``*_sample`` is a position at 24 kHz on the session clock (sample 0 = session start),
``*_frame`` a codec frame (320 samples), ``*_chunk`` a 200 ms chunk. Arrays document dtype and shape.
Records are frozen; numpy arrays inside them are treated as read-only by convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

import numpy as np

from microturn.errors import Stage, StageError  # noqa: F401  (records name the stage of a rejection)

if TYPE_CHECKING:
    from microturn.format import MemberSpec


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
class AudioSource:
    """One manifest audio row as decode placed it on the session clock."""

    uri: str
    channel: Optional[int]  # None: all channels downmixed
    speaker: Optional[str]
    offset_s: Fraction  # manifest offset
    start_s: Fraction  # presentation time of the first decoded audio frame, container clock
    offset_sample: int  # where the row's sample 0 sits on the session clock (24 kHz)

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "channel": self.channel, "speaker": self.speaker, "offset_s": float(self.offset_s),
                "start_s": float(self.start_s), "offset_sample": self.offset_sample}


@dataclass(frozen=True)
class VideoSource:
    """The session's video file as decode placed it on the session clock."""

    uri: str
    offset_s: Fraction  # manifest offset
    start_s: Optional[Fraction]  # presentation time of the first decoded frame; None: video not decoded
    offset_sample: Optional[int]  # where that frame sits on the session clock (24 kHz)
    frame_width: int
    frame_height: int
    resize: str

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "offset_s": float(self.offset_s),
                "start_s": float(self.start_s) if self.start_s is not None else None,
                "offset_sample": self.offset_sample, "frame_width": self.frame_width,
                "frame_height": self.frame_height, "resize": self.resize}


@dataclass(frozen=True)
class Provenance:
    """Where a session's media came from and how each source was placed (meta.json ``sources.extra``)."""

    origin: Fraction  # container time of session sample 0, exact
    audio_from_video: bool  # no audio rows: the video's own track is the audio
    audio: tuple[AudioSource, ...]
    video: Optional[VideoSource] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"origin_s": float(self.origin), "origin": str(self.origin),
                               "audio_from_video": self.audio_from_video,
                               "audio": [a.to_json() for a in self.audio]}
        if self.video is not None:
            out["video"] = self.video.to_json()
        return out

    def with_uris(self, mapping: Mapping[str, str]) -> "Provenance":
        """The same placements naming other URIs (local copies -> the manifest's)."""
        audio = tuple(replace(a, uri=mapping.get(a.uri, a.uri)) for a in self.audio)
        video = replace(self.video, uri=mapping.get(self.video.uri, self.video.uri)) if self.video else None
        return replace(self, audio=audio, video=video)


@dataclass(frozen=True)
class AudioStream:
    """One speaker stream (or one mixed track) on the session clock.

    The waves are usually spilled to a temporary file (``media/spill.py``): read them a window at a
    time and ``spill.release`` each window once used, or a whole-wave pass holds them all in memory."""

    speaker: str  # speaker id from the manifest; "mixed" for an undiarized mixed track
    source_uri: str
    channel: int  # -1: downmixed
    wave_24k: np.ndarray  # float32 [num_samples] at 24 kHz, sample 0 = session start
    wave_16k: Optional[np.ndarray]  # float32 [ceil(num_samples * 2 / 3)] at 16 kHz, same clock; None once
    # align has used it (``align_session(release_16k=True)``: VAD, ASR and alignment read it, nothing after)
    offset_sample: int = 0  # offset applied (manifest offset + start-time difference), 24 kHz


@dataclass(frozen=True)
class VideoFrames:
    """Frames sampled by presentation time on the chunk grid (one per chunk by default)."""

    source_uri: str
    frames_rgb: np.ndarray  # uint8 [n, height, width, 3]
    frame_chunks: np.ndarray  # int32 [n], chunk index of each frame, strictly increasing
    offset_sample: int = 0


@dataclass(frozen=True)
class VideoTrace:
    """What the picture does, frame by frame, for the A/V offset estimate (align/av_offset.py)."""

    times_sample: np.ndarray  # int64 [n] presentation time of each frame on the session clock
    features: np.ndarray  # float32 [n, k] per-cell brightness and motion


@dataclass(frozen=True)
class FrameCandidates:
    """Every decoded video frame at output size with its place on the clock, kept (only when the A/V
    offset may be applied) so that frames can be picked again for a shifted video without decoding
    the file a second time."""

    samples: np.ndarray  # int64 [n] presentation sample of each frame on the session clock, increasing
    frames_rgb: np.ndarray  # uint8 [n, height, width, 3]
    end_sample: int  # where the last frame's presentation ends


@dataclass(frozen=True)
class StreamSource:
    """Which source a tokenized stream came from (meta.json ``sources.audio``)."""

    uri: str
    channel: int
    speaker: str
    offset_sample: int


@dataclass(frozen=True)
class SessionHeader:
    """What chunking needs to know about a session's media, without the media itself."""

    session_id: str
    language: Optional[str]
    streams: tuple[StreamSource, ...]
    video: Optional[StreamSource]  # channel -1, speaker ""
    provenance: Optional[Provenance]

    @property
    def speakers(self) -> list[str]:
        return [s.speaker for s in self.streams]

    def sources_json(self) -> dict[str, Any]:
        streams = [{"uri": s.uri, "channel": int(s.channel), "speaker": s.speaker,
                    "offset_sample": int(s.offset_sample)} for s in self.streams]
        video = {"uri": self.video.uri, "offset_sample": int(self.video.offset_sample)} if self.video else None
        out: dict[str, Any] = {"audio": streams, "video": video}
        if self.provenance is not None:
            out["extra"] = self.provenance.to_json()
        return out


@dataclass(frozen=True)
class DecoderInfo:
    """How a session's video was decoded (per session in its outcome; stats.json counts sessions by it)."""

    hwaccel: Optional[str] = None  # the device type ("cuda") when its video decoder ran on one; None: software
    skip_nonref: bool = False  # non-reference frames were not decoded (decode.skip_nonref, see media/video.py)
    left_out: int = 0  # pictures no chunk takes and no picture references, not decoded (exact picking)

    def to_json(self) -> dict[str, Any]:
        return {"hwaccel": self.hwaccel, "skip_nonref": self.skip_nonref, "left_out": self.left_out}


@dataclass(frozen=True)
class DecodedMedia:
    """Everything later stages need from a session's media files: after decode nothing opens a file."""

    session_id: str
    num_samples: int  # session length at 24 kHz (longest source after offsets)
    streams: tuple[AudioStream, ...]
    video: Optional[VideoFrames]
    provenance: Optional[Provenance] = None
    language: Optional[str] = None
    warnings: tuple[str, ...] = ()
    trace: Optional[VideoTrace] = None  # when the A/V offset is estimated
    candidates: Optional[FrameCandidates] = None  # when it may also be applied
    decoder: DecoderInfo = DecoderInfo()  # software, every frame, unless the config asked otherwise

    def header(self) -> SessionHeader:
        streams = tuple(StreamSource(s.source_uri, s.channel, s.speaker, s.offset_sample) for s in self.streams)
        video = StreamSource(self.video.source_uri, -1, "", self.video.offset_sample) if self.video else None
        return SessionHeader(self.session_id, self.language, streams, video, self.provenance)


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
class Timeline:
    """What align found on the session clock, beside (not wrapping) the decoded media."""

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
class TokenizeInput:
    """What tokenization reads: the only record that carries waves across the Ray boundary."""

    num_samples: int  # real session length at 24 kHz
    waves_24k: np.ndarray  # float32 [streams, padded_samples], silence-padded to whole chunks
    frames_rgb: np.ndarray  # uint8 [n, height, width, 3]
    frame_chunks: np.ndarray  # int32 [n]
    words: tuple[Word, ...]


@dataclass(frozen=True)
class Tokens:
    """Every representation's arrays on the session grid, keyed by tar member (``codes.npy``...)."""

    num_frames: int  # padded to whole chunks: num_chunks * 15
    valid_frames: int  # frames holding real audio
    arrays: dict[str, np.ndarray]
    members: tuple["MemberSpec", ...]  # the representations' member specs (dims say how to window each)
    fill: dict[str, int]  # value that pads each frame-grid member past the session's end
    window_meta: dict[str, Any] = field(default_factory=dict)  # facts every window's meta.json repeats
    fingerprints: dict[str, str] = field(default_factory=dict)  # representation -> fingerprint
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # per representation, e.g. text layout counts


@dataclass(frozen=True)
class Sample:
    """One WebDataset sample: a window of one session, encoded and ready for a tar."""

    key: str  # "<session>-<window:06d>", no dots
    members: dict[str, bytes]  # member suffix ("meta.json", "codes.npy", ...) -> bytes
    index_row: dict[str, Any]  # the row for index.parquet (without the shard name)
