"""Pixel frames: the encoder-free video input. The frame picked for each 200 ms chunk (by PTS, at decode)
is stored as it was decoded, uint8 RGB ``size`` x ``size``; a model cuts it into ``patch`` x ``patch``
patches and embeds them itself (a small hMLP in the seed model), so there is no codec and no weights.

    rep = PixelsRepresentation(PixelsConfig())     # 80x80 frames, 2x2 patches of 40x40
    (arrays, _), = rep.tokenize([inp])             # {"pixels.npy": uint8 [N, 80, 80, 3]}

Frames are never rescaled here: decode already sized them (``decode.frame_width/frame_height``, which
the build config requires to equal ``size``), so a frame of another size is an error, not a resize.
Why raw ``.npy`` and not images or a video clip per window: docs/format.md, "Pixel frames"
(measured by benchmarks/pixels.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.config import PixelsConfig
from microturn.errors import StageError
from microturn.format import MemberSpec
from microturn.records import TokenizeInput

CHANNELS = 3  # RGB


class PixelsRepresentation:
    """The ``pixels`` representation: ``pixels.npy`` uint8 [N, Y, X, C], one frame per kept chunk
    (``frame_chunks.npy`` says which), Y = X = size, C = 3; values are the byte values 0..255."""

    name = "pixels"
    frame_rate = Fraction(1) / GRID.chunk_seconds  # one frame per chunk
    vocab_size = 256
    # between frames.npy (50) and frame_chunks.npy (60): the video-frame members sit together in the tar
    members = (MemberSpec("pixels.npy", "npy", "uint8", ("N", "Y", "X", "C"), "RGB pixels of video frames", 55,
                          tokenizer="pixels"),)
    fill: dict[str, int] = {}

    def __init__(self, cfg: PixelsConfig) -> None:
        self.cfg = cfg
        self.shape = (cfg.size, cfg.size, CHANNELS)
        self.fingerprint = f"pixels/{cfg.size}x{cfg.size}/rgb8/p{cfg.patch}"

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        return [({"pixels.npy": self.frames_of(inp)}, {}) for inp in batch]

    def frames_of(self, inp: TokenizeInput) -> np.ndarray:
        """The session's picked frames, checked: uint8 [N, size, size, 3] (a session without video: N = 0)."""
        frames = np.asarray(inp.frames_rgb)
        if not len(frames):
            return np.zeros((0,) + self.shape, dtype=np.uint8)
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            size = self.cfg.size
            raise StageError("tokenize", "bad_pixel_frames",
                             f"pixels expects uint8 frames [n, {size}, {size}, 3] (decode.frame_width/frame_height "
                             f"= tokenizers.pixels.size), got {frames.dtype} {list(frames.shape)}")
        return np.ascontiguousarray(frames)

    def describe(self) -> dict[str, Any]:
        size = self.cfg.size
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "patch": self.cfg.patch,
                "dims": {"Y": size, "X": size, "C": CHANNELS}}

    def window_meta(self) -> dict[str, Any]:
        return {}

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] -> the same images: the pixels are what a person looks at."""
        images = np.asarray(tokens)
        if images.dtype != np.uint8 or images.shape[1:] != self.shape:
            raise StageError("tokenize", "bad_pixel_frames",
                             f"expected uint8 [n, {self.cfg.size}, {self.cfg.size}, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        return images
