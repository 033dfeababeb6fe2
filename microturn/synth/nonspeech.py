"""Audio with no speech in it (music and effects), for checking that the VAD stays quiet."""

from __future__ import annotations

import numpy as np

from microturn.synth.voice import band_noise


def _tone(t: np.ndarray, f0: float, partials: int, vibrato_hz: float = 0.0, depth: float = 0.0) -> np.ndarray:
    """Harmonic tone (1/k partials) with a sinusoidal vibrato of ``depth`` (relative pitch)."""
    phase = 2 * np.pi * f0 * (t - depth * np.cos(2 * np.pi * vibrato_hz * t) / (2 * np.pi * max(vibrato_hz, 1e-9)))
    return sum(np.sin(k * phase) / k for k in range(1, partials + 1))


def music_and_effects(seed: int = 0, sample_rate: int = 16000, seconds: float = 20.0) -> np.ndarray:
    """float64 [samples]: audio with no speech in it, for checking that the VAD stays quiet.

    In turn: a band (chords with vibrato, bass, kick and snare on a 2 Hz beat, hi-hat at 4 Hz, a
    lead melody with vibrato: pitched notes at the syllable rate, the hard case), applause (dense
    noise clicks), a bell and a whoosh (swept noise), then the band again. Deterministic per seed."""
    rng = np.random.default_rng([seed, 18])
    sr, n = sample_rate, int(round(seconds * sample_rate))
    t = np.arange(n) / sr
    x = np.zeros(n)
    band = (t < 0.45 * seconds) | (t >= 0.75 * seconds)
    chords = ([220.0, 277.2, 329.6], [196.0, 246.9, 293.7], [174.6, 220.0, 261.6], [164.8, 207.7, 246.9])
    for k in range(int(np.ceil(seconds / 2))):  # a chord every 2 s
        seg = (t >= 2 * k) & (t < 2 * k + 2) & band
        tt = t[seg] - 2 * k
        env = np.minimum(tt / 0.05, 1.0) * np.exp(-0.4 * tt)
        notes = chords[k % len(chords)]
        x[seg] += 0.05 * env * sum(_tone(tt, f, 8, 5.5, 0.012) for f in notes)
        x[seg] += 0.08 * env * _tone(tt, notes[0] / 4, 4)  # bass
    beat = 0.5
    for b in np.arange(0, seconds, beat / 2):
        s = int(b * sr)
        if not band[min(s, n - 1)]:
            continue
        m = min(n - s, int(0.25 * sr))
        tt = np.arange(m) / sr
        if int(round(b / (beat / 2))) % 2 == 0:  # kick on the beat, snare between
            x[s : s + m] += 0.3 * np.sin(2 * np.pi * (50 + 80 * np.exp(-tt / 0.03)) * tt) * np.exp(-tt / 0.08)
        else:
            x[s : s + m] += 0.1 * rng.standard_normal(m) * np.exp(-tt / 0.05)
        h = min(n - s, int(0.04 * sr))  # hi-hat: a short bright tick every half beat
        x[s : s + h] += 0.03 * np.diff(rng.standard_normal(h + 1)) * np.exp(-np.arange(h) / (0.01 * sr))
    melody = [440.0, 493.9, 523.3, 587.3, 523.3, 493.9, 440.0, 392.0]
    for k, start in enumerate(np.arange(0, seconds, 0.25)):  # a note every 250 ms (4 Hz)
        seg = (t >= start) & (t < start + 0.24) & band
        tt = t[seg] - start
        x[seg] += 0.04 * np.minimum(tt / 0.02, 1.0) * np.exp(-3 * tt) * _tone(tt, melody[k % len(melody)], 6, 6.0, 0.02)
    clap = (t >= 0.45 * seconds) & (t < 0.6 * seconds)  # applause: ~300 claps/s, each a 4 ms noise burst
    for s in np.sort(rng.integers(int(0.45 * seconds * sr), int(0.6 * seconds * sr), int(300 * 0.15 * seconds))):
        m = min(n - s, int(0.004 * sr))
        x[s : s + m] += 0.2 * rng.uniform(0.3, 1.0) * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.001 * sr))
    x[clap] = np.convolve(x[clap], np.ones(3) / 3, mode="same")
    bell = (t >= 0.6 * seconds) & (t < 0.675 * seconds)
    tb = t[bell] - 0.6 * seconds
    partials = (523.0, 1410.0, 2627.0, 3950.0)  # inharmonic, as a struck bell's
    x[bell] += 0.2 * np.exp(-tb / 0.4) * sum(np.sin(2 * np.pi * f * tb) / (i + 1) for i, f in enumerate(partials))
    whoosh = (t >= 0.675 * seconds) & (t < 0.75 * seconds)
    tw = (t[whoosh] - 0.675 * seconds) / (0.075 * seconds)
    noise = band_noise(rng, int(whoosh.sum()), sr, 300.0, min(6000.0, 0.45 * sr))
    x[whoosh] += 0.15 * np.sin(np.pi * tw) * noise / max(float(np.std(noise)), 1e-12)
    return x / max(float(np.max(np.abs(x))), 1e-12) * 0.5
