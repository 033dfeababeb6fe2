"""Who speaks when on one-speaker-per-microphone recordings: cross-talk attribution from both channels.

Each microphone hears its own talker and, through the room, the other talkers: delayed, coloured by
the room and a few to 20 dB quieter. A VAD run per channel marks that bleed as speech. Rule here:
model the bleed and keep, per frame, only what the bleed cannot explain.

1. Band powers ``P[c, band, frame]`` of every channel on the codec frame grid (12 bands, 100 Hz - 8
   kHz, 27 ms windows; ``vad.band_powers``).
2. A reverberant envelope ``E[c]``: a peak-hold of ``P[c]`` that decays at ``decay_db_per_s`` (a
   room keeps a voice audible at the other microphone for a while after it stops).
3. Bleed gains ``g[j -> i, band]``: how much of channel j's envelope reaches microphone i. Where only
   j's talker speaks, ``P[i] / P[j]`` per band is that gain (summed over those frames; the envelope
   only caps the total at ``max_gain_db``); elsewhere (i's own talker, both) the ratio is
   larger. The solo frames are the upper hump of the level difference j - i, less its frames more
   than ``solo_trim_db`` over the hump's median i/j ratio (i's talker speaking over j: a
   backchannel would inflate the gain and hide the next one; see ``bleed_gains``).
4. Predicted non-own power at microphone i: ``L[i] = sum_j g[j -> i] E[j] + noise floor of i``.
   The own-to-bleed ratio ``R[i] = sum_bands max(P[i] - L[i], 0) / sum_bands L[i]`` (dB) is about
   0 where i's talker is silent (bleed and noise are explained) and high where they speak, alone or
   over the other (real overlap: i's own voice is far above the bleed predicted from j).
5. Hysteresis on ``R`` (on above ``on_db``, off below ``off_db``), AND the per-channel VAD, then
   the usual minimum speech / silence lengths. Two amendments, both measured (docs/crosstalk.md):
   frames more than ``min_level_db`` under the microphone's loud level (95th percentile) are not its
   talker (a fading tail the VAD bridges into a pause); and where another microphone's talker is
   attributed speech, ``R`` above ``union_above_db`` counts as speech even without this channel's
   VAD (pyannote on a microphone carrying a louder bleed often misses a short reply under it).

Why not a level-difference rule: the level difference of two channels says which talker is louder,
not whether the quieter one speaks too, and it flips sign in the room's reverberant tail after a
talker stops. The numbers that chose this are in docs/crosstalk.md (benchmarks/crosstalk.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from microturn.align.vad import SPEECH_BANDS_HZ, band_powers, binarize, clean_runs, frame_energy_db, smooth
from microturn.clock import CODEC_RATE, HOP

SMOOTH_FRAMES = 15  # old rule: 200 ms; compare syllable-scale loudness, not single frames
_EPS = 1e-12


@dataclass(frozen=True)
class AttributionParams:
    """Knobs of ``attribute_activity`` (defaults chosen on benchmarks/crosstalk.py, see docs/crosstalk.md)."""

    on_db: float = 4.0  # own-to-bleed ratio that turns a channel's speaker on ...
    off_db: float = 2.0  # ... and off again (hysteresis: turns do not flicker)
    decay_db_per_s: float = 90.0  # reverberant tail of the bleed: 60 dB over ~0.67 s
    max_gain_db: float = -3.0  # a "bleed" this loud is no bleed: its source never talks alone
    smooth_frames: int = 1  # frames of smoothing of band powers and ratio (1: none; 3 lost overlaps)
    union_above_db: float = 6.0  # own ratio above this while another mic's talker speaks: speech, VAD or not
    min_level_db: float = -30.0  # own power this far under the channel's 95th percentile: not speech
    solo_trim_db: float = 6.0  # solo frames louder at i than the median i/j ratio + this: i's talker too


def _smooth_rows(x: np.ndarray, frames: int) -> np.ndarray:
    """Each row's centred moving average, in place (these rows are session-long: no second copy)."""
    if frames <= 1:
        return x
    kernel = np.ones(frames) / frames
    for r in range(x.shape[0]):
        x[r] = np.convolve(x[r], kernel, mode="same")
    return x


def reverb_envelope(power: np.ndarray, decay_db_per_s: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Peak hold along time (last axis) that decays by ``decay_db_per_s``: E[t] = max(P[t], a E[t-1])."""
    a = 10 ** (-decay_db_per_s * HOP / CODEC_RATE / 10)  # per frame (75 frames/s)
    out = np.empty_like(power) if out is None else out
    prev = np.zeros(power.shape[:-1])
    for t in range(power.shape[-1]):  # sequential by nature; 75 steps per second of audio
        prev = np.maximum(power[..., t], a * prev)
        out[..., t] = prev
    return out


def _noise_floor(power: np.ndarray) -> np.ndarray:
    """[bands, 1]: 10th percentile per band (the microphone's own noise and room tone)."""
    return np.percentile(power, 10, axis=1, keepdims=True) + _EPS


def otsu_split(x: np.ndarray, bins: int = 64) -> float:
    """The threshold that best splits ``x`` into two groups (Otsu: maximal between-group variance)."""
    hist, edges = np.histogram(x, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def bleed_gains(power: np.ndarray, env: np.ndarray, p: AttributionParams) -> np.ndarray:
    """[src, dst, bands]: power gain from channel ``src``'s envelope to microphone ``dst`` (0 on the diagonal).

    For each pair, the level difference ``D = level[j] - level[i]`` over frames where either is active
    is two-humped: j talking alone (j's talker far louder at j's microphone) and i talking alone. The
    upper hump (Otsu split) are j's solo frames, where all of i's power is bleed: the gain is the ratio
    of sums (a mean power transfer, reverberant tail included). When that ratio is not clearly below
    ``max_gain_db`` the upper hump is not j talking alone (j never speaks): no bleed from j."""
    chans, bands, frames = power.shape
    level = 10 * np.log10(power.sum(axis=1) + _EPS)  # [chans, frames]
    floor = np.percentile(level, 10, axis=1)
    active = (level > floor[:, None] + 10.0).any(axis=0)
    gains = np.zeros((chans, chans, bands))
    cap = 10 ** (p.max_gain_db / 10)
    for j in range(chans):
        for i in range(chans):
            if i == j:
                continue
            sel = active & (level[j] > floor[j] + 10.0)
            if sel.sum() < 20:
                continue
            diff = level[j][sel] - level[i][sel]
            upper = diff > otsu_split(diff)
            # The upper hump also holds frames where i's talker speaks over j (a backchannel): their
            # i/j ratio is higher and they would inflate the gain. Bleed alone has the hump's typical
            # ratio, so drop its upper tail (robust: the median moves little with a few such frames).
            lift = -diff[upper]
            if not upper.any():
                continue
            solo = np.flatnonzero(sel)[upper][lift <= np.median(lift) + p.solo_trim_db]
            if solo.size < 10:
                continue
            total = power[i][:, solo].sum() / (env[j][:, solo].sum() + _EPS)
            if total < cap:
                gains[j, i] = power[i][:, solo].sum(axis=1) / (power[j][:, solo].sum(axis=1) + _EPS)
    return gains


def own_to_bleed_db(waves_24k: list[np.ndarray], num_frames: int, p: AttributionParams) -> np.ndarray:
    """float [streams, frames]: dB of each microphone's power the bleed model cannot explain (see module doc)."""
    # filled stream by stream: [streams, bands, frames] float64 is 0.16 GB per stream-hour, so no stacked copies
    power = np.empty((len(waves_24k), len(SPEECH_BANDS_HZ) - 1, num_frames))
    env = np.empty_like(power)
    for k, w in enumerate(waves_24k):
        power[k] = _smooth_rows(band_powers(w, num_frames), p.smooth_frames)
        reverb_envelope(power[k], p.decay_db_per_s, out=env[k])
    gains = bleed_gains(power, env, p)
    out = np.zeros((len(waves_24k), num_frames))
    for i in range(len(waves_24k)):
        excess, predicted = _excess_and_predicted(power[i], env, gains[:, i, :])
        out[i] = 10 * np.log10(excess / predicted + _EPS)
        # far below this microphone's own loud speech is a fading tail or a breath, not its talker
        # talking (the VAD often bridges a pause of a second; the bleed model explains only bleed)
        level = smooth(10 * np.log10(power[i].sum(axis=0) + _EPS), 5)
        out[i][level < np.percentile(level, 95) + p.min_level_db] = -120.0
    return np.stack([smooth(r, p.smooth_frames) for r in out])


_BLOCK_FRAMES = 8192  # frames per block of the per-frame model below (its temporaries stay small)


def _excess_and_predicted(own: np.ndarray, env: np.ndarray, gains_to_own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, summed over bands: this microphone's power above what the bleed model and its noise floor
    predict, and that prediction. Block by block (each frame's sums are its own, so the values do not
    depend on the blocks): whole-session [bands, frames] temporaries were 0.08 GB per stream-hour each."""
    floor = _noise_floor(own)
    frames = own.shape[1]
    excess, predicted = np.empty(frames), np.empty(frames)
    for a in range(0, frames, _BLOCK_FRAMES):
        b = min(a + _BLOCK_FRAMES, frames)
        model = np.einsum("jb,jbt->bt", gains_to_own, env[:, :, a:b]) + floor
        excess[a:b] = np.maximum(own[:, a:b] - model, 0.0).sum(axis=0)
        predicted[a:b] = model.sum(axis=0)
    return excess, predicted


def attribute_activity(
    activity: np.ndarray,
    waves_24k: list[np.ndarray],
    min_speech_ms: int = 0,
    min_silence_ms: int = 0,
    params: AttributionParams = AttributionParams(),
) -> np.ndarray:
    """uint8 [streams, frames]: per-channel VAD ``activity`` kept only where that microphone's own
    talker is the source (own-to-bleed ratio with hysteresis; see module doc)."""
    streams, frames = activity.shape
    if streams < 2 or frames == 0:
        return activity.copy()
    ratio_db = own_to_bleed_db(waves_24k, frames, params)
    # binarize's hysteresis works on [0, 1] scores: map on_db/off_db onto its onset/offset
    span = max(params.on_db - params.off_db, 1e-6)
    vad = activity.astype(bool)
    own = np.zeros_like(vad)
    for i in range(streams):
        score = 0.25 + 0.5 * (ratio_db[i] - params.off_db) / span  # off_db -> 0.25, on_db -> 0.75
        own[i] = binarize(score.astype(np.float32), onset=0.75, offset=0.25).astype(bool)
    talking = vad & own  # each microphone's own talker, on its own VAD
    out = []
    for i in range(streams):
        # A short reply under another talker is often missed by this microphone's VAD (the model
        # hears one voice, the louder bleed); clearly own power while another talker is attributed
        # speech is taken as speech too. Not while nobody talks: breaths and bumps stay out.
        others = np.delete(talking, i, axis=0).any(axis=0)
        speech = vad[i] | (others & (smooth(ratio_db[i], 5) > params.union_above_db))
        out.append(clean_runs(speech & own[i], min_speech_ms, min_silence_ms))
    return np.stack(out).astype(np.uint8)


def suppress_crosstalk(
    activity: np.ndarray,
    waves_24k: list[np.ndarray],
    margin_db: float,
    min_speech_ms: int = 0,
    min_silence_ms: int = 0,
) -> np.ndarray:
    """The old dominance rule (kept as the benchmark's contrast): where several streams are detected
    at once, a stream keeps a frame only if its 200 ms level is within ``margin_db`` of the loudest."""
    streams, frames = activity.shape
    if streams < 2:
        return activity.copy()
    level = np.stack([smooth(frame_energy_db(w, frames), SMOOTH_FRAMES) for w in waves_24k])
    detected = activity.astype(bool)
    masked = np.where(detected, level, -np.inf)
    loudest = masked.max(axis=0)  # [frames]
    keep = detected & (level >= loudest[None, :] - margin_db)
    out = keep.astype(np.uint8)
    return np.stack([clean_runs(row, min_speech_ms, min_silence_ms) for row in out])
