"""The interaction model: a causal transformer over 200 ms chunks whose feed-forward layers are a
mixture of experts, with a small depth head over the codebooks of each codec frame (``model.audio:
codes``) or linear heads that predict all dMel channels of a frame in parallel (``model.audio: dmel``).
Video enters as frame-codec tokens (``model.video: tokens``), as 40x40 pixel patches through a small
hMLP (``pixels``: (Y/40) * (X/40) positions per chunk, a learned "no frame" input for chunks without
one), or not at all (``none``). ``microturn.train.realtime`` streams the same model with a KV cache.

Sequence layout (one row of the batch). Each codec frame of a speaker stream is ONE position: the
embeddings of its K codebooks and of its text token are summed (Moshi-style). Per chunk c:

    [ model frames of c (15) | video tokens of c (P / video_pool) | user frames of c (15) ]

and the whole sequence is ``[BOS, chunk 0, chunk 1, ...]`` (the last chunk's video and user block is
dropped: nothing is predicted from it). The model's frames of chunk c come *before* the user's audio
and video of chunk c, so what the model says in chunk c depends only on what it heard and saw up to
chunk c-1: one chunk (200 ms) of latency, as in a real-time system that consumes and emits chunks.

Prediction. The hidden state at the position just before model frame f (the previous model frame, or
the last user frame of the previous chunk, or BOS) feeds the depth head, which predicts, in order, the
model's text token of frame f and its codebooks 0..K-1 (teacher-forced, causal over those K+1 steps);
in the dMel variant the same state predicts the text token and the M channels' bins at once.
With dMel a frame's position sums the embeddings of its M channels' bins (one table per role, row
m * (B + 1) + bin, bin B = absent) instead of its codebooks.

Shapes use suffixes: B batch, C chunks, F codec frames (C * 15), K codebooks, M mel channels (X: K or M),
k the router's top_k choices, P video tokens per chunk (frame_tokens; frame_tokens / video_pool once
pooled; pixel patches with pixels), L sequence
positions, D model width (depth_d_model inside the depth head), H attention heads, d head width,
R rotary frequencies (d / 2), E experts, T tokens routed (B * L), S depth-head steps (K + 1), V vocabulary.
N counts rows: in the MoE the routed slots (T * top_k, expert-sorted), in the depth head and the losses
the frames of the batch (B * F). Two names reuse letters: ``counts_LE`` has one row per layer
(L = n_layers), and the expert weights, [E, out, in], are ``w1_EFD`` (D -> gate and up: F here is
2 * expert_hidden) and ``w2_EDH`` (H = expert_hidden -> D); they are checkpoint keys, so they keep their names.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from microturn.clock import FRAMES_PER_CHUNK
from microturn.train.config import ModelConfig

log = logging.getLogger(__name__)

GROUP_ALIGN = 16  # rows per expert group are padded to this for torch._grouped_mm (alignment, empty groups)


# ---------------------------------------------------------------- attention


def rope_at(positions_L: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim / 2] at absolute positions (streaming appends at the end of a cache)."""
    device = positions_L.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles_LR = positions_L.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles_LR.cos(), angles_LR.sin()


def apply_rope(x_BHLd: torch.Tensor, cos_LR: torch.Tensor, sin_LR: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLd.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos_LR - x2 * sin_LR, x1 * sin_LR + x2 * cos_LR], dim=-1)
    return out.type_as(x_BHLd)


class KVCache:
    """Append-only keys and values of every layer, [B, H, L, d] each, for streaming inference.

    Keys are stored rotated (RoPE at their absolute positions), so dropping old positions (``evict``)
    leaves the kept ones valid: attention scores depend only on position differences. Storage grows by
    doubling and is written in place: an append copies only the new positions.
    """

    def __init__(self, n_layers: int):
        self.kv: list[Optional[torch.Tensor]] = [None] * n_layers  # [2, B, H, capacity, d] per layer
        self.length = 0
        # Slot mode (a one-position step, ``RealtimeSession``'s trunk step): the position is written at
        # this device-held index, the caller advances ``length``, and attention reads the whole storage
        # with the keys past the slot masked. Nothing then depends on host values, so a CUDA graph can
        # replay the step; ``generation`` counts reallocations, after which a captured graph is stale.
        self.slot: Optional[torch.Tensor] = None
        self.generation = 0

    @property
    def capacity(self) -> int:
        return 0 if self.kv[0] is None else self.kv[0].shape[3]

    def reserve(self, positions: int) -> None:
        """Storage for at least ``positions`` positions in every layer already holding some."""
        for layer, buf in enumerate(self.kv):
            if buf is not None and buf.shape[3] < positions:
                self._grow(layer, buf, positions, self.length)

    def _grow(self, layer: int, buf: torch.Tensor, capacity: int, kept: int) -> torch.Tensor:
        grown = buf.new_zeros(*buf.shape[:3], capacity, buf.shape[4])
        grown[:, :, :, :kept] = buf[:, :, :, :kept]
        self.kv[layer] = grown
        self.generation += 1
        return grown

    def append(self, layer: int, k_BHLd: torch.Tensor, v_BHLd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the L new positions after the cached ones (the first layer advances ``length``);
        returns the layer's keys and values so far, views [B, H, length, d]. In slot mode: the one new
        position at ``slot``, and the whole storage returned."""
        if self.slot is not None:
            buf = self.kv[layer]
            buf[0].index_copy_(2, self.slot, k_BHLd)
            buf[1].index_copy_(2, self.slot, v_BHLd)
            return buf[0], buf[1]
        start = self.length if layer == 0 else self.length - k_BHLd.shape[2]
        end = start + k_BHLd.shape[2]
        buf = self.kv[layer]
        if buf is None:
            buf = self.kv[layer] = k_BHLd.new_zeros(2, *k_BHLd.shape[:2], max(64, 2 * end), k_BHLd.shape[3])
        elif buf.shape[3] < end:
            buf = self._grow(layer, buf, max(64, 2 * end), start)
        buf[0, :, :, start:end] = k_BHLd
        buf[1, :, :, start:end] = v_BHLd
        if layer == 0:
            self.length = end
        return buf[0, :, :, :end], buf[1, :, :, :end]

    def evict(self, start: int, stop: int) -> None:
        """Drop cached positions [start, stop) of every layer (the later ones move down)."""
        kept = self.length - stop
        for buf in self.kv:
            if buf is not None:
                buf[:, :, :, start : start + kept] = buf[:, :, :, stop : self.length].clone()
        self.length -= stop - start


def _streaming_attention(device: torch.device) -> Any:
    """Attention kernels for a growing cache: every call has a new key length, and cuDNN's attention
    builds an execution plan per shape (on an H200, streaming turns slowed from ~0.2 s to 1-1.5 s as
    the cache grew). Flash, memory-efficient and math kernels have no per-shape set-up."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, x_BLD: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
        cache: Optional[tuple[KVCache, int]] = None,
    ) -> torch.Tensor:  # fmt: skip
        """Causal self-attention; with ``cache`` = (cache, layer) the L new positions are appended to the
        cached ones and attend to all of them (each to those before it and itself)."""
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            y_BHLd = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            store = cache[0]
            k, v = store.append(cache[1], k, v)
            with _streaming_attention(q.device):
                if store.slot is not None:  # the whole storage: keys past the slot are stale or empty
                    mask_1K = (torch.arange(k.shape[2], device=q.device) <= store.slot)[None, :]
                    y_BHLd = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_1K)
                elif L == 1:  # the newest position sees every cached key: no mask
                    y_BHLd = F.scaled_dot_product_attention(q, k, v)
                else:  # query i sits at cache position Lk - L + i: it sees every key up to there
                    Lk = k.shape[2]
                    mask_LK = torch.arange(Lk, device=q.device)[None, :] <= torch.arange(Lk - L, Lk, device=q.device)[:, None]
                    y_BHLd = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LK)
        return self.out(y_BHLd.transpose(1, 2).reshape(B, L, D))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


# ---------------------------------------------------------------- mixture of experts


def grouped_mm_supported(device: torch.device, d_model: int = 64, hidden: int = 64) -> bool:
    """Does ``torch._grouped_mm`` run (forward and backward) here? It is CUDA-only in torch 2.8 (bf16,
    sm90+); on CPU it raises NotImplementedError. Probed once per (device, shape)."""
    key = (str(device), d_model, hidden)
    if key in _GROUPED_OK:
        return _GROUPED_OK[key]
    ok = False
    if hasattr(torch, "_grouped_mm") and device.type == "cuda":
        try:  # the probe needs autograd, even when first asked from inference (a streaming session)
            with torch.inference_mode(False), torch.enable_grad():
                _probe_grouped_mm(device, d_model, hidden)
            ok = True
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            log.warning("torch._grouped_mm unavailable on %s (%s); experts use the loop path", device, exc)
    _GROUPED_OK[key] = ok
    return ok


def _probe_grouped_mm(device: torch.device, d_model: int, hidden: int) -> None:
    a = torch.randn(2 * GROUP_ALIGN, d_model, device=device, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(2, d_model, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    offs = torch.tensor([GROUP_ALIGN, 2 * GROUP_ALIGN], device=device, dtype=torch.int32)
    torch._grouped_mm(a, b, offs=offs).float().sum().backward()


_GROUPED_OK: dict[tuple[str, int, int], bool] = {}


def _group_rows(counts_E: torch.Tensor, align: int, slots: Optional[int] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Where each expert-sorted slot goes in an aligned buffer.

    Returns (dest_N, offs_E, starts_E): ``dest_N[i]`` is the buffer row of sorted slot i, ``offs_E`` the
    cumulative end row of each expert group (int32, as torch._grouped_mm wants), ``starts_E`` its first row.
    Every group is padded to a multiple of ``align`` rows, and to at least ``align`` (no empty groups).
    """
    sizes_E = torch.clamp((counts_E + align - 1) // align, min=1) * align
    offs_E = torch.cumsum(sizes_E, 0)
    starts_E = offs_E - sizes_E
    slot_starts_E = torch.cumsum(counts_E, 0) - counts_E
    # output_size: the slots are T*k whatever the routing; without it CUDA reads counts_E.sum() back
    expert_N = torch.repeat_interleave(torch.arange(len(counts_E), device=counts_E.device), counts_E,
                                       output_size=slots)  # fmt: skip
    rank_N = torch.arange(len(expert_N), device=counts_E.device) - slot_starts_E[expert_N]
    return starts_E[expert_N] + rank_N, offs_E.to(torch.int32), starts_E


def experts_loop(x_ND: torch.Tensor, counts: list[int], w1_EFD: torch.Tensor, w2_EDH: torch.Tensor) -> torch.Tensor:
    """Reference path: one SwiGLU per expert over its contiguous slice of the expert-sorted slots."""
    outs, start = [], 0
    for e, n in enumerate(counts):
        x = x_ND[start : start + n]
        gate, up = (x @ w1_EFD[e].t()).chunk(2, dim=-1)
        outs.append((F.silu(gate) * up) @ w2_EDH[e].t())
        start += n
    return torch.cat(outs, dim=0) if outs else x_ND.new_zeros(0, w2_EDH.shape[1])


def experts_padded(x_ND: torch.Tensor, counts_E: torch.Tensor, w1_EFD: torch.Tensor, w2_EDH: torch.Tensor) -> torch.Tensor:
    """Portable grouped path: every group padded to the largest, one batched matmul per projection."""
    E = len(counts_E)
    rows = max(1, int(counts_E.max()))
    dest_N, _, starts_E = _group_rows(counts_E, rows, x_ND.shape[0])
    # with align = max count every group is exactly `rows` long, so the buffer reshapes to [E, rows, D]
    buf = x_ND.new_zeros(E * rows, x_ND.shape[1]).index_copy(0, dest_N, x_ND)
    gate, up = torch.bmm(buf.view(E, rows, -1), w1_EFD.transpose(1, 2)).chunk(2, dim=-1)
    out = torch.bmm(F.silu(gate) * up, w2_EDH.transpose(1, 2)).reshape(E * rows, -1)
    return out[dest_N]


def experts_grouped(x_ND: torch.Tensor, counts_E: torch.Tensor, w1_EFD: torch.Tensor, w2_EDH: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm path (CUDA, bf16). The buffer size is a static bound: no host sync."""
    E = len(counts_E)
    dest_N, offs_E, _ = _group_rows(counts_E, GROUP_ALIGN, x_ND.shape[0])
    total = x_ND.shape[0] + E * GROUP_ALIGN  # >= offs_E[-1] whatever the counts
    buf = x_ND.new_zeros(total, x_ND.shape[1], dtype=torch.bfloat16).index_copy(0, dest_N, x_ND.to(torch.bfloat16))
    h = torch._grouped_mm(buf, w1_EFD.to(torch.bfloat16).transpose(1, 2), offs=offs_E)
    gate, up = h.chunk(2, dim=-1)
    out = torch._grouped_mm(F.silu(gate) * up, w2_EDH.to(torch.bfloat16).transpose(1, 2), offs=offs_E)
    return out[dest_N].to(x_ND.dtype)


class MoE(nn.Module):
    """Token-choice top-k routing over E SwiGLU experts, dropless.

    Balancing: ``aux_free`` adds a per-expert bias to the scores used for *selection only* (gates use
    the raw scores); the bias is nudged toward equal load before each optimizer step
    (``update_bias``). ``aux_loss`` uses the Switch-style loss E * sum_e f_e * p_e instead. Both add
    the router z-loss mean(logsumexp(logits)^2), which keeps router logits small.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, Hx, E = cfg.d_model, cfg.expert_hidden, cfg.n_experts
        self.top_k = cfg.top_k
        self.n_experts = E
        self.balance = cfg.balance
        self.dispatch = cfg.dispatch
        self.router = nn.Linear(D, E, bias=False)
        self.w1_EFD = nn.Parameter(torch.empty(E, 2 * Hx, D))  # gate and up projections, [out, in]
        self.w2_EDH = nn.Parameter(torch.empty(E, D, Hx))  # down projection, [out, in]
        self.register_buffer("expert_bias", torch.zeros(E))
        nn.init.normal_(self.w1_EFD, std=D**-0.5)
        nn.init.normal_(self.w2_EDH, std=Hx**-0.5)

    def resolve_dispatch(self, device: torch.device) -> str:
        if self.dispatch != "auto":
            return self.dispatch
        D, Hx = self.w1_EFD.shape[2], self.w2_EDH.shape[2]
        return "grouped" if grouped_mm_supported(device, D, Hx) else "loop"

    def forward(self, x_BLD: torch.Tensor, dispatch: Optional[str] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, L, D = x_BLD.shape
        x_TD = x_BLD.reshape(-1, D)
        logits_TE = self.router(x_TD).float()
        scores_TE = logits_TE.softmax(dim=-1)
        select_TE = scores_TE + self.expert_bias if self.balance == "aux_free" else scores_TE
        _, experts_Tk = select_TE.topk(self.top_k, dim=-1)
        gates_Tk = scores_TE.gather(1, experts_Tk)
        gates_Tk = gates_Tk / gates_Tk.sum(dim=-1, keepdim=True)
        # a scatter, not bincount: on CUDA, bincount reads the largest index back to the host (a sync per layer)
        flat_N = experts_Tk.reshape(-1)
        counts_E = flat_N.new_zeros(self.n_experts).index_add_(0, flat_N, torch.ones_like(flat_N))

        # dropless dispatch: sort the T*k (token, expert) slots by expert, run each group, scatter back
        order_N = torch.argsort(experts_Tk.reshape(-1), stable=True)
        token_N = order_N // self.top_k
        x_ND = x_TD[token_N]
        mode = dispatch or self.resolve_dispatch(x_BLD.device)
        if mode == "grouped":
            y_ND = experts_grouped(x_ND, counts_E, self.w1_EFD, self.w2_EDH)
        elif mode == "padded":
            y_ND = experts_padded(x_ND, counts_E, self.w1_EFD, self.w2_EDH)
        elif mode == "loop":
            y_ND = experts_loop(x_ND, counts_E.tolist(), self.w1_EFD, self.w2_EDH)
        else:
            raise ValueError(f"unknown expert dispatch {mode!r}")
        y_ND = y_ND * gates_Tk.reshape(-1)[order_N, None].to(y_ND.dtype)
        y_TD = torch.zeros_like(x_TD, dtype=y_ND.dtype).index_add_(0, token_N, y_ND)

        z_loss = torch.logsumexp(logits_TE, dim=-1).square().mean()
        load_E = counts_E.float() / counts_E.sum()
        aux_loss = self.n_experts * (load_E * scores_TE.mean(dim=0)).sum()
        stats = {"z_loss": z_loss, "aux_loss": aux_loss, "counts_E": counts_E.detach()}
        return y_TD.view(B, L, D).type_as(x_BLD), stats

    @torch.no_grad()
    def update_bias(self, counts_E: torch.Tensor, rate: float) -> None:
        """Aux-loss-free balancing: raise the bias of under-loaded experts, lower the over-loaded ones."""
        counts = counts_E.float()
        delta = rate * torch.sign(counts.mean() - counts)
        self.expert_bias.add_(delta - delta.mean())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.moe = MoE(cfg)

    def forward(self, x_BLD, rope, dispatch=None, cache=None):
        x_BLD = x_BLD + self.attn(self.norm1(x_BLD), rope, cache)
        y_BLD, stats = self.moe(self.norm2(x_BLD), dispatch)
        return x_BLD + y_BLD, stats


class DenseBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, 4 * d_model)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.norm1(x), rope, cache)
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------- depth head


class DepthHead(nn.Module):
    """Per codec frame: predicts the text token, then codebook 0..K-1, each step seeing the earlier ones.

    Step 0's input is the temporal hidden state; step s > 0 adds the embedding of the true token of
    step s-1 (text for s = 1, codebook s-2 after). Frames are independent rows of a batch N = B * F.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        Dd, K = cfg.depth_d_model, cfg.codebooks
        self.K = K
        self.audio_vocab = cfg.audio_vocab
        self.in_proj = nn.Linear(cfg.d_model, Dd, bias=False)
        self.step_SD = nn.Parameter(torch.zeros(K + 1, Dd))
        self.text_in = nn.Embedding(cfg.text_vocab + 1, Dd)
        self.codes_in = nn.Embedding(max(1, K - 1) * (cfg.audio_vocab + 1), Dd)  # codebooks 0..K-2 as inputs
        self.blocks = nn.ModuleList([DenseBlock(Dd, cfg.depth_heads) for _ in range(cfg.depth_layers)])
        self.norm = nn.RMSNorm(Dd)
        self.text_out = nn.Linear(Dd, cfg.text_vocab, bias=False)
        self.audio_out_KVD = nn.Parameter(torch.empty(K, cfg.audio_vocab, Dd))
        nn.init.normal_(self.audio_out_KVD, std=Dd**-0.5)
        nn.init.normal_(self.step_SD, std=0.02)

    def forward(self, h_ND: torch.Tensor, text_N: torch.Tensor, codes_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K = self.K
        steps = [self.in_proj(h_ND)]
        steps.append(steps[0] + self.text_in(text_N))
        if K > 1:
            offsets_K = torch.arange(K - 1, device=codes_NK.device) * (self.audio_vocab + 1)
            codes_emb_NKD = self.codes_in(codes_NK[:, : K - 1] + offsets_K)
            steps.extend((steps[0][:, None] + codes_emb_NKD).unbind(dim=1))
        x_NSD = torch.stack(steps, dim=1) + self.step_SD
        for block in self.blocks:
            x_NSD = block(x_NSD)
        x_NSD = self.norm(x_NSD)
        text_logits_NV = self.text_out(x_NSD[:, 0])
        audio_logits_NKV = torch.einsum("nkd,kvd->nkv", x_NSD[:, 1:], self.audio_out_KVD)
        return text_logits_NV, audio_logits_NKV

    def generate(self, h_ND: torch.Tensor, noise_NSV: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Sample a frame step by step: the text token, then codebook 0..K-1, each drawn from the logits
        of a step that sees the tokens drawn before it. The logits are ``forward``'s given those tokens
        (its steps are causal), at a fraction of the work: each step runs one new position against the
        cached keys of the earlier ones, and computes only the logits it draws from.

        ``noise_NSV``: [N, K + 1, >= max vocab] Gumbel noise times the temperature (step s draws
        argmax(logits + noise[:, s]), a sample of softmax(logits / T)); None: greedy. The shapes never
        depend on the values, and nothing is read back to the host, so a CUDA graph can replay it.
        Returns (text [N], codes [N, K], text logits [N, V_text], audio logits [N, K, V_audio])."""
        K, V = self.K, self.audio_vocab
        cache = KVCache(len(self.blocks))
        base_ND = self.in_proj(h_ND)
        x_ND = base_ND + self.step_SD[0]
        tokens, logits = [], []
        for s in range(K + 1):
            x_N1D = x_ND[:, None]
            for i, block in enumerate(self.blocks):
                x_N1D = block(x_N1D, None, (cache, i))
            y_ND = self.norm(x_N1D[:, 0])
            logits_NV = self.text_out(y_ND) if s == 0 else y_ND @ self.audio_out_KVD[s - 1].t()
            drawn = logits_NV.float() if noise_NSV is None else logits_NV.float() + noise_NSV[:, s, : logits_NV.shape[-1]]
            token_N = drawn.argmax(dim=-1)
            tokens.append(token_N)
            logits.append(logits_NV)
            if s == 0:
                x_ND = base_ND + self.text_in(token_N) + self.step_SD[1]
            elif s < K:  # codebook s-1 is the input of step s+1 (the last codebook is no one's input)
                x_ND = base_ND + self.codes_in(token_N + (s - 1) * (V + 1)) + self.step_SD[s + 1]
        return tokens[0], torch.stack(tokens[1:], dim=1), logits[0], torch.stack(logits[1:], dim=1)


# ---------------------------------------------------------------- video in: pixels


def _hmlp_widths(d_model: int) -> tuple[int, int]:
    return max(16, d_model // 4), max(16, d_model // 4)


class PatchHMLP(nn.Module):
    """Hierarchical MLP over pixel patches (hMLP stem): 4x4 pixels -> linear, norm, GELU; 2x2 of those
    merged -> linear, norm, GELU; (patch/8)^2 of those merged -> linear to D. Every stage is a linear map
    of disjoint pixels (a convolution with stride = kernel), so patches never mix.

    uint8 [N, Y, X, 3] -> [N, (Y/patch) * (X/patch), D], patches in row-major order.
    """

    def __init__(self, d_model: int, patch: int):
        super().__init__()
        if patch % 8:
            raise ValueError(f"pixel_patch ({patch}) must be a multiple of 8")
        c1, c2 = _hmlp_widths(d_model)
        self.stage1 = nn.Conv2d(3, c1, 4, stride=4)
        self.norm1 = nn.LayerNorm(c1)
        self.stage2 = nn.Conv2d(c1, c2, 2, stride=2)
        self.norm2 = nn.LayerNorm(c2)
        self.stage3 = nn.Conv2d(c2, d_model, patch // 8, stride=patch // 8)

    @staticmethod
    def _norm_gelu(x_NCHW: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return F.gelu(norm(x_NCHW.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

    def forward(self, pixels_NYX3: torch.Tensor) -> torch.Tensor:
        x = pixels_NYX3.permute(0, 3, 1, 2).to(self.stage1.weight.dtype) / 127.5 - 1.0
        x = self._norm_gelu(self.stage1(x), self.norm1)
        x = self._norm_gelu(self.stage2(x), self.norm2)
        return self.stage3(x).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Layout:
    """Positions of one example's sequence (see the module docstring)."""

    chunks: int
    video_positions: int  # per chunk, after pooling (0 without video)

    @property
    def block(self) -> int:
        return 2 * FRAMES_PER_CHUNK + self.video_positions

    @property
    def length(self) -> int:
        # BOS + all chunks, minus the last chunk's video + user block (nothing is predicted from it)
        return 1 + self.chunks * self.block - (self.video_positions + FRAMES_PER_CHUNK)

    def predictor_positions(self, device: torch.device) -> torch.Tensor:
        """Sequence position whose hidden state predicts each model frame, [F]."""
        c = torch.arange(self.chunks, device=device)[:, None]
        j = torch.arange(FRAMES_PER_CHUNK, device=device)[None, :]
        return (1 + c * self.block + j - 1).reshape(-1)


def video_positions(cfg: ModelConfig) -> int:
    """Sequence positions of video per chunk: pooled frame tokens, pixel patches, or none."""
    if cfg.video == "tokens":
        return (cfg.frame_tokens or 0) // cfg.video_pool
    if cfg.video == "pixels":
        return ((cfg.pixel_size or 0) // (cfg.pixel_patch or 1)) ** 2
    return 0


def _required_sizes(cfg: ModelConfig) -> tuple[str, ...]:
    audio = ("audio_vocab",) if cfg.audio == "codes" else ("dmel_channels", "dmel_bins")
    video = {"tokens": ("frame_vocab", "frame_tokens"), "pixels": ("pixel_size", "pixel_patch"), "none": ()}
    return ("text_vocab", *audio, *video[cfg.video])


class InteractionModel(nn.Module):
    """The temporal MoE trunk over the interleaved sequence, with the variant's inputs and heads:
    audio ``codes`` (K codebooks summed per frame; depth head out) or ``dmel`` (M channels' bin
    embeddings summed per frame; all channels predicted in parallel), video ``tokens`` (frame-codec
    tokens), ``pixels`` (40x40 patches through an hMLP) or ``none``. Batch keys: see
    ``examples.BatchBuilder``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        for name in _required_sizes(cfg):
            if getattr(cfg, name) is None:
                raise ValueError(f"model.{name} must be resolved (from dataset.json or the config) before building")
        if cfg.video == "tokens" and cfg.frame_tokens % cfg.video_pool:  # type: ignore[operator]
            raise ValueError(f"frame_tokens ({cfg.frame_tokens}) must be divisible by video_pool ({cfg.video_pool})")
        self.cfg = cfg
        D = cfg.d_model
        self.bos_D = nn.Parameter(torch.zeros(D))
        self.kind_3D = nn.Parameter(torch.zeros(3, D))  # model frame, video, user frame
        self.model_text_in = nn.Embedding(cfg.text_vocab + 1, D)  # type: ignore[operator]
        self.user_text_in = nn.Embedding(cfg.text_vocab + 1, D)  # type: ignore[operator]
        self._init_audio(cfg)
        self._init_video(cfg)  # absent without video: DDP insists that every parameter gets a gradient
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.RMSNorm(D)
        for p in (self.bos_D, self.kind_3D, self.model_text_in.weight, self.user_text_in.weight):
            nn.init.normal_(p, std=0.02)

    def _init_audio(self, cfg: ModelConfig) -> None:
        D = cfg.d_model
        if cfg.audio == "codes":
            K, Va = cfg.codebooks, cfg.audio_vocab
            # one table per role, K codebooks stacked (index k * (Va + 1) + code); row Va = absent
            self.model_codes_in = nn.Embedding(K * (Va + 1), D)  # type: ignore[operator]
            self.user_codes_in = nn.Embedding(K * (Va + 1), D)  # type: ignore[operator]
            self.depth = DepthHead(cfg)
            self.register_buffer("codebook_offsets_K", torch.arange(K) * (Va + 1), persistent=False)
            tables = (self.model_codes_in, self.user_codes_in)
        else:
            M, Bn = cfg.dmel_channels, cfg.dmel_bins
            # one table per role, M channels stacked (index m * (B + 1) + bin); row B = absent; summed per frame
            self.model_dmel_in = nn.EmbeddingBag(M * (Bn + 1), D, mode="sum")  # type: ignore[operator]
            self.user_dmel_in = nn.EmbeddingBag(M * (Bn + 1), D, mode="sum")  # type: ignore[operator]
            self.dmel_out = nn.Linear(D, M * Bn, bias=False)  # type: ignore[operator]
            self.text_out = nn.Linear(D, cfg.text_vocab, bias=False)  # type: ignore[arg-type]
            offsets_M = torch.arange(M) * (Bn + 1)  # type: ignore[operator]
            self.register_buffer("channel_offsets_M", offsets_M, persistent=False)
            tables = (self.model_dmel_in, self.user_dmel_in)
        for emb in tables:
            nn.init.normal_(emb.weight, std=0.02)

    def _init_video(self, cfg: ModelConfig) -> None:
        D, P = cfg.d_model, video_positions(cfg)
        if cfg.video == "tokens":
            self.frame_in = nn.Embedding(cfg.frame_vocab + 1, D)  # type: ignore[operator]
            self.frame_pos_PD = nn.Parameter(torch.zeros(cfg.frame_tokens, D))  # type: ignore[arg-type]
            nn.init.normal_(self.frame_in.weight, std=0.02)
            nn.init.normal_(self.frame_pos_PD, std=0.02)
        elif cfg.video == "pixels":
            self.pixel_in = PatchHMLP(D, cfg.pixel_patch)  # type: ignore[arg-type]
            self.patch_pos_PD = nn.Parameter(torch.zeros(P, D))
            self.no_frame_D = nn.Parameter(torch.zeros(D))  # a chunk without a frame
            nn.init.normal_(self.patch_pos_PD, std=0.02)
            nn.init.normal_(self.no_frame_D, std=0.02)

    def layout(self, chunks: int) -> Layout:
        return Layout(chunks, video_positions(self.cfg))

    # -- inputs

    @property
    def audio_key(self) -> str:
        return "codes" if self.cfg.audio == "codes" else "dmel"

    def embed_frames(self, audio_BXF: torch.Tensor, text_BF: torch.Tensor, role: str) -> torch.Tensor:
        """[B, F, D]: one position per frame of ``role`` ("model" or "user"): its codebooks' or dMel
        channels' embeddings, its text token's and the role's kind, summed."""
        audio_BXF = audio_BXF.long()
        B, X, Fr = audio_BXF.shape
        if self.cfg.audio == "codes":
            table = self.model_codes_in if role == "model" else self.user_codes_in
            audio_BFD = table(audio_BXF + self.codebook_offsets_K[None, :, None]).sum(dim=1)
        else:
            table = self.model_dmel_in if role == "model" else self.user_dmel_in
            idx_NM = (audio_BXF + self.channel_offsets_M[None, :, None]).transpose(1, 2).reshape(B * Fr, X)
            audio_BFD = table(idx_NM).view(B, Fr, -1)
        text_in = self.model_text_in if role == "model" else self.user_text_in
        return audio_BFD + text_in(text_BF.long()) + self.kind_3D[0 if role == "model" else 2]

    def embed_video(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, C, V, D]: the video positions of each chunk (frames [B, C, P] or pixels [B, C, Y, X, 3]
        with has_frame [B, C])."""
        if self.cfg.video == "tokens":
            frames_BCPD = self.frame_in(batch["frames"].long()) + self.frame_pos_PD
            pool = self.cfg.video_pool
            if pool > 1:
                frames_BCPD = frames_BCPD.view(*frames_BCPD.shape[:2], -1, pool, frames_BCPD.shape[-1]).mean(dim=3)
            return frames_BCPD + self.kind_3D[1]
        pixels_BCYX3 = batch["pixels"]
        B, C = pixels_BCYX3.shape[:2]
        patches_NPD = self.pixel_in(pixels_BCYX3.reshape(B * C, *pixels_BCYX3.shape[2:]))
        patches_BCPD = patches_NPD.view(B, C, -1, self.cfg.d_model)
        has_BC11 = batch["has_frame"].bool()[:, :, None, None]
        patches_BCPD = torch.where(has_BC11, patches_BCPD, self.no_frame_D.to(patches_BCPD.dtype))
        return patches_BCPD + self.patch_pos_PD + self.kind_3D[1]

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The interleaved input sequence x_BLD."""
        key = self.audio_key
        model_BFD = self.embed_frames(batch[f"model_{key}"], batch["model_text"], "model")
        user_BFD = self.embed_frames(batch[f"user_{key}"], batch["user_text"], "user")
        B, Fr, D = model_BFD.shape
        C = Fr // FRAMES_PER_CHUNK
        parts = [model_BFD.view(B, C, FRAMES_PER_CHUNK, D)]
        if self.cfg.video != "none":
            parts.append(self.embed_video(batch))
        parts.append(user_BFD.view(B, C, FRAMES_PER_CHUNK, D))
        x_BLD = torch.cat(parts, dim=2).reshape(B, -1, D)
        x_BLD = torch.cat([self.bos_D.expand(B, 1, -1), x_BLD], dim=1)
        return x_BLD[:, : self.layout(C).length]

    # -- the trunk

    def trunk(
        self, x_BLD: torch.Tensor, dispatch: Optional[str] = None, *, cache: Optional[KVCache] = None,
        start: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """h_BLD (normed) of the L positions ``x_BLD`` at absolute positions start.., plus router statistics;
        with ``cache`` they are appended to it (streaming). ``start`` may be a device tensor [1] (a step
        replayed from a CUDA graph)."""
        cfg = self.cfg
        B, L, D = x_BLD.shape
        rope = rope_at(torch.arange(L, device=x_BLD.device) + start, D // cfg.n_heads, cfg.rope_theta)
        z_loss = x_BLD.new_zeros((), dtype=torch.float32)
        aux_loss = x_BLD.new_zeros((), dtype=torch.float32)
        counts = []
        for i, block in enumerate(self.blocks):
            x_BLD, stats = block(x_BLD, rope, dispatch, None if cache is None else (cache, i))
            z_loss = z_loss + stats["z_loss"]
            aux_loss = aux_loss + stats["aux_loss"]
            counts.append(stats["counts_E"])
        n_layers = len(self.blocks)
        return self.norm(x_BLD), {"z_loss": z_loss / n_layers, "aux_loss": aux_loss / n_layers,
                                  "counts_LE": torch.stack(counts)}  # fmt: skip

    def frame_states(
        self, batch: dict[str, torch.Tensor], dispatch: Optional[str] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """h_BFD: the temporal state that predicts each model frame, plus router statistics."""
        h_BLD, router = self.trunk(self.embed(batch), dispatch)
        chunks = batch["model_text"].shape[1] // FRAMES_PER_CHUNK
        return h_BLD[:, self.layout(chunks).predictor_positions(h_BLD.device)], router

    # -- outputs

    def dmel_logits(self, h_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dMel variant: text logits [N, V] and dMel logits [N, M, B] of the frames h_ND predicts."""
        N = h_ND.shape[0]
        return self.text_out(h_ND), self.dmel_out(h_ND).view(N, self.cfg.dmel_channels, self.cfg.dmel_bins)

    def frame_logits(
        self, batch: dict[str, torch.Tensor], dispatch: Optional[str] = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Logits of every model frame, teacher-forced: text [B, F, V] and codes [B, F, K, V] (the depth
        head over the true tokens) or dmel [B, F, M, B]; plus the router statistics."""
        h_BFD, router = self.frame_states(batch, dispatch)
        B, Fr, D = h_BFD.shape
        text = batch["model_text"].long().reshape(-1)
        if self.cfg.audio == "codes":
            codes_NK = batch["model_codes"].long().transpose(1, 2).reshape(B * Fr, -1)
            text_NV, audio_NXV = self.depth(h_BFD.reshape(-1, D), text, codes_NK)
        else:
            text_NV, audio_NXV = self.dmel_logits(h_BFD.reshape(-1, D))
        return {"text": text_NV.view(B, Fr, -1), self.audio_key: audio_NXV.view(B, Fr, *audio_NXV.shape[1:])}, router

    def forward(self, batch: dict[str, torch.Tensor], dispatch: Optional[str] = None) -> dict[str, torch.Tensor]:
        """Losses per stream (mean over valid frames), router losses and expert counts [n_layers, E].

        codes: loss_text, loss_audio (mean over codebooks), loss_audio_cb0; dmel: loss_text, loss_dmel
        (mean cross-entropy over channels and valid frames)."""
        cfg = self.cfg
        logits, router = self.frame_logits(batch, dispatch)
        key = self.audio_key
        valid_N = batch["valid"].reshape(-1).bool()
        ignore = -100
        text_tgt_N = torch.where(valid_N, batch["model_text"].long().reshape(-1), ignore)
        loss_text = F.cross_entropy(logits["text"].flatten(0, 1).float(), text_tgt_N, ignore_index=ignore)
        audio_NXV = logits[key].flatten(0, 1)
        N, X, V = audio_NXV.shape
        audio_tgt_NX = torch.where(valid_N[:, None], batch[f"model_{key}"].long().transpose(1, 2).reshape(N, X), ignore)
        loss_NX = F.cross_entropy(audio_NXV.float().reshape(N * X, V), audio_tgt_NX.reshape(-1), ignore_index=ignore,
                                  reduction="none").view(N, X)  # fmt: skip
        loss_X = loss_NX.sum(dim=0) / valid_N.sum().clamp(min=1)
        loss_audio = loss_X.mean()
        z_loss, aux_loss = router["z_loss"], router["aux_loss"]
        loss = cfg.text_loss_weight * loss_text + cfg.audio_loss_weight * loss_audio + cfg.z_loss_coef * z_loss
        if cfg.balance == "aux_loss":
            loss = loss + cfg.aux_loss_coef * aux_loss
        streams = {"loss_audio": loss_audio.detach(), "loss_audio_cb0": loss_X[0].detach()} if key == "codes" else {
            "loss_dmel": loss_audio.detach()}  # fmt: skip
        return {
            "loss": loss,
            "loss_text": loss_text.detach(),
            **streams,
            "z_loss": z_loss.detach(),
            "aux_loss": aux_loss.detach(),
            "counts_LE": router["counts_LE"],
            "valid_frames": valid_N.sum().detach(),
        }

    def update_router_biases(self, counts_LE: torch.Tensor) -> None:
        """Aux-loss-free balancing step (call before optimizer.step with counts summed over ranks)."""
        if self.cfg.balance != "aux_free" or self.cfg.bias_update_rate == 0:
            return
        for block, counts_E in zip(self.blocks, counts_LE):
            block.moe.update_bias(counts_E, self.cfg.bias_update_rate)


def loss_keys(cfg: ModelConfig) -> tuple[str, ...]:
    """The per-stream losses ``InteractionModel.forward`` returns for this variant (logged and evaluated)."""
    streams = ("loss_audio", "loss_audio_cb0") if cfg.audio == "codes" else ("loss_dmel",)
    return ("loss", "loss_text", *streams)


# ---------------------------------------------------------------- sizes and FLOPs


def _head_sizes(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters of the per-frame output head, its input embeddings) of the audio variant."""
    D, V = cfg.d_model, cfg.text_vocab or 0
    if cfg.audio == "dmel":
        return D * (cfg.dmel_channels or 0) * (cfg.dmel_bins or 0) + D * V, 0
    Dd, K, Va = cfg.depth_d_model, cfg.codebooks, cfg.audio_vocab or 0
    depth_block = 4 * Dd * Dd + 3 * Dd * 4 * Dd + 2 * Dd
    depth = D * Dd + cfg.depth_layers * depth_block + Dd * V + K * Va * Dd
    depth += (K + 1) * Dd + Dd  # step embeddings, final norm
    return depth, max(1, K - 1) * (Va + 1) * Dd + (V + 1) * Dd


def _video_embedding_sizes(cfg: ModelConfig) -> int:
    D = cfg.d_model
    if cfg.video == "tokens":
        return ((cfg.frame_vocab or 0) + 1) * D + (cfg.frame_tokens or 0) * D
    if cfg.video == "pixels":
        c1, c2 = _hmlp_widths(D)
        r = (cfg.pixel_patch or 8) // 8
        hmlp = (48 * c1 + c1 + 2 * c1) + (4 * c1 * c2 + c2 + 2 * c2) + (r * r * c2 * D + D)
        return hmlp + video_positions(cfg) * D + D  # patch positions, "no frame"
    return 0


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total and active (per position) parameter counts of the variant, embeddings excluded from 'active'.
    ``head_per_frame``: the depth head (codes) or the two linear heads (dmel); ``embeddings`` include
    the video input (frame-token table, or the hMLP and its positions)."""
    D, Hx, E, k = cfg.d_model, cfg.expert_hidden, cfg.n_experts, cfg.top_k
    attn = 4 * D * D
    expert = 3 * D * Hx
    per_layer_total = attn + D * E + E * expert + 2 * D
    per_layer_active = attn + D * E + k * expert
    head, head_inputs = _head_sizes(cfg)
    if cfg.audio == "codes":
        audio_in = 2 * cfg.codebooks * ((cfg.audio_vocab or 0) + 1) * D
    else:
        audio_in = 2 * (cfg.dmel_channels or 0) * ((cfg.dmel_bins or 0) + 1) * D
    emb = audio_in + 2 * ((cfg.text_vocab or 0) + 1) * D + head_inputs + _video_embedding_sizes(cfg)
    emb += 4 * D  # BOS, 3 position kinds
    return {
        "total": cfg.n_layers * per_layer_total + head + emb + D,  # + final norm
        "temporal_active_per_position": cfg.n_layers * per_layer_active,
        "head_per_frame": head,
        "embeddings": emb,
    }


def train_flops_per_example(cfg: ModelConfig, layout: Layout) -> float:
    """Training FLOPs (forward + backward ~ 3x forward) of one example: trunk matmuls plus causal
    attention, and the per-frame heads (the depth head's K + 1 steps, or the dMel and text linears).
    Not counted: embeddings and the hMLP (a few percent of the trunk at the configs we run)."""
    counts = parameter_counts(cfg)
    L = layout.length
    frames = layout.chunks * FRAMES_PER_CHUNK
    temporal = 6 * L * counts["temporal_active_per_position"] + 6 * cfg.n_layers * L * L * cfg.d_model
    if cfg.audio == "dmel":
        return float(temporal + 6 * frames * counts["head_per_frame"])
    steps = cfg.codebooks + 1
    Dd = cfg.depth_d_model
    depth_blocks = cfg.depth_layers * (4 * Dd * Dd + 12 * Dd * Dd)
    depth = 6 * frames * (cfg.d_model * Dd + steps * depth_blocks + Dd * (cfg.text_vocab or 0)
                          + cfg.codebooks * (cfg.audio_vocab or 0) * Dd)  # fmt: skip
    depth += 6 * frames * cfg.depth_layers * steps * steps * Dd
    return float(temporal + depth)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg: ModelConfig) -> dict[str, Any]:
    c = parameter_counts(cfg)
    return {k: int(v) for k, v in c.items()} | {"experts": cfg.n_experts, "top_k": cfg.top_k, "audio": cfg.audio,
                                                "video": cfg.video}  # fmt: skip
