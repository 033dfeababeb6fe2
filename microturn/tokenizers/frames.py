"""The frame tokenizer: a small convolutional autoencoder with finite scalar quantization (FSQ).

An RGB frame of ``image_size`` x ``image_size`` becomes an h x w grid of integer tokens
(h = w = image_size / downsample). The encoder ends in ``len(levels)`` channels; FSQ bounds each
channel to ``levels[i]`` values and rounds (Mentzer et al., 2023), so there is no codebook to
collapse. A token is the mixed-radix index of the channel values (the first channel varies fastest),
vocabulary ``prod(levels)``.

Weights are seeded (``torch.manual_seed(seed)``) unless ``checkpoint`` names a trained state dict
(written by ``microturn.tokenizers.frame_train``; read with ``torch.load(weights_only=True)``).
torch is imported inside functions so that importing this module stays light.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microturn import storage
from microturn.clock import GRID
from microturn.config import FrameCodecConfig
from microturn.devices import resolve_device
from microturn.format import MEMBERS
from microturn.media import spill
from microturn.records import StageError, TokenizeInput
from microturn.tokenizers.seeded import cached_state, one_torch_thread, recipe_digest, untrained_tag

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "microturn-fsq-v1"
# Frames per forward pass when the config leaves it open. On a CPU a batch's activations (64 channels
# at full resolution: 1 MB per 64 x 64 frame) must stay in cache: batches of 16 encode 150 frames in
# 0.30 s, batches of 64 in 0.51-0.68 s (one thread, same tokens). A GPU wants larger calls.
CPU_BATCH = 16
GPU_BATCH = 64


def build_codec(cfg: FrameCodecConfig) -> Any:
    """The FSQ autoencoder module (torch), weights from the global RNG."""
    import torch
    from torch import nn

    class FSQ(nn.Module):
        """Bound each channel to its number of levels, round with a straight-through gradient."""

        def __init__(self, levels: tuple[int, ...]) -> None:
            super().__init__()
            lv = torch.tensor(levels, dtype=torch.float32)
            basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1]), dtype=torch.int64), 0)
            self.register_buffer("levels", lv, persistent=False)
            self.register_buffer("basis", basis, persistent=False)

        def bound(self, z: torch.Tensor) -> torch.Tensor:  # z: [B, C, h, w]
            lv = self.levels.view(1, -1, 1, 1)
            half = (lv - 1) * (1 + 1e-3) / 2
            offset = torch.where(lv % 2 == 0, 0.5, 0.0)
            shift = torch.atanh(offset / half)
            return torch.tanh(z + shift) * half - offset

        def quantize(self, z: torch.Tensor) -> torch.Tensor:
            """Integer levels in [0, L-1] per channel (as float), straight-through in training."""
            b = self.bound(z)
            q = b + (torch.round(b) - b).detach()
            return q + (self.levels.view(1, -1, 1, 1) // 2)

        def to_index(self, q: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> [B, h, w]
            return (q.round().long() * self.basis.view(1, -1, 1, 1)).sum(1)

        def from_index(self, idx: torch.Tensor) -> torch.Tensor:  # [B, h, w] -> [B, C, h, w]
            lv = self.levels.long().view(1, -1, 1, 1)
            return ((idx.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % lv).float()

        def normalise(self, q: torch.Tensor) -> torch.Tensor:
            """Levels -> values around 0 of comparable scale for the decoder."""
            half = (self.levels.view(1, -1, 1, 1) // 2).clamp_min(1)
            return (q - self.levels.view(1, -1, 1, 1) // 2) / half

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU(), nn.Conv2d(cout, cout, 3, padding=1), nn.GELU())

    class FrameCodec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            steps = int(math.log2(cfg.downsample))
            h = cfg.hidden
            enc: list[nn.Module] = [nn.Conv2d(3, h, 3, padding=1), nn.GELU()]
            for _ in range(steps):
                enc += [nn.Conv2d(h, h, 4, stride=2, padding=1), nn.GELU(), block(h, h)]
            enc += [nn.Conv2d(h, len(cfg.levels), 1)]
            dec: list[nn.Module] = [nn.Conv2d(len(cfg.levels), h, 3, padding=1), nn.GELU()]
            for _ in range(steps):
                dec += [block(h, h), nn.ConvTranspose2d(h, h, 4, stride=2, padding=1), nn.GELU()]
            dec += [nn.Conv2d(h, 3, 3, padding=1)]
            self.encoder = nn.Sequential(*enc)
            self.decoder = nn.Sequential(*dec)
            self.fsq = FSQ(tuple(cfg.levels))

        def encode_levels(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1], [B, 3, H, W]
            return self.fsq.quantize(self.encoder(x))

        def decode_levels(self, q: torch.Tensor) -> torch.Tensor:  # -> [B, 3, H, W] in about [-1, 1]
            return self.decoder(self.fsq.normalise(q))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode_levels(self.encode_levels(x))

    return FrameCodec()


def _calibration_frames(cfg: FrameCodecConfig, n: int = 16) -> np.ndarray:
    """Seeded colour gradients plus noise: data-independent inputs to scale the untrained codec."""
    rng = np.random.default_rng(cfg.seed)
    size = cfg.image_size
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        a = rng.uniform(-1, 1, (3, 3))
        img = a[:, 0] * xx[..., None] + a[:, 1] * yy[..., None] + a[:, 2]
        out[i] = np.clip(img + 0.3 * rng.standard_normal((size, size, 3)), -1, 1)
    return out


def seeded_codec(cfg: FrameCodecConfig, cache_dir: Optional[Path] = None) -> tuple[Any, str]:
    """(module, digest of its state): seeded weights; the encoder's last conv is rescaled so that, on
    seeded calibration frames, each FSQ channel has zero mean and unit spread. Without it a fresh
    network's outputs are so small that every position rounds to the middle level (one or two tokens
    for every frame). The calibrated state is cached on disk in ``cache_dir`` (None:
    ``seeded.default_cache_dir``)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_codec(cfg).eval()
    key = {"seed": cfg.seed, "architecture": [getattr(cfg, k) for k in checkpoint_config_keys()],
           "recipe": recipe_digest(__file__)}
    name = f"fsq-{cfg.image_size}px-seed{cfg.seed}"
    seeded = cached_state(name, key, cache_dir, lambda: _calibrated_state(model, cfg))
    model.load_state_dict(seeded.tensors)  # strict: the module's state is that state, digest included
    return model, seeded.digest


def _calibrated_state(model: Any, cfg: FrameCodecConfig) -> dict[str, Any]:
    import torch

    x = torch.from_numpy(_calibration_frames(cfg)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad(), one_torch_thread():
        z = model.encoder(x)  # [n, C, h, w]
        mean = z.mean(dim=(0, 2, 3))
        std = z.std(dim=(0, 2, 3)).clamp_min(1e-8)
        last = model.encoder[-1]
        last.weight.div_(std.view(-1, 1, 1, 1))
        last.bias.copy_((last.bias - mean) / std)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint_config_keys() -> tuple[str, ...]:
    """Architecture fields a checkpoint must agree on with the config."""
    return ("image_size", "downsample", "levels", "hidden")


def load_frame_codec(cfg: FrameCodecConfig, cache_dir: Optional[Path] = None) -> tuple[Any, str]:
    """(module, weights tag): ``sha256:<16 hex>`` of the checkpoint or ``untrained:<seed>@<8 hex>``;
    ``cache_dir`` holds seeded calibrations (``tokenizers.cache_dir``)."""
    import torch

    if cfg.checkpoint is None:
        log.warning(
            "NO FRAME CODEC CHECKPOINT CONFIGURED: video frames are tokenized by a seeded, UNTRAINED "
            "autoencoder (seed %d); train one with `microturn train-frame-codec` and set "
            "tokenizers.frames.checkpoint.",
            cfg.seed,
        )
        codec, digest = seeded_codec(cfg, cache_dir)
        return codec, untrained_tag(cfg.seed, digest)
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise StageError("tokenize", "frame_codec_missing", f"checkpoint not found: {path}", source=str(path))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StageError("tokenize", "frame_codec_unreadable", f"{path}: {exc}", source=str(path)) from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise StageError("tokenize", "frame_codec_unreadable", f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    arch = blob.get("config", {})
    for key in checkpoint_config_keys():
        want = getattr(cfg, key)
        got = arch.get(key)
        if (list(want) if isinstance(want, tuple) else want) != (list(got) if isinstance(got, (tuple, list)) else got):
            raise StageError(
                "tokenize", "frame_codec_config_mismatch", f"{path}: checkpoint has {key}={got!r}, config says {want!r}"
            )
    model = build_codec(cfg)
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise StageError("tokenize", "frame_codec_unreadable", f"{path}: {exc}", source=str(path)) from None
    return model.eval(), f"sha256:{storage.file_sha256(str(path))[:16]}"


def resize_frames(frames_rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, H, W, 3] -> uint8 [n, size, size, 3]: centre crop to a square, then area/bilinear resize."""
    import torch
    import torch.nn.functional as F

    n, height, width, _ = frames_rgb.shape
    if height == size and width == size:
        return frames_rgb
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frames_rgb[:, top : top + side, left : left + side]
    x = torch.from_numpy(np.ascontiguousarray(square)).permute(0, 3, 1, 2).float()
    mode = "area" if side > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    y = F.interpolate(x, size=(size, size), mode=mode, **kwargs)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class FrameTokenizer:
    """uint8 [n, H, W, 3] <-> int16 [n, h, w] (H = W = image_size).

    The ``frames`` representation: ``frames.npy`` int16 [N, H, W] tokens of the video frames kept and
    its frames are the session's picked frames (``frame_chunks.npy``, a core member, says their chunks)."""

    name = "frames"
    frame_rate = Fraction(1) / GRID.chunk_seconds  # one frame per chunk
    # declared by format version 1 (corpora whose dataset.json lists no members hold exactly these)
    members = (MEMBERS["frames.npy"],)
    fill: dict[str, int] = {}

    def __init__(self, model: Any, cfg: FrameCodecConfig, weights_tag: str) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "tokenize")
        self.model = model.to(self.device).eval()
        side = cfg.image_size // cfg.downsample
        self.grid = (side, side)
        self.vocab_size = int(np.prod(cfg.levels))
        self.batch = cfg.batch_frames or (CPU_BATCH if self.device == "cpu" else GPU_BATCH)
        self.weights_tag = weights_tag
        levels = "x".join(str(v) for v in cfg.levels)
        self.fingerprint = (
            f"fsq/{cfg.image_size}px/d{cfg.downsample}/L{levels}/h{cfg.hidden}/V{self.vocab_size}/{weights_tag}"
        )

    def encode(self, frames_rgb: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 3] -> int16 [n, h, w]; frames of another size are cropped and resized."""
        import torch

        frames = np.asarray(frames_rgb)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise StageError("tokenize", "bad_frames_shape", f"expected [n, H, W, 3], got {frames.shape}")
        if frames.dtype != np.uint8:
            raise StageError("tokenize", "bad_frames_dtype", f"expected uint8 frames, got {frames.dtype}")
        out = np.zeros((frames.shape[0],) + self.grid, dtype=np.int16)
        for i in range(0, frames.shape[0], self.batch):
            part = resize_frames(frames[i : i + self.batch], self.cfg.image_size)
            x = torch.from_numpy(np.ascontiguousarray(part)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.inference_mode():
                idx = self.model.fsq.to_index(self.model.encode_levels(x))
            out[i : i + len(part)] = idx.to(torch.int16).cpu().numpy()
            spill.release(frames[i : i + self.batch])  # a spilled session's frames go back once used
        return out

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        return [(self._session_tokens(inp), {}) for inp in batch]

    def _session_tokens(self, inp: TokenizeInput) -> dict[str, np.ndarray]:
        if not len(inp.frames_rgb):
            return {"frames.npy": np.zeros((0,) + self.grid, dtype=np.int16)}
        return {"frames.npy": self.encode(np.asarray(inp.frames_rgb))}

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "grid": list(self.grid),
                "dims": {"H": self.grid[0], "W": self.grid[1]}}

    def window_meta(self) -> dict[str, Any]:
        return {}

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """int16 [n, h, w] -> uint8 [n, image_size, image_size, 3]."""
        import torch

        tokens = np.asarray(tokens)
        if tokens.ndim != 3 or tokens.shape[1:] != self.grid:
            raise StageError("tokenize", "bad_tokens_shape", f"expected [n, {self.grid[0]}, {self.grid[1]}], got {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise StageError("tokenize", "bad_tokens", f"frame tokens outside [0, {self.vocab_size})")
        size = self.cfg.image_size
        out = np.zeros((tokens.shape[0], size, size, 3), dtype=np.uint8)
        for i in range(0, tokens.shape[0], self.batch):
            idx = torch.from_numpy(tokens[i : i + self.batch].astype(np.int64)).to(self.device)
            with torch.inference_mode():
                y = self.model.decode_levels(self.model.fsq.from_index(idx))
            img = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out[i : i + len(img)] = img
        return out


def load_frame_tokenizer(cfg: FrameCodecConfig, cache_dir: Optional[Path] = None) -> FrameTokenizer:
    model, tag = load_frame_codec(cfg, cache_dir)
    return FrameTokenizer(model, cfg, tag)
