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

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

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
        """What shards record, e.g. ``{"audio": "encodec24k/6kbps/K8/V1024/untrained:0@c8c8a6ce", ...}``."""
        return {"audio": self.audio.fingerprint, "frames": self.frames.fingerprint, "text": self.text.fingerprint}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run seeded weight construction on one thread: kernels split their sums differently per thread
    count, and untrained weights must be bit-identical in every process whatever its thread setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def untrained_tag(seed: int, module: Any) -> str:
    """``untrained:<seed>@<8 hex>``: the seed, and a digest of the weights it produced.

    The seed alone does not pin the weights: a change in how seeded weights are built (or a CPU whose
    kernels round differently) would give other codes under the same name. The digest makes the
    fingerprint name the actual weights, so readers refuse to mix such corpora."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"untrained:{seed}@{h.hexdigest()[:8]}"


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
