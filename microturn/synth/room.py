"""Cross-talk: how each voice reaches the other speaker's microphone.

With ``crosstalk="room"`` (the default) each voice reaches the other microphone through a room:
convolved with a room impulse response (a synthetic one, exponentially decaying noise with early
reflections and an RT60 of 0.2-0.7 s, or one of ``room_irs``, e.g. measured ones), delayed by the travel
time (2-8 ms), at a level 6-20 dB below the talker's own microphone (``leakage_db``: one value, or
``None`` to draw each direction), and each microphone has its own gain (+-3 dB) and noise floor
(``noise_db`` +-4 dB). ``crosstalk="direct"`` is the old, easy bleed: a delayed copy at ``leakage_db``.
Everything drawn is recorded in ``SessionTruth.crosstalk``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from microturn.synth.truth import SPEAKERS
from microturn.synth.voice import background


def synthetic_rir(rng: np.random.Generator, sr: int, rt60_s: float) -> np.ndarray:
    """A room impulse response: direct path, a few early reflections (2-25 ms later), then
    exponentially decaying noise reaching -60 dB at ``rt60_s`` (a diffuse late tail)."""
    n = int(round(rt60_s * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * 10 ** (-3.0 * t / rt60_s) * 0.3  # -60 dB at rt60
    h[0] = 1.0
    for _ in range(5):
        k = int(rng.integers(int(0.002 * sr), int(0.025 * sr)))
        h[k] += float(rng.uniform(-0.6, 0.6))
    return h


def trim_rir(h: np.ndarray) -> np.ndarray:
    """A measured response from its direct path on (the propagation delay is set separately)."""
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    start = int(np.argmax(np.abs(h) >= 0.1 * float(np.max(np.abs(h)))))
    return h[start:]


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` filtered by ``h``, same length as ``x`` (FFT convolution)."""
    size = 1 << int(np.ceil(np.log2(x.size + h.size - 1)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]


def room_bleed(source: np.ndarray, rir: Optional[np.ndarray], level_db: float, delay: int) -> np.ndarray:
    """``source`` as another microphone hears it: through ``rir`` (None: unfiltered) scaled to unit
    energy, ``delay`` samples later, ``level_db`` down (for a white source: its RMS relative to the
    source's; a unit-energy response neither adds nor removes power on average, whatever the
    source's spectrum, so a recording's rumble does not set the level of its speech)."""
    heard = np.asarray(source, dtype=np.float64)
    if rir is not None:
        h = np.asarray(rir, dtype=np.float64)
        heard = _convolve(heard, h / max(float(np.sqrt(np.sum(h**2))), 1e-12))
    return 10 ** (level_db / 20) * _delayed(heard, delay)


def room_tracks(
    rng: np.random.Generator,
    clean: list[np.ndarray],
    sr: int,
    crosstalk: str,
    leakage_db: Optional[float],
    noise_db: float,
    room_irs: Optional[Sequence[np.ndarray]],
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Each microphone: its speaker + the other speaker through the room + its own noise floor.

    Levels are set on the clean voices (each at TARGET_RMS over its speech), so ``level_db`` is the
    other voice's level at this microphone relative to this microphone's own talker."""
    info: dict[str, Any] = {"mode": crosstalk, "gain_db": {}, "noise_db": {}}
    tracks = []
    for i, mic in enumerate(SPEAKERS):
        other = clean[1 - i]
        level = float(leakage_db) if leakage_db is not None else round(float(rng.uniform(-20.0, -6.0)), 2)
        delay = int(round(float(rng.uniform(0.002, 0.008)) * sr))
        gain = round(float(rng.uniform(-3.0, 3.0)), 2) if crosstalk == "room" else 0.0
        floor = round(noise_db + float(rng.uniform(-4.0, 4.0)), 2) if crosstalk == "room" else noise_db
        leak_info: dict[str, Any] = {"from": SPEAKERS[1 - i], "level_db": level, "delay_ms": round(1000 * delay / sr, 3)}
        h: Optional[np.ndarray] = None
        if crosstalk == "room":
            if room_irs:
                k = int(rng.integers(len(room_irs)))
                h, leak_info["rir"] = trim_rir(room_irs[k]), f"room_irs[{k}]"
            else:
                rt60 = round(float(rng.uniform(0.2, 0.7)), 3)
                h, leak_info["rir"], leak_info["rt60_s"] = synthetic_rir(rng, sr, rt60), "synthetic", rt60
        leak = room_bleed(other, h, level, delay)
        g = 10 ** (gain / 20)
        tracks.append(g * (clean[i] + leak + background(rng, clean[i].size, sr, floor)))
        info[f"to_{mic}"] = leak_info
        info["gain_db"][mic], info["noise_db"][mic] = gain, floor
    return tracks, info


def _delayed(x: np.ndarray, d: int) -> np.ndarray:
    return np.concatenate([np.zeros(d), x[: x.size - d]]) if d > 0 else x

