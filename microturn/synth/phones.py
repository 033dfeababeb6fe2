"""The sounds the synthetic voices are made of: the vowels and onsets a syllable is drawn from, with the
formants and noise bands the voice renders them with."""

from __future__ import annotations

import numpy as np

# Formants (Hz, F1..F3) of a ~120 Hz adult voice; other voices scale them.
VOWEL_FORMANTS_HZ: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (290.0, 2250.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 870.0, 2240.0),
    "@": (500.0, 1500.0, 2500.0),  # schwa, as in "uh"
    "m": (260.0, 1100.0, 2300.0),  # closed-mouth nasal hum, as in "mm"
}
VOICED_ONSET_FORMANTS_HZ: dict[str, tuple[float, float, float]] = {
    "b": (250.0, 900.0, 2200.0),
    "d": (280.0, 1700.0, 2600.0),
    "g": (280.0, 2000.0, 2300.0),
    "l": (360.0, 1300.0, 2700.0),
    "m": (260.0, 1100.0, 2300.0),
    "n": (280.0, 1500.0, 2500.0),
}
# Fricative noise bands (Hz), clipped below Nyquist at render time.
NOISE_ONSET_BANDS_HZ: dict[str, tuple[float, float]] = {
    "s": (4000.0, 7500.0),
    "sh": (2000.0, 4500.0),
    "f": (1200.0, 6500.0),
    "h": (500.0, 3500.0),
}
WORD_VOWELS = ("a", "e", "i", "o", "u")
WORD_ONSETS = ("", "b", "d", "g", "l", "m", "n", "s", "sh", "f", "h")
WORD_ONSET_WEIGHTS = np.array([2, 1, 1, 1, 1.5, 1, 1, 1.5, 1, 1, 1], dtype=float)  # one per WORD_ONSETS
# (onset, vowel) syllables of "mm-hm", "uh-huh", "mm"
BACKCHANNEL_SHAPES = ((("", "m"), ("h", "m")), (("", "@"), ("h", "@")), (("", "m"),))
SYLLABLE_NAMES = {("", "m"): "mm", ("h", "m"): "hm", ("", "@"): "uh", ("h", "@"): "huh"}
