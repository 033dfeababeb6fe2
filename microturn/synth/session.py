"""One synthetic session: plan the conversation, render the voices and the room, write the media, the
transcript and the truth (the files and clocks are described in ``microturn.synth``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from microturn.synth.containers import write_audio_file, write_json, write_mp4
from microturn.synth.plan import Syllable, plan_conversation, speaker_syllables
from microturn.synth.room import room_tracks
from microturn.synth.truth import (
    SPEAKERS,
    Layout,
    SessionTruth,
    TruthEvent,
    TruthSegment,
    TruthWord,
    Voice,
    seconds,
    truth_from_plan,
)
from microturn.synth.video import video_frames
from microturn.synth.voice import background, draw_voices, render_voice


@dataclass(frozen=True)
class _Options:
    """``synthesize_session``'s arguments (see there), checked on creation."""

    session_id: str
    seed: int
    index: int
    duration_s: float
    video: bool
    av_offset_ms: float
    layout: Layout
    sample_rate: int
    frame_size: tuple[int, int]  # (width, height)
    fps: int
    leakage_db: Optional[float]
    noise_db: float
    vary_starts: bool
    audio_format: str
    crosstalk: str
    room_irs: Optional[Sequence[np.ndarray]]

    def __post_init__(self) -> None:
        if not self.duration_s >= 2.0:
            raise ValueError(f"duration_s must be at least 2 s, got {self.duration_s!r}")
        if self.layout not in ("per_speaker", "stereo", "mixed"):
            raise ValueError(f"layout must be per_speaker, stereo or mixed, got {self.layout!r}")
        if self.sample_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ValueError(f"unsupported sample_rate {self.sample_rate!r}")
        w, h = self.frame_size
        if w < 16 or h < 16 or w % 2 or h % 2:
            raise ValueError(f"frame_size must be even and at least 16x16, got {self.frame_size!r}")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be in 1..60, got {self.fps!r}")
        if self.audio_format not in ("wav", "flac"):
            raise ValueError(f"audio_format must be wav or flac, got {self.audio_format!r}")
        if self.crosstalk not in ("room", "direct"):
            raise ValueError(f"crosstalk must be room or direct, got {self.crosstalk!r}")
        if self.leakage_db is not None and not self.leakage_db <= 0:
            raise ValueError(f"leakage_db must be <= 0 (the other voice is quieter), got {self.leakage_db!r}")

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_s * self.sample_rate))


@dataclass(frozen=True)
class _Streams:
    """Independent random streams per purpose: changing how noise is drawn never changes the conversation."""

    plan: np.random.Generator  # the voices, then the conversation
    voice: np.random.Generator
    noise: np.random.Generator  # the mix's room noise, then the video texture
    start: np.random.Generator  # late file starts, then the video stream's start
    room: np.random.Generator

    @classmethod
    def of(cls, seed: int, index: int) -> _Streams:
        # spawn(5)[:4] == spawn(4): the room stream was added without changing the others
        children = np.random.SeedSequence([seed, index]).spawn(5)
        return cls(*(np.random.default_rng(c) for c in children))


@dataclass(frozen=True)
class _Audio:
    clean: list[np.ndarray]  # float64 [n] per speaker: the voice alone
    tracks: list[np.ndarray]  # float64 [n] per speaker's microphone: own voice + cross-talk + noise floor
    mixed: np.ndarray  # float64 [n]: both voices + room noise (the mixed file and the MP4's audio)
    crosstalk: dict[str, Any]  # what the room drew (SessionTruth.crosstalk)


@dataclass(frozen=True)
class _Written:
    files: dict[str, str]  # role -> path relative to the session folder
    offsets_s: dict[str, float]  # audio source key -> manifest offset_s
    video_start_s: Optional[float]


def _render_audio(o: _Options, rng: _Streams, voices: Sequence[Voice], syls: list[list[Syllable]]) -> _Audio:
    """Each speaker's voice from their syllables, then what each microphone and the mix hear."""
    sr, n = o.sample_rate, o.num_samples
    clean = [render_voice(rng.voice, voices[i], syls[i], n, sr) for i in range(2)]
    leakage_db = -25.0 if o.leakage_db is None and o.crosstalk == "direct" else o.leakage_db
    tracks, room = room_tracks(rng.room, clean, sr, o.crosstalk, leakage_db, o.noise_db, o.room_irs)
    mixed = clean[0] + clean[1] + background(rng.noise, n, sr, o.noise_db)
    return _Audio(clean, tracks, mixed, room)


def _write_audio_files(
    out_dir: Path, o: _Options, rng: np.random.Generator, audio: _Audio
) -> tuple[dict[str, str], dict[str, float]]:
    """The audio files of ``o.layout``: (role -> file name, source key -> manifest offset_s).

    One speaker's file starts with the session, the other's 20-350 ms later (whole milliseconds),
    stated in the manifest; the lead-in silence (>= 0.4 s) means no speech is lost."""
    sr, ext = o.sample_rate, o.audio_format
    late = int(rng.integers(2)) if o.vary_starts and rng.random() < 0.6 else None
    late_by = int(round(int(rng.integers(20, 351)) * sr / 1000))  # drawn in every layout: later draws stay put
    files: dict[str, str] = {}
    offsets: dict[str, float] = {}
    if o.layout == "per_speaker":
        for i, spk in enumerate(SPEAKERS):
            off = late_by if i == late else 0
            write_audio_file(out_dir / f"{spk}.{ext}", audio.tracks[i][None, off:], sr)
            files[f"audio_{spk}"] = f"{spk}.{ext}"
            offsets[spk] = seconds(off, sr)
    elif o.layout == "stereo":
        write_audio_file(out_dir / f"stereo.{ext}", np.stack(audio.tracks), sr)
        files["audio_stereo"] = f"stereo.{ext}"
        offsets["stereo"] = 0.0
    else:
        write_audio_file(out_dir / f"mixed.{ext}", audio.mixed[None], sr)
        files["audio_mixed"] = f"mixed.{ext}"
        offsets["mixed"] = 0.0
    return files, offsets


def _write_video(out_dir: Path, o: _Options, rng: _Streams, audio: _Audio) -> float:
    """``video.mp4``, its video stream starting 0-3 frames late when ``vary_starts``; returns that start."""
    start_frame = int(rng.start.integers(0, 4)) if o.vary_starts else 0
    n_frames = int(np.floor(o.duration_s * o.fps)) - start_frame
    times = (start_frame + np.arange(n_frames)) / o.fps - o.av_offset_ms / 1000.0  # content times
    frames = video_frames(rng.noise, audio.clean, o.sample_rate, times, o.frame_size, o.fps)
    write_mp4(out_dir / "video.mp4", frames, o.fps, start_frame, audio.mixed, o.sample_rate)
    return start_frame / o.fps


def _write_transcript(out_dir: Path, words: list[TruthWord]) -> None:
    transcript = {
        "words": [{"speaker": w.speaker, "word": w.word, "start": w.start_s, "end": w.end_s} for w in words]
    }
    write_json(out_dir / "transcript.json", transcript)


def _write_files(out_dir: Path, o: _Options, rng: _Streams, audio: _Audio, words: list[TruthWord]) -> _Written:
    """Every file of the session but ``truth.json`` (which is named in ``files``)."""
    files, offsets = _write_audio_files(out_dir, o, rng.start, audio)
    video_start_s: Optional[float] = None
    if o.video:
        video_start_s = _write_video(out_dir, o, rng, audio)
        files["video"] = "video.mp4"
    _write_transcript(out_dir, words)
    files["transcript"] = "transcript.json"
    files["truth"] = "truth.json"
    return _Written(files, offsets, video_start_s)


def _session_truth(
    o: _Options,
    voices: tuple[Voice, ...],
    segments: list[TruthSegment],
    words: list[TruthWord],
    events: list[TruthEvent],
    audio: _Audio,
    written: _Written,
) -> SessionTruth:
    return SessionTruth(
        session_id=o.session_id,
        seed=o.seed,
        index=o.index,
        duration_s=seconds(o.num_samples, o.sample_rate),
        sample_rate=o.sample_rate,
        fps=o.fps,
        frame_size=(int(o.frame_size[0]), int(o.frame_size[1])),
        layout=o.layout,
        av_offset_ms=float(o.av_offset_ms),
        video_start_s=written.video_start_s,
        audio_offsets_s=written.offsets_s,
        # the mean of the two directions' levels (each one is in crosstalk["to_<mic>"])
        leakage_db=round(float(np.mean([audio.crosstalk[f"to_{m}"]["level_db"] for m in SPEAKERS])), 3),
        noise_db=float(o.noise_db),
        voices=voices,
        files=written.files,
        segments=tuple(segments),
        words=tuple(words),
        events=tuple(events),
        crosstalk=audio.crosstalk,
    )


def synthesize_session(
    out_dir: Path,
    session_id: str,
    *,
    seed: int = 0,
    index: int = 0,
    duration_s: float = 20.0,
    video: bool = True,
    av_offset_ms: float = 0.0,
    layout: Layout = "per_speaker",
    sample_rate: int = 16000,
    frame_size: tuple[int, int] = (160, 120),
    fps: int = 15,
    leakage_db: Optional[float] = None,
    noise_db: float = -45.0,
    vary_starts: bool = True,
    audio_format: Literal["wav", "flac"] = "wav",
    crosstalk: Literal["room", "direct"] = "room",
    room_irs: Optional[Sequence[np.ndarray]] = None,
) -> SessionTruth:
    """Write one session's media, transcript and truth into ``out_dir`` (created) and return the truth.

    The conversation depends only on (seed, index, duration_s, sample_rate), so session i of a corpus is
    the same whatever the number of sessions. ``vary_starts`` draws per-speaker file offsets (stated in
    the manifest) and a later video stream start inside the MP4; off, every source starts at 0.
    Cross-talk (``crosstalk``, ``leakage_db``, ``noise_db``, ``room_irs`` at ``sample_rate``): see
    ``microturn.synth.room``; ``leakage_db=None`` draws each direction in -20..-6 dB (``"direct"``: -25 dB).
    """
    o = _Options(
        session_id, seed, index, duration_s, video, av_offset_ms, layout, sample_rate, frame_size, fps,
        leakage_db, noise_db, vary_starts, audio_format, crosstalk, room_irs,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = _Streams.of(seed, index)
    voices = draw_voices(rng.plan)
    turns, backchannels = plan_conversation(rng.plan, sample_rate, o.num_samples)
    segments, words, events = truth_from_plan(turns, backchannels, sample_rate)
    audio = _render_audio(o, rng, voices, speaker_syllables(turns, backchannels))
    written = _write_files(out_dir, o, rng, audio, words)
    truth = _session_truth(o, voices, segments, words, events, audio, written)
    write_json(out_dir / "truth.json", truth.to_json())
    return truth
