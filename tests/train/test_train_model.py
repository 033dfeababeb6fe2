"""The interaction model: expert paths agree, routing balances, the sequence is causal per chunk."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.train.config import ModelConfig
from microturn.train.model import (
    GROUP_ALIGN,
    InteractionModel,
    MoE,
    _group_rows,
    grouped_mm_supported,
)

torch.set_num_threads(1)


def model_cfg(**kw) -> ModelConfig:
    base = dict(
        d_model=32, n_layers=2, n_heads=4, n_experts=4, top_k=2, expert_hidden=32, depth_d_model=16,
        depth_heads=2, codebooks=3, audio_vocab=50, text_vocab=20, frame_vocab=30, frame_tokens=4, video_pool=2,
    )  # fmt: skip
    return ModelConfig(**(base | kw))


def random_batch(cfg: ModelConfig, B: int = 2, chunks: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    F = chunks * 15
    valid = torch.ones(B, F, dtype=torch.bool)
    valid[0, -7:] = False
    return {
        "model_codes": torch.randint(0, cfg.audio_vocab, (B, cfg.codebooks, F), generator=g, dtype=torch.int32),
        "user_codes": torch.randint(0, cfg.audio_vocab, (B, cfg.codebooks, F), generator=g, dtype=torch.int32),
        "model_text": torch.randint(0, cfg.text_vocab, (B, F), generator=g, dtype=torch.int32),
        "user_text": torch.randint(0, cfg.text_vocab, (B, F), generator=g, dtype=torch.int32),
        "frames": torch.randint(0, cfg.frame_vocab, (B, chunks, cfg.frame_tokens), generator=g, dtype=torch.int32),
        "valid": valid,
    }


# ---------------------------------------------------------------- expert dispatch


def _skewed_moe(seed: int = 0) -> tuple[MoE, torch.Tensor]:
    torch.manual_seed(seed)
    moe = MoE(model_cfg(n_experts=5, top_k=2))
    # a skewed router: some experts get many tokens, one may get none (dropless must cope)
    with torch.no_grad():
        moe.router.weight.mul_(8.0)
    return moe, torch.randn(3, 17, 32)


def test_padded_grouped_path_matches_the_loop_in_output_and_gradients():
    moe, x = _skewed_moe()
    outs, grads = {}, {}
    for mode in ("loop", "padded"):
        moe.zero_grad()
        xi = x.clone().requires_grad_(True)
        y, stats = moe(xi, mode)
        (y.square().sum() + stats["z_loss"]).backward()
        outs[mode] = y.detach()
        grads[mode] = (xi.grad.clone(), moe.w1_EFD.grad.clone(), moe.w2_EDH.grad.clone(), moe.router.weight.grad.clone())
    a, b = outs.values()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(*grads.values()):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_grouped_mm_path_matches_the_loop_where_supported():
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not grouped_mm_supported(device, 32, 32):
        pytest.skip(f"torch._grouped_mm does not run on {device} with torch {torch.__version__} (CUDA sm90+ only)")
    moe, x = _skewed_moe()
    moe, x = moe.to(device), x.to(device)
    y_loop, _ = moe(x, "loop")
    y_grouped, _ = moe(x, "grouped")
    # the grouped path computes in bf16
    torch.testing.assert_close(y_grouped.float(), y_loop.float(), rtol=5e-2, atol=5e-2)


def test_grouped_mm_is_not_available_on_cpu_in_this_torch():
    # documents the fact the 'auto' dispatch relies on: on CPU it falls back to the loop
    assert grouped_mm_supported(torch.device("cpu")) is False
    assert MoE(model_cfg()).resolve_dispatch(torch.device("cpu")) == "loop"


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=9), align=st.sampled_from([1, 4, GROUP_ALIGN]))
def test_group_rows_place_every_slot_once_inside_its_aligned_group(counts, align):
    counts_E = torch.tensor(counts)
    dest, offs, starts = _group_rows(counts_E, align)
    assert len(dest) == sum(counts)
    assert len(set(dest.tolist())) == len(dest)  # no two slots share a row
    assert all(int(o) % align == 0 for o in offs)
    sizes = torch.diff(torch.cat([torch.zeros(1, dtype=offs.dtype), offs]))
    assert all(int(s) >= max(c, 1) for s, c in zip(sizes, counts))  # room for all, never an empty group
    expert_of_slot = torch.repeat_interleave(torch.arange(len(counts)), counts_E)
    assert torch.all(dest >= starts[expert_of_slot]) and torch.all(dest < offs[expert_of_slot].long())


# ---------------------------------------------------------------- balancing


def test_router_losses_are_reported_and_z_loss_grows_with_logit_scale():
    moe, x = _skewed_moe()
    _, stats_big = moe(x, "loop")
    with torch.no_grad():
        moe.router.weight.div_(100.0)
    _, stats_small = moe(x, "loop")
    assert stats_big["z_loss"] > stats_small["z_loss"] > 0
    assert float(stats_small["aux_loss"].detach()) == pytest.approx(1.0, abs=0.05)  # near-uniform router: aux ~ 1
    assert int(stats_big["counts_E"].sum()) == x.shape[0] * x.shape[1] * 2


def test_aux_free_bias_moves_load_toward_balance():
    torch.manual_seed(0)
    moe = MoE(model_cfg(n_experts=4, top_k=1))
    v = torch.randn(32)
    x = torch.randn(3, 17, 32) + 0.5 * v
    with torch.no_grad():
        moe.router.weight[0] += 0.2 * v  # every token prefers expert 0
    _, before = moe(x, "loop")
    assert int(before["counts_E"][0]) == 51
    maxima = []
    for i in range(400):
        _, stats = moe(x, "loop")
        moe.update_bias(stats["counts_E"], rate=0.003)
        if i >= 380:
            maxima.append(int(stats["counts_E"].max()))
    assert max(maxima) <= 25  # ideal is 51 / 4 ~ 13; sign updates hover around it
    assert abs(float(moe.expert_bias.sum())) < 1e-5  # centred


# ---------------------------------------------------------------- the whole model


def test_forward_reports_losses_per_stream():
    cfg = model_cfg()
    torch.manual_seed(0)
    out = InteractionModel(cfg)(random_batch(cfg), "loop")
    for key in ("loss", "loss_text", "loss_audio", "loss_audio_cb0", "z_loss", "aux_loss"):
        assert torch.isfinite(out[key]), key
    # untrained: cross-entropies near log(vocab)
    assert float(out["loss_text"]) == pytest.approx(torch.log(torch.tensor(20.0)).item(), rel=0.3)
    assert float(out["loss_audio"]) == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.3)
    assert out["counts_LE"].shape == (cfg.n_layers, cfg.n_experts)


def test_the_model_hears_and_sees_chunk_c_only_after_speaking_chunk_c():
    cfg = model_cfg()
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    batch = random_batch(cfg, chunks=4)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["user_codes"][:, :, 30:45] = (changed["user_codes"][:, :, 30:45] + 1) % cfg.audio_vocab  # user, chunk 2
    changed["frames"][:, 2] = (changed["frames"][:, 2] + 1) % cfg.frame_vocab  # video, chunk 2
    with torch.no_grad():
        h, _ = model.frame_states(batch, "loop")
        h2, _ = model.frame_states(changed, "loop")
    same = (h - h2).abs().amax(dim=(0, 2)) < 1e-6  # per model frame
    assert same[:45].all(), "model frames of chunks 0-2 must not depend on the user/video of chunk 2"
    assert not same[45:].any(), "model frames of chunk 3 must depend on them"


def test_model_stream_is_autoregressive_frame_by_frame():
    cfg = model_cfg()
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    batch = random_batch(cfg, chunks=2)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["model_codes"][:, 0, 20] = (changed["model_codes"][:, 0, 20] + 1) % cfg.audio_vocab
    with torch.no_grad():
        h, _ = model.frame_states(batch, "loop")
        h2, _ = model.frame_states(changed, "loop")
    same = (h - h2).abs().amax(dim=(0, 2)) < 1e-6
    assert same[:21].all() and not same[21:].any()  # frame 20 is seen from the state predicting frame 21 on


def test_padding_frames_do_not_count_in_the_loss():
    cfg = model_cfg()
    torch.manual_seed(0)
    model = InteractionModel(cfg)
    batch = random_batch(cfg)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["model_codes"][0, :, -3:] = 1  # inside the invalid tail of example 0
    changed["model_text"][0, -3:] = 1
    a, b = model(batch, "loop"), model(changed, "loop")
    assert float(a["loss_text"]) == pytest.approx(float(b["loss_text"]), abs=1e-6)
    assert float(a["loss_audio"]) == pytest.approx(float(b["loss_audio"]), abs=1e-6)


def test_model_without_video_has_no_frame_parameters_and_runs():
    cfg = model_cfg(video="none")
    model = InteractionModel(cfg)
    assert not any("frame" in n for n, _ in model.named_parameters())
    out = model(random_batch(cfg), "padded")
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_grouped_mm_probe_runs_with_autograd_even_when_asked_from_inference(monkeypatch):
    """A streaming session asks first under inference mode; a probe that ran there would fail for want
    of autograd and send every MoE layer to the slow loop path for the rest of the process."""
    import microturn.train.model as model_mod

    seen = {}

    def probe(device, d_model, hidden):
        seen.update(grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled())

    monkeypatch.setattr(model_mod, "_GROUPED_OK", {})
    monkeypatch.setattr(model_mod, "_probe_grouped_mm", probe)
    if not hasattr(torch, "_grouped_mm"):  # an older torch: the probe is only reached where it exists
        monkeypatch.setattr(torch, "_grouped_mm", None, raising=False)
    with torch.inference_mode():
        assert grouped_mm_supported(torch.device("cuda"), 8, 8) is True
    assert seen == {"grad": True, "inference": False}


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_group_rows_given_the_slot_count_place_slots_as_without_it(counts):
    counts_E = torch.tensor(counts)
    for a, b in zip(_group_rows(counts_E, 4), _group_rows(counts_E, 4, sum(counts))):
        assert torch.equal(a, b)
