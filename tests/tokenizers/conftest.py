"""Fixtures for the tokenizer tests: one untrained audio codec per test session (building it costs a
couple of seconds), with small windows so that a few seconds of audio span several windows.

No ``__init__.py`` here on purpose: this folder is named ``tokenizers`` and must never become an
importable package that could shadow Hugging Face's ``tokenizers``.
"""

from __future__ import annotations

import pytest

from microturn.config import AudioCodecConfig

# 1 s windows (5 chunks) with 0.4 s of left context: 3 s of audio -> 3 windows per stream.
SMALL_WINDOWS = dict(window_s=1.0, context_s=0.4, batch_windows=4, threads=2)


@pytest.fixture(scope="session")
def small_windows() -> dict:
    return dict(SMALL_WINDOWS)


@pytest.fixture(scope="session")
def audio_tok():
    from microturn.tokenizers.audio import load_audio_tokenizer

    return load_audio_tokenizer(AudioCodecConfig(**SMALL_WINDOWS))
