"""Validated configuration: one pydantic model per component, loaded from YAML, dotted overrides.

Each component reads only its own section. Unknown keys and wrong types are errors that name the key
(``ConfigError``). The resolved config is saved next to the outputs (``BuildConfig.dump_yaml``) and
its hash goes into dataset.json.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from microturn.clock import GRID


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# ---------------------------------------------------------------- decode / align


class DecodeConfig(Section):
    frame_width: int = Field(64, gt=0, description="video frames are resized/cropped to this width")
    frame_height: int = Field(64, gt=0)
    frames_per_chunk: int = Field(
        1, ge=0, le=1, description="video frames kept per 200 ms chunk (0 = no video; frame_chunks must increase)"
    )
    resize: Literal["crop", "pad", "stretch"] = "crop"
    duration_tolerance_s: float = Field(2.0, ge=0, description="max disagreement between a session's sources")
    min_duration_s: float = Field(0.2, ge=0)
    max_duration_s: float = Field(
        4 * 3600, gt=0, description="longest session; decode's buffers never grow past it (+ duration_tolerance_s)"
    )
    max_frame_pixels: int = Field(
        8192 * 8192, gt=0, description="largest video frame (width x height) accepted; larger is rejected at probe"
    )
    window_s: float = Field(60.0, gt=0, description="decode long inputs in windows of this length")
    spill: bool = Field(
        True, description="keep the session's waves in a temporary file, read a window at a time, instead of in "
        "memory: a worker's memory stays flat in session length (microturn/media/spill.py)")
    spill_dir: Optional[Path] = Field(
        None, description="folder of the spill files (default: the system's temporary folder; a disk, not tmpfs)")
    threads: int = Field(0, ge=0, description="decoder threads per stream (0 = FFmpeg's choice)")
    hwaccel: Literal["auto", "off"] = Field(
        "off", description="auto: decode video on a hardware decoder (CUDA, VAAPI, VideoToolbox) when FFmpeg and a "
        "device support it, else in software; stats.json counts sessions per decoder")
    skip_nonref: bool = Field(
        False, description="skip non-reference frames of streams with >= 2x the frames the chunks take: faster; a "
        "chunk may get a frame up to one run of B-frames earlier than the exact one (microturn/media/video.py)")


class QualityFilters(Section):
    min_speech_ratio: float = Field(0.0, ge=0, le=1)
    max_clipping_ratio: float = Field(1.0, ge=0, le=1)
    min_snr_db: Optional[float] = None
    duplicate_channels: Literal["mixed", "quarantine"] = "mixed"
    duplicate_channel_similarity: float = Field(0.98, gt=0, le=1)


class AlignConfig(Section):
    vad: Literal["pyannote", "energy"] = "pyannote"
    energy_threshold_db: float = -35.0
    min_speech_ms: int = Field(120, ge=0)
    min_silence_ms: int = Field(150, ge=0)
    crosstalk_margin_db: float = Field(10.0, ge=0)
    crosstalk: Literal["attribute", "dominance"] = Field(
        "attribute", description="per-microphone attribution: the two-channel bleed model, or the old level rule"
    )
    speech_gate: bool = Field(
        True, description="drop pyannote runs that are not speech-like (music, effects): vad.speech_like_runs"
    )
    asr_model_dir: Optional[Path] = None
    align_model_dir: Optional[Path] = None
    diarization_dir: Optional[Path] = None
    nltk_data_dir: Optional[Path] = None
    asr_batch_size: int = Field(8, gt=0, description="30 s Whisper windows decoded together")
    asr_beam_size: int = Field(5, gt=0)
    asr_threads: int = Field(0, ge=0, description="CTranslate2 CPU threads (0 = torch's thread count: the task's CPU share)")
    asr_pad_ms: int = Field(200, ge=0, description="audio kept around each speech region sent to ASR")
    asr_fill_gap_ms: int = Field(3000, ge=0, description="pauses in a stream's speech no other stream "
                                 "speaks in, up to this long, are sent to ASR too (quiet words the VAD missed)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    estimate_av_offset: bool = False
    av_offset_max_ms: float = Field(500.0, gt=0, description="search range of the A/V offset estimate")
    apply_av_offset: bool = Field(True, description="re-pick video frames when the estimate is confident")
    av_offset_min_confidence: float = Field(0.3, ge=0, le=1)
    filters: QualityFilters = QualityFilters()


# ---------------------------------------------------------------- tokenizers


class AudioCodecConfig(Section):
    bandwidth_kbps: float = 6.0
    weights_dir: Optional[Path] = Field(None, description="folder holding encodec_24khz-d7cc33bc.th")
    checkpoint: Optional[Path] = Field(None, description="an EnCodec-format checkpoint file")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_windows: int = Field(
        2, gt=0, description="windows per forward pass (the same codes for any value): 2 keeps a CPU worker's "
        "activations near 0.1 GB at full speed (8: 0.4 GB, no faster on a CPU); raise it on a GPU")
    window_s: float = Field(10.0, gt=0, description="audio is encoded in windows of this length")
    context_s: float = Field(
        1.0, ge=0, description="audio before each window fed to the causal codec and then dropped"
    )
    engine: Literal["fast", "stock"] = Field(
        "fast", description="fast = microturn's folded encoder (same codes); stock = encodec's modules"
    )
    threads: int = Field(0, ge=0, description="torch threads (0 = leave as is)")

    @field_validator("bandwidth_kbps")
    @classmethod
    def _known_bandwidth(cls, v: float) -> float:
        if v not in (1.5, 3.0, 6.0, 12.0, 24.0):
            raise ValueError("must be one of 1.5, 3, 6, 12, 24")
        return v


class FrameCodecConfig(Section):
    image_size: int = Field(64, gt=0)
    downsample: int = Field(8, gt=0)
    levels: tuple[int, ...] = (8, 5, 5, 5)
    hidden: int = Field(64, gt=0)
    checkpoint: Optional[Path] = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Frames per forward pass; None: the tokenizer's choice for its device (tokenizers/frames.py).
    batch_frames: Optional[int] = Field(None, gt=0)

    @field_validator("levels")
    @classmethod
    def _fsq_levels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(level < 2 for level in v):
            raise ValueError("FSQ levels must be a non-empty list of integers >= 2")
        vocab = 1
        for level in v:
            vocab *= level
        if vocab > 32767:
            raise ValueError(f"prod(levels) = {vocab} does not fit int16 tokens (max 32767)")
        return v

    @field_validator("downsample")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("downsample must be a power of two")
        return v

    @model_validator(mode="after")
    def _size_divisible(self) -> "FrameCodecConfig":
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of downsample {self.downsample}")
        return self


class TextConfig(Section):
    kind: Literal["bytes", "hf"] = "bytes"
    tokenizer_json: Optional[Path] = None


class DMelConfig(Section):
    """dMel: log-mel energies per speaker stream, each channel cut into ``bins`` levels of a FIXED range
    of natural-log mel power (the range is part of the fingerprint: corpora built anywhere share one
    vocabulary). Defaults measured on real speech: see microturn/tokenizers/dmel.py."""

    hop_samples: int = Field(320, gt=0, description="frame step at 24 kHz; must tile a 200 ms chunk")
    window_samples: int = Field(1024, ge=2, description="STFT length (Hann), centred on each frame")
    mel_channels: int = Field(80, gt=0)
    bins: int = Field(16, ge=2, le=256, description="levels per channel (uint8 tokens)")
    f_min_hz: float = Field(0.0, ge=0)
    f_max_hz: float = Field(8000.0, gt=0, le=12000.0)
    log_min: float = Field(-12.0, description="ln mel power at the bottom of bin 1 (below: bin 0, silence)")
    log_max: float = Field(12.0, description="ln mel power at the top of the last bin (above: clipped)")
    block_s: float = Field(4.0, gt=0, description="audio is processed in blocks of this length (bounded memory)")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("hop_samples")
    @classmethod
    def _tiles_chunk(cls, v: int) -> int:
        try:
            GRID.steps_per_chunk(Fraction(GRID.sample_rate, v))
        except ValueError:
            raise ValueError(f"hop {v} samples does not tile a {GRID.chunk_samples}-sample (200 ms) chunk; "
                             f"use a divisor of {GRID.chunk_samples}") from None
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "DMelConfig":
        if self.f_min_hz >= self.f_max_hz:
            raise ValueError(f"f_min_hz {self.f_min_hz} must be below f_max_hz {self.f_max_hz}")
        if self.log_min >= self.log_max:
            raise ValueError(f"log_min {self.log_min} must be below log_max {self.log_max}")
        return self


class PixelsConfig(Section):
    """Pixel frames: the picked video frames themselves, stored as decoded (never rescaled), for models
    that cut them into ``patch`` x ``patch`` patches and embed those (no codec on the input side)."""

    size: int = Field(80, gt=0, description="frame side in pixels; decode.frame_width and frame_height must equal it")
    patch: int = Field(40, gt=0, description="side of the square patches a model cuts; size must be a multiple")

    @model_validator(mode="after")
    def _whole_patches(self) -> "PixelsConfig":
        if self.size % self.patch:
            raise ValueError(f"pixels.size {self.size} is not a multiple of pixels.patch {self.patch}: a frame must "
                             f"cut into whole patches")
        return self


class TokenizerConfig(Section):
    representations: tuple[str, ...] = Field(
        ("audio", "frames", "text"), description="what each session is tokenized into, by name "
        "(microturn/tokenizers REPRESENTATIONS); each writes its own tar members")
    audio: AudioCodecConfig = AudioCodecConfig()
    frames: FrameCodecConfig = FrameCodecConfig()
    text: TextConfig = TextConfig()
    dmel: DMelConfig = DMelConfig()
    pixels: PixelsConfig = PixelsConfig()
    cache_dir: Optional[Path] = Field(
        None, description="where seeded (untrained) codecs keep their calibrated state between worker starts "
        "(None = $XDG_CACHE_HOME/microturn/calibration, ~/.cache/...); never changes tokens, not in the config hash")

    @field_validator("representations")
    @classmethod
    def _known_representations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from microturn.tokenizers import REPRESENTATIONS  # light: builders import torch only when called

        unknown = [name for name in v if name not in REPRESENTATIONS]
        if unknown:
            raise ValueError(f"unknown representation(s) {unknown}; known: {sorted(REPRESENTATIONS)}")
        if len(set(v)) != len(v) or not v:
            raise ValueError("representations must be a non-empty list without repeats")
        return v


# ---------------------------------------------------------------- chunk / events / shard / job


class ChunkConfig(Section):
    window_chunks: int = Field(150, gt=0, description="chunks per sample (150 = 30 s)")
    hop_chunks: int = Field(150, gt=0, description="chunks between window starts")
    min_valid_chunks: int = Field(1, gt=0, description="a tail window shorter than this is merged, never dropped")


class EventsConfig(Section):
    backchannel_max_ms: int = Field(1000, gt=0, description="an utterance this short inside the other's turn")
    min_overlap_ms: int = Field(80, ge=0)
    interruption_min_overlap_ms: int = Field(250, ge=0, description="a floor transfer begun while the holder "
                                             "speaks is an interruption when they overlap this long; "
                                             "shorter, it is an overlapping turn transition")
    min_gap_ms: int = Field(40, ge=0)
    pause_max_ms: int = Field(1000, gt=0, description="longer same-speaker silences end the turn; a "
                              "backchannel must sit in a silence of the holder no longer than this")
    merge_silence_ms: int = Field(200, ge=0, description="silences shorter than this inside speech are ignored")


class ShardConfig(Section):
    target_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_samples: Optional[int] = Field(None, gt=0)
    prefix: str = "shard"

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("shard prefix may hold letters, digits, '-' and '_' only")
        return v


class JobConfig(Section):
    num_cpus: Optional[int] = Field(None, gt=0, description="embedded Ray size (None = all cores)")
    address: Optional[str] = None
    # A session's budget is base + per media minute x its probed duration (docs/cluster.md, section 4):
    # the timeout is there to catch hangs, not to reject long recordings.
    session_timeout_base_s: float = Field(600.0, gt=0, description="fixed part of every session's time budget")
    session_timeout_per_media_min_s: float = Field(
        60.0, ge=0, description="budget per minute of probed media (60 = 1x realtime on top of the base)"
    )
    tokenizer_timeout_s: Optional[float] = Field(
        None,
        gt=0,
        description="timeout of one call to a tokenizer actor, which is then restarted "
        "(None = half the session's budget)",
    )
    max_in_flight: Optional[int] = Field(
        None, gt=0, description="most session tasks in flight, never more than the cluster's CPUs left after the "
        "tokenizer pool's actors (None = that many)")
    max_retries: int = Field(2, ge=0, description="retries of a task whose worker process died")
    object_store_mb: Optional[int] = Field(None, gt=0)
    tokenizer_actors: int = Field(
        0, ge=0, description="tokenizer actors; 0 = one per GPU on a GPU cluster, else tokenize inside session tasks"
    )
    gpus_per_tokenizer: float = Field(0.0, ge=0, description="GPUs per tokenizer actor (0 = 1 when the cluster has GPUs)")
    tokenizer_batch_sessions: int = Field(
        4, gt=0, description="sessions a tokenizer actor gathers into one call of its models (their windows share "
        "EnCodec batches; the tokens do not depend on it)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "session_timeout_s" in data:
            raise ValueError(
                "job.session_timeout_s was replaced by job.session_timeout_base_s + "
                "job.session_timeout_per_media_min_s x media minutes (a session's budget scales with its length)"
            )
        return data


class RootConfig(Section):
    """A whole config file: sections of one component each."""

    def to_plain(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_plain(), sort_keys=True)

    def _hash_of(self, plain: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class BuildConfig(RootConfig):
    decode: DecodeConfig = DecodeConfig()
    align: AlignConfig = AlignConfig()
    tokenizers: TokenizerConfig = TokenizerConfig()
    chunk: ChunkConfig = ChunkConfig()
    events: EventsConfig = EventsConfig()
    shard: ShardConfig = ShardConfig()
    job: JobConfig = JobConfig()

    @model_validator(mode="after")
    def _pixels_as_decoded(self) -> "BuildConfig":
        size = self.tokenizers.pixels.size
        frame = (self.decode.frame_width, self.decode.frame_height)
        if "pixels" in self.tokenizers.representations and frame != (size, size):
            raise ValueError(f"tokenizers.pixels.size is {size} but decode.frame_width x frame_height is "
                             f"{frame[0]}x{frame[1]}: set them equal (pixel frames are stored as decoded, "
                             f"never rescaled)")
        return self

    def config_hash(self) -> str:
        """sha256 of the resolved config, key-sorted JSON (job settings and tokenizers.cache_dir excluded:
        they never change data)."""
        plain = self.to_plain()
        plain.pop("job", None)
        plain["tokenizers"].pop("cache_dir", None)  # where calibrations are cached, not what they are
        return self._hash_of(plain)


# ---------------------------------------------------------------- loading


def format_validation_error(err: ValidationError, origin: str, what: str = "config") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid {what} ({origin}):\n  " + "\n  ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


M = TypeVar("M", bound=RootConfig)


def load_model(
    model: type[M], path: Optional[Path | str] = None, overrides: Sequence[str] = (), *, what: str = "config"
) -> M:
    """Read a YAML file (or defaults) into ``model``, apply dotted overrides, validate.
    Every problem is a ``ConfigError`` naming the key."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"{what} file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, overrides)
    if overrides:
        origin += " + overrides"
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin, what)) from None


def load_config(path: Optional[Path | str] = None, overrides: Sequence[str] = ()) -> BuildConfig:
    """The build config: a YAML file (or defaults) plus dotted overrides, validated."""
    return load_model(BuildConfig, path, overrides)
