"""The FSQ frame codec: frames -> h x w integer tokens and back; training raises PSNR."""

from __future__ import annotations

from pathlib import Path

import re

import numpy as np
import pytest

from microturn.config import ConfigError, FrameCodecConfig, load_config
from microturn.records import StageError

SMALL = dict(image_size=32, downsample=4, levels=(5, 5, 5), hidden=16, device="cpu")


def scenes(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a moving bright square: structured, learnable frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        img = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], -1)
        x0, y0 = rng.integers(0, size - size // 4, 2)
        img[y0 : y0 + size // 4, x0 : x0 + size // 4] = rng.uniform(0.5, 1, 3)
        out[i] = (img * 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def ftok():
    from microturn.tokenizers.frames import load_frame_tokenizer

    return load_frame_tokenizer(FrameCodecConfig(**SMALL))


def test_frames_become_a_grid_of_tokens_in_the_vocabulary(ftok):
    tokens = ftok.encode(scenes(5, 32))
    assert tokens.dtype == np.int16 and tokens.shape == (5, 8, 8) and ftok.grid == (8, 8)
    assert ftok.vocab_size == 125 and tokens.min() >= 0 and tokens.max() < 125
    assert len(np.unique(tokens)) > 5  # an untrained FSQ codec still spreads over its levels
    assert re.fullmatch(r"fsq/32px/d4/L5x5x5/h16/V125/untrained:0@[0-9a-f]{8}", ftok.fingerprint)


def test_same_frames_same_tokens_and_other_sizes_are_resized(ftok):
    frames = scenes(3, 32, seed=1)
    assert np.array_equal(ftok.encode(frames), ftok.encode(frames.copy()))
    wide = np.repeat(np.repeat(scenes(2, 48, seed=2), 2, axis=1), 3, axis=2)  # 96 x 144
    assert ftok.encode(wide).shape == (2, 8, 8)


def test_a_cpu_encodes_in_cache_sized_batches_that_give_the_tokens_of_one_large_batch():
    """Batches of 16 frames on a CPU (their activations stay in cache); a batch of 40 gives the same
    tokens. oneDNN may pick another kernel for another batch size, so a rare token may round the other
    way on some CPU: at most 1 in 1,000 (on this project's machine, none)."""
    from microturn.tokenizers.frames import CPU_BATCH, load_frame_tokenizer

    cfg = dict(SMALL, image_size=64, downsample=8, hidden=64)
    auto = load_frame_tokenizer(FrameCodecConfig(**cfg))
    large = load_frame_tokenizer(FrameCodecConfig(**cfg, batch_frames=40))
    assert auto.batch == CPU_BATCH == 16 and large.batch == 40
    frames = scenes(40, 64, seed=3)  # two full batches of 16 and a short one of 8
    small_tokens, large_tokens = auto.encode(frames), large.encode(frames)
    assert small_tokens.shape == (40, 8, 8)
    assert np.mean(small_tokens != large_tokens) <= 1e-3


def test_decode_gives_frames_of_the_codec_size(ftok):
    images = ftok.decode(ftok.encode(scenes(4, 32)))
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    with pytest.raises(StageError) as err:
        ftok.decode(np.full((1, 8, 8), 125, np.int16))
    assert err.value.reason == "bad_tokens"


def test_token_index_is_the_mixed_radix_of_the_levels(ftok):
    import torch

    fsq = ftok.model.fsq
    idx = torch.arange(125).view(1, 5, 25)
    levels = fsq.from_index(idx)
    assert levels.min() >= 0 and levels.max() <= 4
    assert torch.equal(fsq.to_index(levels), idx)
    assert torch.equal(levels[0, :, 0, 1], torch.tensor([1.0, 0.0, 0.0]))  # first level varies fastest


def test_bad_frame_codec_config_is_refused():
    with pytest.raises(ConfigError):
        load_config(overrides=["tokenizers.frames.levels=[1000,1000]"])
    with pytest.raises(ConfigError):
        load_config(overrides=["tokenizers.frames.image_size=60"])


def test_training_raises_psnr_and_the_checkpoint_loads(tmp_path: Path):
    import torch

    from microturn.tokenizers.frame_train import train_frame_codec
    from microturn.tokenizers.frames import load_frame_tokenizer

    torch.set_num_threads(2)
    cfg = FrameCodecConfig(**SMALL)
    logs: list[str] = []
    out = train_frame_codec(iter(scenes(64, 40)), cfg, tmp_path / "fsq.pt", steps=60, device="cpu",
                            log=logs.append, batch_size=16, log_every=20)
    psnrs = [row["psnr_db"] for row in out["history"]]
    assert len(psnrs) == 3 and psnrs[-1] > psnrs[0] + 1.0, psnrs
    assert out["frames"] == 64 and len(logs) == 3 and "psnr" in logs[0]

    trained = load_frame_tokenizer(FrameCodecConfig(**dict(SMALL, checkpoint=tmp_path / "fsq.pt")))
    assert "/sha256:" in trained.fingerprint
    frames = scenes(8, 32, seed=5)
    untrained = load_frame_tokenizer(cfg)

    def psnr(tok) -> float:
        rec = tok.decode(tok.encode(frames)).astype(np.float64)
        mse = ((rec - frames) ** 2).mean()
        return 10 * np.log10(255.0**2 / mse)

    assert psnr(trained) > psnr(untrained) + 1.0
    with pytest.raises(StageError) as err:
        load_frame_tokenizer(FrameCodecConfig(**dict(SMALL, hidden=8, checkpoint=tmp_path / "fsq.pt")))
    assert err.value.reason == "frame_codec_config_mismatch"
