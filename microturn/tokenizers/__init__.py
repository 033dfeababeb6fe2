"""Tokenizers: audio (EnCodec 24 kHz), video frames (FSQ autoencoder) and text, with fingerprints.

This is ``microturn.tokenizers``, not Hugging Face's top-level ``tokenizers`` (which ``text.py``
imports lazily for ``tokenizer.json`` files). Importing it stays light: torch and encodec load
only when a tokenizer is built.

    toks = load_tokenizers(cfg.tokenizers)      # once per worker process (cached)
    codes = toks.audio.encode(wave_24k)         # float32 [S, N] -> int16 [S, K, N // 320]
    tokens = toks.frames.encode(frames_rgb)     # uint8 [n, H, W, 3] -> int16 [n, h, w]
    ids = text_stream(words, stream, num_frames, toks.text)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microturn.config import TokenizerConfig
from microturn.tokenizers.text import (
    ByteTokenizer,
    HFTokenizer,
    TextLayout,
    TextTokenizer,
    layout_text,
    load_text_tokenizer,
    text_stream,
)

if TYPE_CHECKING:
    from microturn.tokenizers.audio import AudioTokenizer
    from microturn.tokenizers.frames import FrameTokenizer

__all__ = [
    "AudioTokenizer",
    "ByteTokenizer",
    "FrameTokenizer",
    "HFTokenizer",
    "TextLayout",
    "TextTokenizer",
    "TokenizerSet",
    "layout_text",
    "load_tokenizers",
    "text_stream",
]


@dataclass
class TokenizerSet:
    audio: "AudioTokenizer"
    frames: "FrameTokenizer"
    text: TextTokenizer

    def fingerprints(self) -> dict[str, str]:
        """What shards record, e.g. ``{"audio": "encodec24k/6kbps/K8/V1024/untrained:0", ...}``."""
        return {"audio": self.audio.fingerprint, "frames": self.frames.fingerprint, "text": self.text.fingerprint}


def load_tokenizers(cfg: TokenizerConfig) -> TokenizerSet:
    """Build (or reuse, within this process) the three tokenizers for ``cfg``."""
    return _load_cached(cfg)


@functools.lru_cache(maxsize=2)
def _load_cached(cfg: TokenizerConfig) -> TokenizerSet:
    from microturn.tokenizers.audio import load_audio_tokenizer
    from microturn.tokenizers.frames import load_frame_tokenizer

    return TokenizerSet(
        audio=load_audio_tokenizer(cfg.audio),
        frames=load_frame_tokenizer(cfg.frames),
        text=load_text_tokenizer(cfg.text.kind, cfg.text.tokenizer_json),
    )


def __getattr__(name: str) -> object:
    # AudioTokenizer / FrameTokenizer on demand, so that `import microturn.tokenizers` stays light.
    if name == "AudioTokenizer":
        from microturn.tokenizers.audio import AudioTokenizer

        return AudioTokenizer
    if name == "FrameTokenizer":
        from microturn.tokenizers.frames import FrameTokenizer

        return FrameTokenizer
    raise AttributeError(name)
