"""Speech-like voices: each speaker's clean speech rendered from the planned syllables, and room noise.

The voices are speech-like rather than tones: voiced syllables built from a glottal-like harmonic
series shaped by moving formants, with pitch and loudness contours (declination, stress accents, drawn
by the plan), fricative noise onsets, word groups, phrases with pauses. Speaker A sits at ~110-130 Hz,
B at ~190-230 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from microturn.synth.phones import NOISE_ONSET_BANDS_HZ, VOICED_ONSET_FORMANTS_HZ, VOWEL_FORMANTS_HZ
from microturn.synth.plan import Syllable
from microturn.synth.truth import Voice

TARGET_RMS = 0.08  # speech RMS of each clean voice over its active samples (about -22 dBFS)


def draw_voices(rng: np.random.Generator) -> tuple[Voice, Voice]:
    """The two speakers' voices, rounded as drawn, so the truth holds the voices exactly as rendered."""

    def draw(lo: float, hi: float, digits: int) -> float:
        return round(float(rng.uniform(lo, hi)), digits)

    # A: lower pitch, longer vocal tract, brighter; B: higher pitch, shorter tract, softer.
    a = Voice("A", draw(110, 130, 2), draw(0.96, 1.04, 3), draw(0.95, 1.1, 3))
    b = Voice("B", draw(190, 230, 2), draw(1.13, 1.22, 3), draw(1.05, 1.25, 3))
    return a, b


def _ramp(length: int, attack: int, release: int) -> np.ndarray:
    """float64 [length]: raised-cosine attack and release around a flat top."""
    env = np.ones(length)
    a, r = min(attack, length // 3), min(release, length // 3)
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[length - r :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(r) + 1) / r)
    return env


def band_noise(rng: np.random.Generator, n: int, sr: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Unit-RMS noise limited to [lo_hz, hi_hz] (one FFT over the whole session)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo_hz) | (freqs > min(hi_hz, 0.47 * sr))] = 0.0
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


@dataclass(frozen=True)
class _Articulation:
    """One speaker's planned speech as loudness envelopes and pitch and formant targets."""

    voiced_env: np.ndarray  # float64 [n]: loudness of the voiced sound
    noise_envs: dict[str, np.ndarray]  # fricative -> float64 [n]: loudness of its noise
    knot_samples: list[float]  # where the targets below sit (3 per syllable)
    f0_knots_hz: list[float]
    formant_knots_hz: list[tuple[float, float, float]]


def _articulate(voice: Voice, syls: Sequence[Syllable], n: int, sr: int) -> _Articulation:
    env = np.zeros(n)
    t_knots: list[float] = []
    f0_knots: list[float] = []
    fmt_knots: list[tuple[float, float, float]] = []
    noise_env = {k: np.zeros(n) for k in NOISE_ONSET_BANDS_HZ}
    attack, release = int(0.012 * sr), int(0.03 * sr)
    for s in sorted(syls, key=lambda s: s.start):
        v_start = s.start + (s.onset_len if s.onset in NOISE_ONSET_BANDS_HZ else 0)
        shape = _ramp(s.end - v_start, attack, release) * s.gain
        if s.onset in VOICED_ONSET_FORMANTS_HZ:
            shape[: s.onset_len] *= np.linspace(0.35, 1.0, s.onset_len)  # a softer murmur before the vowel
        env[v_start : s.end] = np.maximum(env[v_start : s.end], shape)
        if s.onset in NOISE_ONSET_BANDS_HZ:
            span = min(s.onset_len + int(0.01 * sr), s.end - s.start)
            burst = _ramp(span, int(0.01 * sr), int(0.015 * sr)) * s.gain
            noise_env[s.onset][s.start : s.start + span] = burst
        vowel_f = VOWEL_FORMANTS_HZ[s.vowel]
        onset_f = VOICED_ONSET_FORMANTS_HZ.get(s.onset, vowel_f)
        nucleus = v_start + (s.onset_len if s.onset in VOICED_ONSET_FORMANTS_HZ else 0)
        f0 = voice.f0_hz * s.f0_factor
        for t, f, fm in ((v_start, f0 * 1.02, onset_f), (nucleus, f0, vowel_f), (s.end, f0 * 0.96, vowel_f)):
            t_knots.append(float(t))
            f0_knots.append(f)
            fmt_knots.append(fm)
    return _Articulation(env, noise_env, t_knots, f0_knots, fmt_knots)


def _voiced_source(
    rng: np.random.Generator, voice: Voice, art: _Articulation, idx: np.ndarray, n: int, sr: int
) -> np.ndarray:
    """float64 [idx.size]: the voiced sound at samples ``idx`` (unit RMS, then breath): a harmonic series
    with gliding pitch, shaped by moving formants."""
    tk = np.asarray(art.knot_samples)
    # Slow random pitch drift (+-1.5 %) so no two syllables are the same tone.
    drift_t = np.arange(0, n + sr // 20, sr // 20, dtype=float)
    drift = np.interp(idx, drift_t, 0.015 * rng.uniform(-1, 1, drift_t.size))
    f0 = np.interp(idx, tk, np.asarray(art.f0_knots_hz)) * (1.0 + drift)
    formants = np.asarray(art.formant_knots_hz) * voice.formant_scale
    fmt = [np.interp(idx, tk, formants[:, j]) for j in range(3)]
    bandwidths, formant_gains = (90.0, 110.0, 170.0), (1.0, 0.7, 0.35)
    phase = 2.0 * np.pi * np.cumsum(f0) / sr  # continuous within each voiced stretch
    top_hz = min(4500.0, 0.45 * sr)
    voiced = np.zeros(idx.size)
    rot = np.exp(1j * phase)  # e^{i k phase} by repeated multiplication: cheaper than sin per harmonic
    zk = np.ones(idx.size, dtype=np.complex128)
    for k in range(1, int(top_hz / f0.min()) + 1):
        zk *= rot
        fk = k * f0
        resonance = 0.04 + sum(
            w_j / (1.0 + ((fk - fmt[j]) * (1.0 / bandwidths[j])) ** 2) for j, w_j in enumerate(formant_gains)
        )
        voiced += ((k ** -voice.tilt) * resonance * (fk < top_hz)) * zk.imag
    voiced /= max(float(np.sqrt(np.mean(voiced**2))), 1e-12)
    voiced += 0.05 * rng.standard_normal(idx.size)  # breathiness
    return voiced


def render_voice(
    rng: np.random.Generator, voice: Voice, syls: Sequence[Syllable], n: int, sr: int
) -> np.ndarray:
    """float64 [n]: one speaker's clean speech, normalised to TARGET_RMS over its active samples."""
    art = _articulate(voice, syls, n, sr)
    idx = np.flatnonzero(art.voiced_env > 0)
    out = np.zeros(n)
    if idx.size == 0:
        return out
    out[idx] = _voiced_source(rng, voice, art, idx, n, sr) * art.voiced_env[idx]
    for onset, band in NOISE_ONSET_BANDS_HZ.items():
        if art.noise_envs[onset].any():
            out += 0.45 * band_noise(rng, n, sr, *band) * art.noise_envs[onset]
    active = (art.voiced_env > 0) | np.any([e > 0 for e in art.noise_envs.values()], axis=0)
    return out * (TARGET_RMS / max(float(np.sqrt(np.mean(out[active] ** 2))), 1e-12))


def background(rng: np.random.Generator, n: int, sr: int, level_db: float) -> np.ndarray:
    """Pinkish room noise at ``level_db`` relative to the speech level."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec /= np.sqrt(np.maximum(freqs, 50.0))
    x = np.fft.irfft(spec, n)
    return x * (TARGET_RMS * 10 ** (level_db / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12))

