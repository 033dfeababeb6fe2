"""Tokenizers: audio (EnCodec 24 kHz), video frames (FSQ autoencoder) and text, with fingerprints.

This is ``microturn.tokenizers``, not Hugging Face's top-level ``tokenizers`` (which ``text.py``
imports lazily for ``tokenizer.json`` files). Importing it stays light: torch and encodec load
only when a tokenizer is built.

    toks = load_tokenizers(cfg.tokenizers)      # once per worker process (cached)
    codes = toks.audio.encode(wave_24k)         # float32 [S, N] -> int16 [S, K, N // 320]
    tokens = toks.frames.encode(frames_rgb)     # uint8 [n, H, W, 3] -> int16 [n, h, w]
    arrays, report = toks.text.tokenize([inp])[0]   # every representation: TokenizeInput -> members

Each representation follows ``representation.Representation``; ``REPRESENTATIONS`` below is the registry.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from microturn.config import TokenizerConfig
from microturn.tokenizers.text import (
    ByteTokenizer,
    HFTokenizer,
    TextLayout,
    TextRepresentation,
    TextTokenizer,
    layout_text,
    load_text_tokenizer,
    text_stream,
)

from microturn.tokenizers.representation import Representation, check_tiles

if TYPE_CHECKING:
    from microturn.format import MemberSpec
    from microturn.tokenizers.audio import AudioTokenizer
    from microturn.tokenizers.frames import FrameTokenizer

__all__ = [
    "AudioTokenizer",
    "ByteTokenizer",
    "FrameTokenizer",
    "HFTokenizer",
    "REPRESENTATIONS",
    "Representation",
    "TextLayout",
    "TextRepresentation",
    "TextTokenizer",
    "TokenizerSet",
    "layout_text",
    "load_tokenizers",
    "text_stream",
]


class TokenizerSet:
    """The configured representations, by name, in configuration order (``toks.audio``, ``toks["text"]``)."""

    def __init__(self, representations: Mapping[str, "Representation"], cfg: TokenizerConfig = TokenizerConfig()) -> None:
        self.representations = dict(representations)
        self.cfg = cfg  # the sections the representations were built from
        self._extra: dict[str, "Representation"] = {}
        for rep in self.representations.values():
            check_tiles(rep)

    def __getattr__(self, name: str) -> "Representation":
        reps = self.__dict__.get("representations", {})
        if name in reps:
            return reps[name]
        raise AttributeError(f"no {name!r} representation is configured (configured: {sorted(reps)})")

    def __getitem__(self, name: str) -> "Representation":
        return self.representations[name]

    def __iter__(self) -> Iterator["Representation"]:
        return iter(self.representations.values())

    def get_or_build(self, name: str) -> "Representation":
        """``name``, built from this set's config section when the set does not hold it (a reader
        meeting a member its corpus config does not list, e.g. a shard read without its corpus)."""
        if name in self.representations:
            return self.representations[name]
        if name not in self._extra:  # kept apart: what the set tokenizes into never changes
            self._extra[name] = REPRESENTATIONS[name](self.cfg)
        return self._extra[name]

    def fingerprints(self) -> dict[str, str]:
        """What shards record, e.g. ``{"audio": "encodec24k/6kbps/K8/V1024/untrained:0@c8c8a6ce", ...}``."""
        return {rep.name: rep.fingerprint for rep in self}

    def describe(self) -> dict[str, dict[str, Any]]:
        """dataset.json's ``tokenizers``: fingerprints and the facts readers check (vocabularies, shapes)."""
        return {rep.name: rep.describe() for rep in self}

    def member_specs(self) -> tuple["MemberSpec", ...]:
        return tuple(m for rep in self for m in rep.members)


def _audio(cfg: TokenizerConfig) -> "Representation":
    from microturn.tokenizers.audio import load_audio_tokenizer

    return load_audio_tokenizer(cfg.audio, cfg.cache_dir)


def _frames(cfg: TokenizerConfig) -> "Representation":
    from microturn.tokenizers.frames import load_frame_tokenizer

    return load_frame_tokenizer(cfg.frames, cfg.cache_dir)


def _dmel(cfg: TokenizerConfig) -> "Representation":
    from microturn.tokenizers.dmel import DMelTokenizer

    return DMelTokenizer(cfg.dmel)


def _pixels(cfg: TokenizerConfig) -> "Representation":
    from microturn.tokenizers.pixels import PixelsRepresentation

    return PixelsRepresentation(cfg.pixels)


def _text(cfg: TokenizerConfig) -> "Representation":
    return TextRepresentation(load_text_tokenizer(cfg.text.kind, cfg.text.tokenizer_json))


# The one registry of representations: name -> builder from the tokenizers config section.
REPRESENTATIONS: dict[str, Callable[[TokenizerConfig], "Representation"]] = {
    "audio": _audio,
    "frames": _frames,
    "text": _text,
    "dmel": _dmel,
    "pixels": _pixels,
}


def load_tokenizers(cfg: TokenizerConfig) -> TokenizerSet:
    """Build (or reuse, within this process) the representations ``cfg.representations`` names."""
    return _load_cached(cfg)


@functools.lru_cache(maxsize=2)
def _load_cached(cfg: TokenizerConfig) -> TokenizerSet:
    return TokenizerSet({name: REPRESENTATIONS[name](cfg) for name in cfg.representations}, cfg)


def __getattr__(name: str) -> object:
    # AudioTokenizer / FrameTokenizer on demand, so that `import microturn.tokenizers` stays light.
    if name == "AudioTokenizer":
        from microturn.tokenizers.audio import AudioTokenizer

        return AudioTokenizer
    if name == "FrameTokenizer":
        from microturn.tokenizers.frames import FrameTokenizer

        return FrameTokenizer
    raise AttributeError(name)
