"""A seeded, speech-like calibration signal (numpy only).

The untrained audio codec initialises its codebooks by k-means on the encoder's output for this
signal, so the signal must be the same in every process: it is built from float64 numpy with a
seeded ``Generator`` (identical in every process of a machine; numpy's vectorised ``sin`` may differ
in the last bit between CPU families, which is why shards record the codec fingerprint and real
deployments load trained weights). It looks like speech to a codec:
voiced syllables (a harmonic series under a vowel-like formant envelope, with a pitch and a loudness
contour), unvoiced bursts (shaped noise), and pauses.
"""

from __future__ import annotations

import numpy as np

from microturn.clock import CODEC_RATE

# Rough formant centres (Hz) of a few vowels: enough variety for the codebooks to spread out.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def _formant_gain(freqs_hz: np.ndarray, formants: tuple[int, ...]) -> np.ndarray:
    gain = np.zeros_like(freqs_hz)
    for k, centre in enumerate(formants):
        width = 80.0 + 40.0 * k
        gain += (0.6**k) / (1.0 + ((freqs_hz - centre) / width) ** 2)
    return gain


def _voiced(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    f0_start, f0_end = rng.uniform(90, 260), rng.uniform(80, 240)
    f0 = np.linspace(f0_start, f0_end, n) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
    wave = np.zeros(n)
    mean_f0 = float(f0.mean())
    for h in range(1, int(min(40, (rate / 2 - 200) / mean_f0))):
        wave += _formant_gain(np.array([h * mean_f0]), formants)[0] * np.sin(h * phase) / h**0.5
    envelope = np.sin(np.pi * np.linspace(0, 1, n)) ** rng.uniform(0.5, 1.5)
    return wave * envelope


def _unvoiced(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    centre = rng.uniform(2500, 7000)
    spectrum *= 1.0 / (1.0 + ((freqs - centre) / 1500.0) ** 2)
    shaped = np.fft.irfft(spectrum, n)
    return shaped / (np.abs(shaped).max() + 1e-9) * np.hanning(n)


def speech_like(seconds: float, seed: int, rate: int = CODEC_RATE) -> np.ndarray:
    """float32 [round(seconds * rate)]: syllables, bursts and pauses, peak about 0.5."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * rate))
    out = np.zeros(total)
    pos = 0
    while pos < total:
        kind = rng.choice(3, p=(0.6, 0.25, 0.15))
        n = int(rate * (rng.uniform(0.08, 0.3) if kind else rng.uniform(0.12, 0.4)))
        n = min(n, total - pos)
        if n <= 8:
            break
        if kind == 0:
            seg = _voiced(rng, n, rate) * rng.uniform(0.2, 1.0)
        elif kind == 1:
            seg = _unvoiced(rng, n, rate) * rng.uniform(0.05, 0.3)
        else:
            seg = np.zeros(n)
        out[pos : pos + n] = seg
        pos += n
    out += 0.003 * rng.standard_normal(total)  # room noise
    peak = np.abs(out).max()
    if peak > 0:
        out *= 0.5 / peak
    return out.astype(np.float32)
