"""Speech activity on the codec frame grid (75 frames/s).

Two detectors share one post-processing step (hysteresis + minimum speech / silence lengths):
- ``pyannote``: the segmentation model bundled in the whisperX wheel (pyannote's network, run by
  ``segmentation.py`` from its weights), on 16 kHz pieces of the session (speech probability = max over
  its speaker outputs, as pyannote's VAD pipeline).
- ``energy``: frame RMS against a per-stream adaptive threshold; the fallback when the model cannot
  load, and the signal the cross-talk rule compares.

With pyannote, ``speech_like_runs`` then drops the runs that are not speech-like (music and effects
the model half-believes: a low peak probability and a level that does not move with syllables).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microturn.clock import ASR_RATE, CODEC_RATE, GRID, HOP
from microturn.media import spill

log = logging.getLogger(__name__)

ONSET = 0.5  # whisperX's pyannote VAD defaults
OFFSET = 0.363
_EPS = 1e-10


class VadUnavailable(RuntimeError):
    """The pyannote model could not be loaded (missing wheel asset, incompatible versions)."""


_BLOCK_FRAMES = 2048  # frames per block of the per-frame measures below: an hour is 270k frames


def _span(wave: np.ndarray, start: int, stop: int, dtype: type = np.float32) -> np.ndarray:
    """``wave[start:stop]`` as ``dtype``, zeros where the range lies outside the wave (either end)."""
    out = np.zeros(stop - start, dtype=dtype)
    lo, hi = max(start, 0), min(stop, wave.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = wave[lo:hi]
        spill.release(wave[lo:hi])  # a spilled session's pages go back once copied
    return out


def frame_energy_db(wave_24k: np.ndarray, num_frames: int) -> np.ndarray:
    """float32 [num_frames]: RMS level in dBFS of each 320-sample codec frame (zero-padded).

    Block by block: no session-sized padded or float64 copy (each frame's mean is its own, so the
    values do not depend on the blocks)."""
    power = np.zeros(num_frames, dtype=np.float64)
    for start in range(0, num_frames, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, num_frames)
        frames = _span(wave_24k, start * HOP, stop * HOP).reshape(stop - start, HOP)
        power[start:stop] = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return (10.0 * np.log10(power + _EPS)).astype(np.float32)


def smooth(x: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over ``frames`` frames (same length)."""
    if frames <= 1 or x.size == 0:
        return x.astype(np.float32)
    kernel = np.ones(frames, dtype=np.float64) / frames
    return np.convolve(x.astype(np.float64), kernel, mode="same").astype(np.float32)


def energy_probability(wave_24k: np.ndarray, num_frames: int, threshold_db: float) -> np.ndarray:
    """A speech 'probability' in [0, 1] per frame from frame energy.

    The threshold adapts to the stream: halfway (in dB) between its noise floor (10th percentile) and
    its speech level (95th percentile), never below ``threshold_db`` under the speech level, and never
    below -70 dBFS (digital silence is not speech however quiet the stream).
    """
    db = smooth(frame_energy_db(wave_24k, num_frames), 5)  # ~67 ms: syllable gaps are not silence
    real = db[: GRID.valid_frames(wave_24k.shape[0])] if wave_24k.shape[0] else db
    if real.size == 0:
        return np.zeros(num_frames, dtype=np.float32)
    floor, loud = np.percentile(real, 10), np.percentile(real, 95)
    thr = max((floor + loud) / 2.0, loud + threshold_db, -70.0)
    if loud - floor < 6.0:  # no dynamics: all speech or all noise; decide by absolute level
        thr = max(thr, -45.0) if loud < -45.0 else floor - 1.0
    # logistic around the threshold, 3 dB wide: a soft score the same hysteresis can binarise
    return (1.0 / (1.0 + np.exp(-(db - thr) / 3.0))).astype(np.float32)


SPEECH_BANDS_HZ = np.geomspace(100.0, 8000.0, 13)  # 12 bands over the speech range (hum and rumble out)


def band_powers(wave_24k: np.ndarray, num_frames: int, block: int = _BLOCK_FRAMES) -> np.ndarray:
    """float64 [bands, num_frames]: power per ``SPEECH_BANDS_HZ`` band in a 640-sample Hann window
    centred on each codec frame (computed ``block`` frames at a time, each block's windows cut from
    the float32 wave: a session-sized float64 copy would be 0.7 GB per stream-hour)."""
    win = 2 * HOP
    wave = wave_24k[: num_frames * HOP]  # frame i's window: samples [i*HOP - HOP/2, i*HOP + 3HOP/2)
    freqs = np.fft.rfftfreq(win, 1.0 / CODEC_RATE)
    band = np.digitize(freqs, SPEECH_BANDS_HZ) - 1
    out = np.zeros((len(SPEECH_BANDS_HZ) - 1, num_frames), dtype=np.float64)
    taper = np.hanning(win)[None, :]
    for start in range(0, num_frames, block):
        stop = min(start + block, num_frames)
        seg = _span(wave, start * HOP - HOP // 2, stop * HOP + HOP // 2, np.float64)
        idx = np.arange(stop - start)[:, None] * HOP + np.arange(win)[None, :]
        spec = np.abs(np.fft.rfft(seg[idx] * taper, axis=1)) ** 2  # [frames, bins]
        for b in range(out.shape[0]):
            out[b, start:stop] = spec[:, band == b].sum(axis=1)
    return out


def speech_band_db(wave_24k: np.ndarray, num_frames: int) -> np.ndarray:
    """float32 [num_frames]: level (dB, relative) of each frame within 100 Hz - 8 kHz."""
    win = np.hanning(2 * HOP)
    # one-sided spectrum sum = N * sum((x w)^2) / 2 (Parseval): back to a mean square, dBFS
    mean_square = 2.0 * band_powers(wave_24k, num_frames).sum(axis=0) / (win.size * float(np.sum(win**2)))
    return (10.0 * np.log10(mean_square + _EPS)).astype(np.float32)


def energy_gate(wave_24k: np.ndarray, num_frames: int, above_floor_db: float = 8.0) -> np.ndarray:
    """bool [num_frames]: frames clearly above the stream's noise floor (10th percentile level).

    pyannote hears speech in faint cross-talk and room tone too; a model-detected frame that is
    no louder than the floor is not this stream's speaker. Measured within the speech band: a
    recording's hum or rumble would otherwise set the floor and hide a quiet voice."""
    db = smooth(speech_band_db(wave_24k, num_frames), 15)
    real = db[: GRID.valid_frames(wave_24k.shape[0])]
    if real.size == 0:
        return np.zeros(num_frames, dtype=bool)
    return db > max(float(np.percentile(real, 10)) + above_floor_db, -70.0)


def bundled_vad_path() -> Path:
    """The segmentation checkpoint bundled in the whisperX wheel (whisperX's own VAD reads it too)."""
    from microturn.align.segmentation import SegmentationUnavailable, bundled_checkpoint

    try:
        return bundled_checkpoint()
    except SegmentationUnavailable as exc:
        raise VadUnavailable(str(exc)) from exc


def load_pyannote(device: str = "cpu", model_path: Optional[Path] = None) -> Any:
    """The cached ``Segmenter`` of the bundled pyannote model; raises ``VadUnavailable`` with the reason."""
    from microturn.align.segmentation import SegmentationUnavailable, load_segmenter

    path = Path(model_path) if model_path else bundled_vad_path()
    try:
        return load_segmenter(str(path), device)
    except SegmentationUnavailable as exc:
        raise VadUnavailable(str(exc)) from exc


# The model runs on pieces of about this many seconds plus context either side, so a long session's 16 kHz
# wave is never copied whole. Pieces start on a grid that both its window step (1 s) and its output frame
# step (270 samples) tile (27 s): every window and frame sits where one pass over the session puts it, and a
# kept frame sums the same windows (the context covers a window's length; what saw a cut is dropped).
VAD_PIECE_S = 270


def pyannote_probability(segmenter: Any, wave_16k: np.ndarray, num_frames: int) -> np.ndarray:
    """Speech probability per codec frame from the pyannote model (interpolated at frame centres)."""
    if wave_16k.shape[0] < ASR_RATE // 10:
        return np.zeros(num_frames, dtype=np.float32)
    grid = math.lcm(segmenter.step_s * ASR_RATE, segmenter.frame_step_samples)
    piece = max(1, round(VAD_PIECE_S * ASR_RATE / grid)) * grid
    context = -(-segmenter.window_s * ASR_RATE // grid) * grid
    times, scores = [], []
    for start in range(0, wave_16k.shape[0], piece):
        lo, hi = max(0, start - context), min(wave_16k.shape[0], start + piece + context)
        out = segmenter(_span(wave_16k, lo, hi))
        t = out.times_s + lo / ASR_RATE
        last = start + piece >= wave_16k.shape[0]
        keep = (t >= start / ASR_RATE) & ((t < (start + piece) / ASR_RATE) | last)
        times.append(t[keep])
        scores.append(out.scores[keep])
    centres = (np.arange(num_frames) + 0.5) * (HOP / CODEC_RATE)
    return np.interp(centres, np.concatenate(times), np.concatenate(scores), left=0.0, right=0.0).astype(np.float32)


def binarize(
    prob: np.ndarray, onset: float = ONSET, offset: float = OFFSET, min_speech_ms: int = 0, min_silence_ms: int = 0
) -> np.ndarray:
    """uint8 activity from a probability: hysteresis, then fill short silences, drop short speech."""
    active = np.zeros(prob.shape[0], dtype=np.uint8)
    on = False
    for i, p in enumerate(prob):  # hysteresis is sequential; frames are few (75/s)
        on = p > offset if on else p > onset
        active[i] = on
    return clean_runs(active, min_speech_ms, min_silence_ms)


# Speech-likeness of a detected run (``speech_like_runs``), set on music, effects and speech
# recordings (docs/crosstalk.md, benchmarks/crosstalk.py --only nonspeech):
RUN_PEAK = 0.7  # pyannote's probability must reach this somewhere in the run ...
RUN_SURE = 0.9  # ... and this, unless the run's level moves at the syllable rate:
RUN_CONTEXT = 19  # frames (0.25 s) of context either side of a run for its modulation
RUN_MIN_MODULATION_DB = 2.5  # std of the level minus its 0.5 s mean, run +-0.25 s (see docs/crosstalk.md)


def syllable_modulation_db(wave_24k: np.ndarray, num_frames: int) -> np.ndarray:
    """float64 [num_frames]: speech-band level (dB) minus its 0.5 s moving average.

    Speech rises and falls with its syllables (4-5 per second) by 5-15 dB; sustained music and
    steady noise stay within a few dB of their local mean."""
    db = speech_band_db(wave_24k, num_frames).astype(np.float64)
    return db - smooth(db, 37).astype(np.float64)


def speech_like_runs(active: np.ndarray, prob: np.ndarray, wave_24k: np.ndarray) -> np.ndarray:
    """uint8: the runs of ``active`` (from ``prob``) that look like speech; the others dropped.

    Speech drives pyannote's probability to 0.9-1.0 in every utterance. Music, applause and effects
    that it half-believes hover around its onset (measured: peaks 0.53-0.83) for seconds. A run is
    kept when its peak reaches ``RUN_PEAK`` and either ``RUN_SURE`` or a syllable-rate modulation of
    ``RUN_MIN_MODULATION_DB`` (a voice the model is less sure of, e.g. over noise)."""
    out = active.astype(np.uint8).copy()
    spans = [(s, e) for value, s, e in runs(out) if value == 1]
    if not spans:
        return out
    modulation = syllable_modulation_db(wave_24k, out.shape[0])
    for s, e in spans:
        peak = float(np.max(prob[s:e]))
        # with 0.25 s either side: a word's rise from and fall into a pause is its modulation too
        around = modulation[max(s - RUN_CONTEXT, 0) : e + RUN_CONTEXT]
        if peak < RUN_PEAK or (peak < RUN_SURE and float(np.std(around)) < RUN_MIN_MODULATION_DB):
            out[s:e] = 0
    return out


def runs(active: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 array."""
    if active.size == 0:
        return []
    change = np.flatnonzero(np.diff(active.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [active.size]])
    return [(int(active[s]), int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]


def clean_runs(active: np.ndarray, min_speech_ms: int, min_silence_ms: int) -> np.ndarray:
    """Fill silences shorter than ``min_silence_ms`` inside speech, then drop speech shorter than
    ``min_speech_ms`` (the order keeps words split by a stop consonant together)."""
    out = active.astype(np.uint8).copy()
    min_sil = GRID.seconds_to_frames(f"{min_silence_ms}/1000", "ceil")
    min_sp = GRID.seconds_to_frames(f"{min_speech_ms}/1000", "ceil")
    for value, s, e in runs(out):
        if value == 0 and s > 0 and e < out.size and e - s < min_sil:
            out[s:e] = 1
    for value, s, e in runs(out):
        if value == 1 and e - s < min_sp:
            out[s:e] = 0
    return out
