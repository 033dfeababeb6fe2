"""Streaming inference: a session's logits are the full-sequence forward's, chunk by chunk, for every
variant; eviction keeps it running; greedy decoding is deterministic and seeded sampling reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microturn.train.config import ModelConfig
from microturn.train.model import InteractionModel
from microturn.train.realtime import ModelChunk, RealtimeSession, UserChunk

torch.set_num_threads(1)

J = 15
VARIANTS = {
    "codes+tokens": dict(audio="codes", video="tokens"),
    "dmel+none": dict(audio="dmel", video="none"),
    "dmel+pixels": dict(audio="dmel", video="pixels"),
}


def variant_cfg(audio: str, video: str) -> ModelConfig:
    return ModelConfig(
        audio=audio, video=video, d_model=32, n_layers=2, n_heads=4, n_experts=4, top_k=2, expert_hidden=32,
        depth_d_model=16, depth_heads=2, codebooks=3, audio_vocab=50, text_vocab=20, frame_vocab=30, frame_tokens=4,
        video_pool=2, dmel_channels=6, dmel_bins=5, pixel_size=80, pixel_patch=40,
    )  # fmt: skip


def variant_batch(cfg: ModelConfig, chunks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One example of every input the variant reads (some chunks without a video frame)."""
    g = torch.Generator().manual_seed(seed)
    Fr = chunks * J
    if cfg.audio == "codes":
        rows, top, key = cfg.codebooks, cfg.audio_vocab, "codes"
    else:
        rows, top, key = cfg.dmel_channels, cfg.dmel_bins, "dmel"
    batch = {
        f"model_{key}": torch.randint(0, top, (1, rows, Fr), generator=g),
        f"user_{key}": torch.randint(0, top, (1, rows, Fr), generator=g),
        "model_text": torch.randint(0, cfg.text_vocab, (1, Fr), generator=g),
        "user_text": torch.randint(0, cfg.text_vocab, (1, Fr), generator=g),
        "valid": torch.ones(1, Fr, dtype=torch.bool),
    }
    has = torch.tensor([[c % 3 != 1 for c in range(chunks)]])
    if cfg.video == "tokens":
        frames = torch.randint(0, cfg.frame_vocab, (1, chunks, cfg.frame_tokens), generator=g)
        batch["frames"] = torch.where(has[..., None], frames, cfg.frame_vocab)
    elif cfg.video == "pixels":
        pixels = torch.randint(0, 256, (1, chunks, 80, 80, 3), generator=g, dtype=torch.uint8)
        batch["pixels"] = pixels * has[..., None, None, None]
        batch["has_frame"] = has
    return batch


def user_chunk(cfg: ModelConfig, batch: dict[str, torch.Tensor], c: int) -> UserChunk:
    key = "codes" if cfg.audio == "codes" else "dmel"
    s = slice(c * J, (c + 1) * J)
    video = None
    if cfg.video == "tokens" and int(batch["frames"][0, c, 0]) != cfg.frame_vocab:
        video = batch["frames"][0, c].numpy()
    if cfg.video == "pixels" and bool(batch["has_frame"][0, c]):
        video = batch["pixels"][0, c].numpy()
    return UserChunk(batch[f"user_{key}"][0, :, s].numpy(), batch["user_text"][0, s].numpy(), video)


def forced_chunk(cfg: ModelConfig, batch: dict[str, torch.Tensor], c: int) -> ModelChunk:
    key = "codes" if cfg.audio == "codes" else "dmel"
    s = slice(c * J, (c + 1) * J)
    return ModelChunk(batch[f"model_{key}"][0, :, s].numpy(), batch["model_text"][0, s].numpy())


def build(name: str, seed: int = 0) -> InteractionModel:
    torch.manual_seed(seed)
    return InteractionModel(variant_cfg(**VARIANTS[name])).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_streaming_logits_match_the_full_sequence_forward(name):
    model = build(name)
    cfg, chunks = model.cfg, 4
    batch = variant_batch(cfg, chunks)
    with torch.no_grad():
        full, _ = model.frame_logits(batch, "loop")
    key = "codes" if cfg.audio == "codes" else "dmel"
    session = RealtimeSession(model, temperature=0.0)
    for c in range(chunks):
        out = session.turn(user_chunk(cfg, batch, c), force=forced_chunk(cfg, batch, c))
        s = slice(c * J, (c + 1) * J)
        torch.testing.assert_close(out.text_logits_JV, full["text"][0, s], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.audio_logits_JXV, full[key][0, s], atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(out.text_J, batch["model_text"][0, s].numpy())
    assert session.position == model.layout(chunks).length + model.layout(1).video_positions + J
    assert len(session.step_ms) == chunks and all(ms > 0 for ms in session.step_ms)


@pytest.mark.parametrize("name", ["codes+tokens", "dmel+pixels"])
def test_eviction_bounds_the_cache_and_keeps_running(name):
    model = build(name)
    cfg = model.cfg
    batch = variant_batch(cfg, 6)
    session = RealtimeSession(model, temperature=0.0, max_context_chunks=2)
    block = model.layout(1).block
    for c in range(6):
        out = session.turn(user_chunk(cfg, batch, c))
        assert session.cache.length <= 1 + 2 * block
        assert torch.isfinite(out.text_logits_JV).all() and torch.isfinite(out.audio_logits_JXV).all()
    assert session.cache.length == 1 + 2 * block and session.chunks_cached == 2
    assert session.position == 1 + 6 * block  # RoPE positions keep counting past the evicted chunks


def test_within_the_context_bound_eviction_changes_nothing():
    model = build("dmel+none")
    batch = variant_batch(model.cfg, 3)
    a = RealtimeSession(model, temperature=0.0)
    b = RealtimeSession(model, temperature=0.0, max_context_chunks=3)
    for c in range(3):
        ua, ub = a.turn(user_chunk(model.cfg, batch, c)), b.turn(user_chunk(model.cfg, batch, c))
        np.testing.assert_array_equal(ua.audio_XJ, ub.audio_XJ)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_greedy_generation_is_deterministic_and_feeds_its_frames_back(name):
    model = build(name)
    cfg = model.cfg
    batch = variant_batch(cfg, 3)
    runs = []
    for _ in range(2):
        session = RealtimeSession(model, temperature=0.0, seed=123)
        runs.append([session.turn(user_chunk(cfg, batch, c)) for c in range(3)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a.audio_XJ, b.audio_XJ)
        np.testing.assert_array_equal(a.text_J, b.text_J)
        # greedy: every frame is the argmax of the logits it was drawn from
        np.testing.assert_array_equal(a.audio_XJ, a.audio_logits_JXV.argmax(-1).numpy().T)
        np.testing.assert_array_equal(a.text_J, a.text_logits_JV.argmax(-1).numpy())
    # what was generated is what the model saw: forcing the generated frames gives the same logits
    session = RealtimeSession(model, temperature=0.0)
    for c, gen in enumerate(runs[0]):
        forced = session.turn(user_chunk(cfg, batch, c), force=gen)
        torch.testing.assert_close(forced.audio_logits_JXV, gen.audio_logits_JXV, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["codes+tokens", "dmel+none"])
def test_sampling_with_a_seed_is_reproducible_and_seeds_differ(name):
    model = build(name)
    cfg = model.cfg
    batch = variant_batch(cfg, 2)

    def generate(seed: int) -> np.ndarray:
        session = RealtimeSession(model, temperature=1.0, seed=seed)
        return np.concatenate([session.turn(user_chunk(cfg, batch, c)).audio_XJ for c in range(2)], axis=1)

    first = generate(7)
    np.testing.assert_array_equal(first, generate(7))
    assert not np.array_equal(first, generate(8))
    dtype = np.uint8 if cfg.audio == "dmel" else np.int64
    assert first.dtype == dtype and int(first.max()) < (cfg.dmel_bins if cfg.audio == "dmel" else cfg.audio_vocab)


def test_a_user_chunk_of_the_wrong_length_is_refused():
    model = build("dmel+none")
    session = RealtimeSession(model)
    with pytest.raises(ValueError, match="15 frames"):
        session.turn(UserChunk(np.zeros((6, 10), np.uint8), np.zeros(10, np.int64)))


@pytest.mark.parametrize("greedy", [True, False])
def test_depth_generation_draws_each_step_from_the_logits_the_full_depth_pass_gives(greedy):
    """DepthHead.generate (one new position per step, cached keys) gives forward's logits for the tokens
    it drew, and each token is the argmax of its step's logits plus that step's noise."""
    model = build("codes+tokens")
    cfg, depth = model.cfg, model.depth
    g = torch.Generator().manual_seed(3)
    h_ND = torch.randn(5, cfg.d_model, generator=g)
    u = torch.rand(5, cfg.codebooks + 1, max(cfg.text_vocab, cfg.audio_vocab), generator=g)
    noise = None if greedy else -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
    with torch.no_grad():
        text_N, codes_NK, text_logits, audio_logits = depth.generate(h_ND, noise)
        full_text, full_audio = depth(h_ND, text_N, codes_NK)
    torch.testing.assert_close(text_logits, full_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(audio_logits, full_audio, atol=1e-5, rtol=1e-5)
    if noise is None:
        noise = torch.zeros_like(u)
    assert torch.equal(text_N, (text_logits + noise[:, 0, : cfg.text_vocab]).argmax(-1))
    assert torch.equal(codes_NK, (audio_logits + noise[:, 1:, : cfg.audio_vocab]).argmax(-1))


def test_sampling_draws_from_the_softmax_at_the_temperature():
    """Gumbel-max sampling: the frequencies of 20,000 draws match softmax(logits / T) within 0.015."""
    model = build("dmel+none")
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(20_000, 1)
    for temperature in (1.0, 0.5):
        session = RealtimeSession(model, temperature=temperature, seed=0)
        draws = session._sample(logits)
        freq = torch.bincount(draws, minlength=4).float() / draws.numel()
        torch.testing.assert_close(freq, torch.softmax(logits[0] / temperature, -1), atol=0.015, rtol=0)


def test_the_cache_slot_mode_writes_one_position_where_the_device_index_says():
    """The replayable trunk step's storage contract: reserve keeps what is cached (and counts the
    reallocation); in slot mode a position lands at the slot, the host length is left to the caller,
    and the whole storage comes back for masked attention."""
    from microturn.train.model import KVCache

    cache = KVCache(2)
    k = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).view(2, 3, 5, 4)
    for layer in range(2):
        cache.append(layer, k, -k)
    assert cache.length == 5 and cache.capacity == 64
    generation = cache.generation
    cache.reserve(200)
    assert cache.capacity == 200 and cache.generation > generation
    torch.testing.assert_close(cache.kv[1][0, :, :, :5], k)
    cache.slot = torch.tensor([cache.length])
    new_k = torch.full((2, 3, 1, 4), 7.0)
    keys, values = cache.append(1, new_k, -new_k)
    assert keys.shape[2] == 200 and cache.length == 5
    torch.testing.assert_close(keys[:, :, 5:6], new_k)
    torch.testing.assert_close(values[:, :, :5], -k)


def test_a_session_reserves_storage_ahead_so_the_users_block_never_reallocates_it():
    """Storage grows only in the trunk step's reserve (before a frame, where a CUDA graph is captured
    again anyway), never in the middle of a turn when the user's block is appended."""
    model = build("codes+tokens")
    batch = variant_batch(model.cfg, 4)
    session = RealtimeSession(model, temperature=0.0)
    cache, grows, reserving = session.cache, [], [False]
    grow, reserve = cache._grow, cache.reserve

    def grow_logged(*args):
        grows.append(reserving[0])
        return grow(*args)

    def reserve_logged(positions):
        reserving[0] = True
        try:
            reserve(positions)
        finally:
            reserving[0] = False

    cache._grow, cache.reserve = grow_logged, reserve_logged
    for c in range(4):
        session.turn(user_chunk(model.cfg, batch, c))
    assert grows and all(grows)
    assert cache.capacity % 64 == 0
