"""Align: one timeline per session — speech activity per stream, words with times, quality, A/V sync.

Steps (each a small function below):
1. duplicate channels: two "speakers" that are one signal become one mixed stream (or quarantine);
2. activity: pyannote VAD (the model in the whisperX wheel) per stream on the codec frame grid, the
   energy detector when the model cannot load (flag ``vad:energy_fallback``);
3. mixed tracks: diarized from a local pyannote pipeline when configured (one stream per speaker,
   the mixture gated by that speaker's turns), else kept whole and flagged ``undiarized_mixed``;
4. cross-talk: for one-speaker-per-channel audio, each frame is attributed to the microphones whose
   own talker is the source (``align/crosstalk.py``: a two-channel bleed model; docs/crosstalk.md);
5. words: sidecar transcript (own times, or whisperX-aligned when an alignment model is set), or
   whisperX ASR when a Whisper model is set: per stream, only where its speaker is active, timed by
   whisperX alignment or by Whisper's word timestamps corrected by the activity;
6. quality measures and filters (``filtered:<rule>``);
7. optional residual A/V offset estimate (re-picks the video frames when confident).
"""

from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

from microturn.align import quality as q
from microturn.align.av_offset import estimate_av_offset
from microturn.align.crosstalk import attribute_activity, suppress_crosstalk
from microturn.align.transcripts import Segment, channel_base, read_transcript, speaker_to_stream, to_words
from microturn.align.vad import (
    ONSET,
    OFFSET,
    VadUnavailable,
    binarize,
    energy_gate,
    energy_probability,
    load_pyannote,
    pyannote_probability,
    runs,
    speech_like_runs,
)
from microturn.align.whisperx_words import align_segments, diarize, transcribe_regions
from microturn.clock import ASR_RATE, CODEC_RATE, GRID, to_fraction
from microturn.config import AlignConfig, QualityFilters
from microturn.devices import resolve_device
from microturn.manifest import SessionSpec
from microturn.media.video import repick_video
from microturn.records import AudioStream, DecodedMedia, StageError, Timeline, Word

log = logging.getLogger(__name__)

MIXED = "mixed"
_UTTERANCE_GAP_S = Fraction(1, 2)  # word-level transcripts are regrouped into utterances for alignment


def num_frames_of(decoded: DecodedMedia) -> int:
    """Activity length: whole chunks of codec frames."""
    return GRID.chunk_to_frame(GRID.num_chunks(decoded.num_samples))


# ---------------------------------------------------------------- 1. duplicate channels


def route_duplicate_channels(decoded: DecodedMedia, filters: QualityFilters) -> tuple[DecodedMedia, list[str]]:
    """Channels of one file that carry the same signal are one (mixed) voice, not two speakers."""
    streams = decoded.streams
    by_file: dict[str, list[int]] = {}
    for i, s in enumerate(streams):
        if s.speaker != MIXED:
            by_file.setdefault(s.source_uri, []).append(i)
    for uri, idx in by_file.items():
        if len(idx) < 2:
            continue
        dup, sim = all_duplicates([streams[i] for i in idx], filters.duplicate_channel_similarity)
        if not dup:
            continue
        if filters.duplicate_channels == "quarantine":
            raise StageError(
                "align",
                "filtered:duplicate_channels",
                f"channels {[streams[i].channel for i in idx]} carry the same signal (similarity {sim:.3f})",
                source=uri,
            )
        merged = AudioStream(
            speaker=MIXED,
            source_uri=uri,
            channel=-1,
            wave_24k=np.mean([streams[i].wave_24k for i in idx], axis=0).astype(np.float32),
            wave_16k=np.mean([streams[i].wave_16k for i in idx], axis=0).astype(np.float32),
            offset_sample=streams[idx[0]].offset_sample,
        )
        kept = [s for i, s in enumerate(streams) if i not in idx]
        if kept:  # a duplicate pair beside other speakers cannot become "the" mixed track
            merged = dataclasses.replace(merged, speaker=streams[idx[0]].speaker)
        new = tuple(kept[: idx[0]] + [merged] + kept[idx[0] :])
        log.warning("session %s: channels of %s are duplicates (%.3f): one stream", decoded.session_id, uri, sim)
        decoded = dataclasses.replace(decoded, streams=new, warnings=decoded.warnings + (f"duplicate_channels:{sim:.3f}",))
        return decoded, ["duplicate_channels:mixed"]
    return decoded, []


def all_duplicates(streams: Sequence[AudioStream], threshold: float) -> tuple[bool, float]:
    sims = []
    for j in range(1, len(streams)):
        dup, sim = q.are_duplicates(streams[0].wave_16k, streams[j].wave_16k, threshold)
        if not dup:
            return False, sim
        sims.append(sim)
    return True, min(sims)


# ---------------------------------------------------------------- 2. activity


def is_per_channel(decoded: DecodedMedia) -> bool:
    """Several streams, each one speaker's microphone (cross-talk attribution applies)."""
    return len(decoded.streams) >= 2 and all(s.speaker != MIXED for s in decoded.streams)


def detect_activity(decoded: DecodedMedia, cfg: AlignConfig, flags: list[str]) -> np.ndarray:
    """uint8 [streams, frames] raw VAD decisions (before cross-talk suppression)."""
    frames = num_frames_of(decoded)
    probs: list[np.ndarray] = []
    inference = None
    if cfg.vad == "pyannote":

        try:
            inference = load_pyannote(resolve_device(cfg.device, "align"))
        except VadUnavailable as exc:
            log.warning("pyannote VAD unavailable, using the energy detector: %s", exc)
            flags.append("vad:energy_fallback")
    else:
        flags.append("vad:energy")
    # per-microphone sessions: the bleed model (step 4) explains the other talkers and each
    # microphone's noise from both channels; a one-channel energy gate there cuts a quiet talker
    attributed = cfg.crosstalk == "attribute" and is_per_channel(decoded)
    for s in decoded.streams:
        if inference is not None:

            prob = pyannote_probability(inference, s.wave_16k, frames)
            probs.append(prob if attributed else prob * energy_gate(s.wave_24k, frames))
        else:
            probs.append(energy_probability(s.wave_24k, frames, cfg.energy_threshold_db))
    act = [binarize(p, ONSET, OFFSET, cfg.min_speech_ms, cfg.min_silence_ms) for p in probs]
    if inference is not None:
        flags.append("vad:pyannote")
        if cfg.speech_gate:  # music and effects the model half-believes stay non-speech
            act = [speech_like_runs(a, p, s.wave_24k) for a, p, s in zip(act, probs, decoded.streams)]
    return np.stack(act) if act else np.zeros((0, frames), dtype=np.uint8)


# ---------------------------------------------------------------- 3. diarization of a mixed track


def diarize_mixed(
    decoded: DecodedMedia, activity: np.ndarray, cfg: AlignConfig, flags: list[str]
) -> tuple[DecodedMedia, np.ndarray]:
    if len(decoded.streams) != 1 or decoded.streams[0].speaker != MIXED:
        return decoded, activity
    if cfg.diarization_dir is None:
        flags.append("undiarized_mixed")
        return decoded, activity

    mixed = decoded.streams[0]
    turns = diarize(mixed.wave_16k, cfg.diarization_dir, resolve_device(cfg.device, "align"))
    labels = sorted({t[0] for t in turns})
    if not labels:
        flags.append("undiarized_mixed")
        return decoded, activity
    frames = activity.shape[1]
    acts = np.zeros((len(labels), frames), dtype=np.uint8)
    for label, start, end in turns:
        a = GRID.seconds_to_frames(start, "floor")
        b = GRID.seconds_to_frames(end, "ceil")
        acts[labels.index(label), max(a, 0) : min(b, frames)] = 1
    acts &= activity[0][None, :]  # diarization turns inside detected speech only
    streams = []
    ramp = np.ones(GRID.hop, dtype=np.float32) / GRID.hop  # 13 ms fades at turn edges (no clicks)
    for k, label in enumerate(labels):
        mask24 = np.repeat(acts[k].astype(np.float32), GRID.hop)[: decoded.num_samples]
        mask24 = np.convolve(mask24, ramp, mode="same").astype(np.float32)
        mask16 = _mask_16k(mask24, mixed.wave_16k.shape[0])
        streams.append(
            dataclasses.replace(
                mixed, speaker=_safe_label(label), wave_24k=mixed.wave_24k * mask24, wave_16k=mixed.wave_16k * mask16
            )
        )
    flags.append("diarized_mixed")
    return dataclasses.replace(decoded, streams=tuple(streams)), acts


def _mask_16k(mask24: np.ndarray, n16: int) -> np.ndarray:
    idx = np.minimum((np.arange(n16) * CODEC_RATE) // ASR_RATE, mask24.shape[0] - 1)
    return mask24[idx]


def _safe_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "spk"


# ---------------------------------------------------------------- 5. words


def _segments_to_utterances(segs: Sequence[Segment]) -> list[tuple[str, Fraction, Fraction]]:
    """Consecutive word segments (one stream) joined into utterances split at pauses."""
    out: list[list] = []
    for s in segs:
        if out and s.level == "word" and out[-1][3] == "word" and s.start_s - out[-1][2] <= _UTTERANCE_GAP_S:
            out[-1][0] += " " + s.text
            out[-1][2] = max(out[-1][2], s.end_s)
        else:
            out.append([s.text, s.start_s, s.end_s, s.level])
    return [(t, a, b) for t, a, b, _ in out]


def _aligned_words(
    stream_index: int,
    wave_16k: np.ndarray,
    utterances: Sequence[tuple[str, Fraction, Fraction]],
    cfg: AlignConfig,
    language: str,
    origin: Fraction,
) -> list[Word]:
    """whisperX forced alignment of one stream's utterances (times relative to the session clock)."""

    if cfg.align_model_dir is None:
        raise StageError("align", "model_missing", "no alignment model directory configured")
    segs = [(t, float(a - origin), float(b - origin)) for t, a, b in utterances]
    aligned = align_segments(wave_16k, segs, cfg.align_model_dir, language, resolve_device(cfg.device, "align"), cfg.nltk_data_dir)
    words: list[Word] = []
    last_end = 0
    for text, start, end, score in aligned:
        if start is None or end is None:  # unalignable token (digits, symbols): place it after the last word
            s = e = last_end
            timing = "interpolated"
        else:
            # float(): whisperX returns numpy floats, whose repr is not a decimal literal
            s = max(GRID.seconds_to_samples(float(start)), last_end if words else 0)
            e = max(s, GRID.seconds_to_samples(float(end)))
            timing = "aligned"
        words.append(Word(text, s, e, stream_index, timing, None if score is None else float(score)))
        last_end = e
    return words


def _runs(row: np.ndarray) -> list[tuple[int, int]]:

    return [(a, b) for on, a, b in runs(row) if on]


def asr_mask(activity: np.ndarray, k: int, pad_frames: int, fill_frames: int) -> np.ndarray:
    """bool [frames]: where stream ``k`` is sent to ASR. Its own activity, with pauses no longer than
    ``fill_frames`` filled when no other stream speaks in them (a missed quiet word costs more than a
    silence Whisper skips), widened by ``pad_frames`` each side (Whisper needs the onset). A pause in
    which another stream's speaker talks is never filled: that speech reaches this microphone only as
    bleed (``asr_words`` also drops any word heard only where another stream speaks)."""
    own = activity[k].astype(bool)
    others = _others_active(activity, k)
    mask = own.copy()
    runs = _runs(own)
    for (_, b), (a, _) in zip(runs, runs[1:]):
        if a - b <= fill_frames and not others[b:a].any():
            mask[b:a] = True
    if pad_frames:
        grown = np.convolve(mask.astype(np.int32), np.ones(2 * pad_frames + 1, dtype=np.int32), mode="same") > 0
        mask |= grown
    return mask


def _others_active(activity: np.ndarray, k: int) -> np.ndarray:
    """bool [frames]: any stream other than ``k`` active."""
    if activity.shape[0] <= 1:
        return np.zeros(activity.shape[1], dtype=bool)
    return np.delete(activity, k, axis=0).astype(bool).any(axis=0)


def heard_only_as_bleed(start: int, end: int, own: np.ndarray, others: np.ndarray) -> bool:
    """Whether a word (24 kHz samples) lies where this stream's speaker is silent and another stream's
    speaks: the other speaker's word reaching this microphone, not this speaker's."""
    hop = GRID.hop
    fs, fe = max(start // hop, 0), min(max(end - 1, start) // hop + 1, own.shape[0])
    if fe <= fs:
        return False
    return not own[fs:fe].any() and bool(others[fs:fe].any())


def speech_regions(mask: np.ndarray, duration_s: float) -> list[tuple[float, float]]:
    """The runs of a frame mask in seconds, clipped to the stream."""
    out = []
    for a, b in _runs(mask):
        start, end = GRID.frame_to_sample(a) / CODEC_RATE, min(GRID.frame_to_sample(b) / CODEC_RATE, duration_s)
        if end > start:
            out.append((float(start), float(end)))
    return out


def snap_to_activity(start: int, end: int, active: np.ndarray) -> tuple[int, int]:
    """A word's samples moved inside its speech: a start in a pause moves to the next onset and an end
    in a pause to the last offset, when that onset/offset lies inside the word. Whisper's timestamps
    often begin a segment's first word hundreds of ms before the voice does."""
    hop = GRID.hop
    n = active.shape[0]
    fs, fe = start // hop, max(end - 1, start) // hop
    if 0 <= fs < n and not active[fs]:
        on = np.flatnonzero(active[fs:min(fe + 1, n)])
        if on.size:
            start = (fs + int(on[0])) * hop
    if 0 <= fe < n and not active[fe] and fe >= fs:
        on = np.flatnonzero(active[max(fs, 0):fe + 1])
        if on.size:
            end = max(start, (max(fs, 0) + int(on[-1]) + 1) * hop)
    return start, end


def _asr_words(
    k: int,
    wave_16k: np.ndarray,
    activity: np.ndarray,
    language: Optional[str],
    cfg: AlignConfig,
    origin: Fraction,
    flags: list[str],
) -> list[Word]:
    """ASR of one stream where its speaker is active (never the other speakers' bleed), timed by
    whisperX alignment when an alignment model is set, else by Whisper's own word timestamps
    corrected by the stream's activity (``timing="whisper"``)."""

    per_frame = 1000 / float(GRID.frame_rate)
    mask = asr_mask(activity, k, round(cfg.asr_pad_ms / per_frame), round(cfg.asr_fill_gap_ms / per_frame))
    regions = speech_regions(mask, wave_16k.shape[0] / ASR_RATE)
    asr, lang = transcribe_regions(
        wave_16k, regions, cfg.asr_model_dir, resolve_device(cfg.device, "align"), language,
        cfg.asr_batch_size, cfg.asr_beam_size, cfg.asr_threads,
    )
    if language is None and lang and f"asr_language:{lang}" not in flags:
        flags.append(f"asr_language:{lang}")  # detected, not given by the manifest
    if cfg.align_model_dir is not None:
        utts = []
        for r, (a, b) in enumerate(regions):
            text = " ".join(w.text for w in asr if w.region == r)
            if text:
                utts.append((text, to_fraction(a) + origin, to_fraction(b) + origin))
        return _aligned_words(k, wave_16k, utts, cfg, lang or "en", origin)
    own, others = activity[k].astype(bool), _others_active(activity, k)
    words = []
    for w in asr:
        s, e = snap_to_activity(GRID.seconds_to_samples(w.start_s), GRID.seconds_to_samples(w.end_s), activity[k])
        if heard_only_as_bleed(s, e, own, others):
            continue
        words.append(Word(w.text, s, e, k, "whisper", round(w.probability, 4)))
    return words


def find_words(
    decoded: DecodedMedia,
    spec: SessionSpec,
    cfg: AlignConfig,
    flags: list[str],
    activity: Optional[np.ndarray] = None,
) -> list[Word]:
    """Words of every stream. ``activity`` (uint8 [streams, frames], after cross-talk suppression)
    limits ASR to where each stream's speaker is active."""
    origin = decoded.provenance.origin if decoded.provenance is not None else Fraction(0)
    speakers = [s.speaker for s in decoded.streams]
    channels = [s.channel for s in decoded.streams]
    language = decoded.language or spec.language or "en"
    words: list[Word] = []
    if spec.transcript is not None:
        segs = read_transcript(spec.transcript.uri, spec.transcript.format)
        base = channel_base(segs)
        streams_of = [speaker_to_stream(s.speaker, speakers, channels, base) for s in segs]
        unknown = sorted({str(s.speaker) for s, k in zip(segs, streams_of) if k is None})
        if unknown:
            flags.append("words:unmatched_speakers")
            log.warning("session %s: transcript speakers %s match no stream", decoded.session_id, unknown)
        if cfg.align_model_dir is not None:
            for k, stream in enumerate(decoded.streams):
                mine = [s for s, j in zip(segs, streams_of) if j == k]
                if mine:
                    words += _aligned_words(k, stream.wave_16k, _segments_to_utterances(mine), cfg, language, origin)
            flags.append("words:aligned")
        else:
            words = to_words(segs, streams_of, -origin)
            flags.append("words:interpolated" if any(w.timing == "interpolated" for w in words) else "words:source")
    elif cfg.asr_model_dir is not None:
        if activity is None:  # no activity known: every stream is speech from end to end
            activity = np.ones((len(decoded.streams), num_frames_of(decoded)), dtype=np.uint8)
        for k, stream in enumerate(decoded.streams):
            words += _asr_words(k, stream.wave_16k, activity, spec.language, cfg, origin, flags)
        flags.append("words:asr_aligned" if cfg.align_model_dir is not None else "words:asr_whisper")
    else:
        flags.append("words:none")
    limit = decoded.num_samples
    clipped = [
        dataclasses.replace(w, start_sample=min(max(w.start_sample, 0), limit), end_sample=min(max(w.end_sample, 0), limit))
        for w in words
    ]
    return sorted(clipped, key=lambda w: (w.start_sample, w.stream))


# ---------------------------------------------------------------- 7. A/V offset


def estimate_and_apply_av_offset(
    decoded: DecodedMedia, cfg: AlignConfig, flags: list[str]
) -> tuple[DecodedMedia, int, Optional[float]]:
    """From the luma trace decode kept (``decode_session(trace=True)``); the frames are picked again
    from its frame candidates (``candidates=True``): no file is opened here."""
    if decoded.video is None:
        return decoded, 0, None
    est = None
    if decoded.trace is not None:
        est = estimate_av_offset([s.wave_24k for s in decoded.streams], decoded.trace, cfg.av_offset_max_ms)
    if est is None:
        flags.append("av_offset:unknown")
        return decoded, 0, None
    flags.append("av_offset:estimated")
    if cfg.apply_av_offset and est.confidence >= cfg.av_offset_min_confidence and abs(est.offset_sample) >= GRID.hop:
        if decoded.candidates is None:  # over decode's limit (see its warnings), or not asked for
            flags.append("av_offset:not_applied")
        else:
            decoded = dataclasses.replace(decoded, video=repick_video(decoded, est.offset_sample))
            flags.append("av_offset:applied")
    return dataclasses.replace(decoded, trace=None, candidates=None), est.offset_sample, est.confidence


# ---------------------------------------------------------------- the stage


def align_session(
    decoded: DecodedMedia, spec: SessionSpec, cfg: AlignConfig, release_16k: bool = False
) -> tuple[DecodedMedia, Timeline]:
    """Put activity, words and quality of a decoded session on its clock. Raises ``StageError``.

    Returns the media as align leaves it (duplicate channels merged, a mixed track split by speaker,
    video frames re-picked for a confident A/V offset) and the timeline found on it. ``release_16k``:
    the streams come back without their 16 kHz waves (``wave_16k=None``), dropped as soon as the
    words are found (nothing after reads them; 0.46 GB per hour of stereo) — for a caller that hands
    ``decoded`` over without keeping a reference."""
    flags: list[str] = []
    decoded, dup_flags = route_duplicate_channels(decoded, cfg.filters)
    flags += dup_flags
    activity = detect_activity(decoded, cfg, flags)
    decoded, activity = diarize_mixed(decoded, activity, cfg, flags)
    activity = _attribute_crosstalk(decoded, activity, cfg, flags)
    words = find_words(decoded, spec, cfg, flags, activity)
    if release_16k:
        streams = tuple(dataclasses.replace(s, wave_16k=None) for s in decoded.streams)
        decoded = dataclasses.replace(decoded, streams=streams)
    quality = q.session_quality([s.wave_24k for s in decoded.streams], activity, decoded.num_samples, [s.speaker for s in decoded.streams])
    q.apply_filters(quality, cfg.filters, decoded.session_id)
    av_offset, av_conf = 0, None
    if cfg.estimate_av_offset:
        decoded, av_offset, av_conf = estimate_and_apply_av_offset(decoded, cfg, flags)
        quality["av_offset_ms"] = round(av_offset * 1000 / CODEC_RATE, 2)
        quality["av_offset_confidence"] = av_conf
    timeline = Timeline(
        activity=activity.astype(np.uint8),
        words=tuple(words),
        av_offset_sample=av_offset,
        av_offset_confidence=av_conf,
        quality=quality,
        flags=tuple(flags),
    )
    return decoded, timeline


def _attribute_crosstalk(decoded: DecodedMedia, activity: np.ndarray, cfg: AlignConfig, flags: list[str]) -> np.ndarray:
    """One speaker per microphone: each frame goes to the microphones whose own talker is the source."""
    if not is_per_channel(decoded) or "diarized_mixed" in flags:
        return activity
    waves = [s.wave_24k for s in decoded.streams]
    if cfg.crosstalk == "attribute":
        activity = attribute_activity(activity, waves, cfg.min_speech_ms, cfg.min_silence_ms)
    else:
        activity = suppress_crosstalk(activity, waves, cfg.crosstalk_margin_db, cfg.min_speech_ms, cfg.min_silence_ms)
    flags += ["crosstalk_suppressed", f"crosstalk:{cfg.crosstalk}"]
    return activity


__all__ = ["align_session", "num_frames_of", "route_duplicate_channels"]
