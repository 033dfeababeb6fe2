"""The interaction model: a causal transformer over 200 ms chunks whose feed-forward layers are a
mixture of experts, with a small depth head over the codebooks of each codec frame.

Sequence layout (one row of the batch). Each codec frame of a speaker stream is ONE position: the
embeddings of its K codebooks and of its text token are summed (Moshi-style). Per chunk c:

    [ model frames of c (15) | video tokens of c (P / video_pool) | user frames of c (15) ]

and the whole sequence is ``[BOS, chunk 0, chunk 1, ...]`` (the last chunk's video and user block is
dropped: nothing is predicted from it). The model's frames of chunk c come *before* the user's audio
and video of chunk c, so what the model says in chunk c depends only on what it heard and saw up to
chunk c-1: one chunk (200 ms) of latency, as in a real-time system that consumes and emits chunks.

Prediction. The hidden state at the position just before model frame f (the previous model frame, or
the last user frame of the previous chunk, or BOS) feeds the depth head, which predicts, in order, the
model's text token of frame f and its codebooks 0..K-1 (teacher-forced, causal over those K+1 steps).

Shapes use suffixes: B batch, C chunks, F codec frames (C * 15), K codebooks, k the router's top_k
choices, P video tokens per chunk (frame_tokens; frame_tokens / video_pool once pooled), L sequence
positions, D model width (depth_d_model inside the depth head), H attention heads, d head width,
R rotary frequencies (d / 2), E experts, T tokens routed (B * L), S depth-head steps (K + 1), V vocabulary.
N counts rows: in the MoE the routed slots (T * top_k, expert-sorted), in the depth head and the losses
the frames of the batch (B * F). Two names reuse letters: ``counts_LE`` has one row per layer
(L = n_layers), and the expert weights, [E, out, in], are ``w1_EFD`` (D -> gate and up: F here is
2 * expert_hidden) and ``w2_EDH`` (H = expert_hidden -> D); they are checkpoint keys, so they keep their names.
"""

from __future__ import annotations

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


def rope_tables(length: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim / 2] for rotary position embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles_LR = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles_LR.cos(), angles_LR.sin()


def apply_rope(x_BHLd: torch.Tensor, cos_LR: torch.Tensor, sin_LR: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLd.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos_LR - x2 * sin_LR, x1 * sin_LR + x2 * cos_LR], dim=-1)
    return out.type_as(x_BHLd)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x_BLD: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y_BHLd = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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
        try:
            a = torch.randn(2 * GROUP_ALIGN, d_model, device=device, dtype=torch.bfloat16, requires_grad=True)
            b = torch.randn(2, d_model, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
            offs = torch.tensor([GROUP_ALIGN, 2 * GROUP_ALIGN], device=device, dtype=torch.int32)
            torch._grouped_mm(a, b, offs=offs).float().sum().backward()
            ok = True
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            log.warning("torch._grouped_mm unavailable on %s (%s); experts use the loop path", device, exc)
    _GROUPED_OK[key] = ok
    return ok


_GROUPED_OK: dict[tuple[str, int, int], bool] = {}


def _group_rows(counts_E: torch.Tensor, align: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each expert-sorted slot goes in an aligned buffer.

    Returns (dest_N, offs_E, starts_E): ``dest_N[i]`` is the buffer row of sorted slot i, ``offs_E`` the
    cumulative end row of each expert group (int32, as torch._grouped_mm wants), ``starts_E`` its first row.
    Every group is padded to a multiple of ``align`` rows, and to at least ``align`` (no empty groups).
    """
    sizes_E = torch.clamp((counts_E + align - 1) // align, min=1) * align
    offs_E = torch.cumsum(sizes_E, 0)
    starts_E = offs_E - sizes_E
    slot_starts_E = torch.cumsum(counts_E, 0) - counts_E
    expert_N = torch.repeat_interleave(torch.arange(len(counts_E), device=counts_E.device), counts_E)
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
    dest_N, _, starts_E = _group_rows(counts_E, rows)
    # with align = max count every group is exactly `rows` long, so the buffer reshapes to [E, rows, D]
    buf = x_ND.new_zeros(E * rows, x_ND.shape[1]).index_copy(0, dest_N, x_ND)
    gate, up = torch.bmm(buf.view(E, rows, -1), w1_EFD.transpose(1, 2)).chunk(2, dim=-1)
    out = torch.bmm(F.silu(gate) * up, w2_EDH.transpose(1, 2)).reshape(E * rows, -1)
    return out[dest_N]


def experts_grouped(x_ND: torch.Tensor, counts_E: torch.Tensor, w1_EFD: torch.Tensor, w2_EDH: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm path (CUDA, bf16). The buffer size is a static bound: no host sync."""
    E = len(counts_E)
    dest_N, offs_E, _ = _group_rows(counts_E, GROUP_ALIGN)
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
        counts_E = torch.bincount(experts_Tk.reshape(-1), minlength=self.n_experts)

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

    def forward(self, x_BLD, rope, dispatch=None):
        x_BLD = x_BLD + self.attn(self.norm1(x_BLD), rope)
        y_BLD, stats = self.moe(self.norm2(x_BLD), dispatch)
        return x_BLD + y_BLD, stats


class DenseBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, 4 * d_model)

    def forward(self, x, rope=None):
        x = x + self.attn(self.norm1(x), rope)
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


class InteractionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, *, video: bool = True):
        super().__init__()
        for name in ("audio_vocab", "text_vocab", "frame_vocab", "frame_tokens"):
            if getattr(cfg, name) is None:
                raise ValueError(f"model.{name} must be resolved (from dataset.json or the config) before building")
        if cfg.frame_tokens % cfg.video_pool:
            raise ValueError(f"frame_tokens ({cfg.frame_tokens}) must be divisible by video_pool ({cfg.video_pool})")
        self.cfg = cfg
        self.video = video
        D, K, Va = cfg.d_model, cfg.codebooks, cfg.audio_vocab
        self.bos_D = nn.Parameter(torch.zeros(D))
        self.kind_3D = nn.Parameter(torch.zeros(3, D))  # model frame, video, user frame
        # one table per role, K codebooks stacked (index k * (Va + 1) + code); row Va = absent
        self.model_codes_in = nn.Embedding(K * (Va + 1), D)
        self.user_codes_in = nn.Embedding(K * (Va + 1), D)
        self.model_text_in = nn.Embedding(cfg.text_vocab + 1, D)
        self.user_text_in = nn.Embedding(cfg.text_vocab + 1, D)
        if video:  # absent without video: DDP insists that every parameter gets a gradient
            self.frame_in = nn.Embedding(cfg.frame_vocab + 1, D)
            self.frame_pos_PD = nn.Parameter(torch.zeros(cfg.frame_tokens, D))
            nn.init.normal_(self.frame_in.weight, std=0.02)
            nn.init.normal_(self.frame_pos_PD, std=0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.RMSNorm(D)
        self.depth = DepthHead(cfg)
        self.register_buffer("codebook_offsets_K", torch.arange(K) * (Va + 1), persistent=False)
        for emb in (self.model_codes_in, self.user_codes_in, self.model_text_in, self.user_text_in):
            nn.init.normal_(emb.weight, std=0.02)
        for p in (self.bos_D, self.kind_3D):
            nn.init.normal_(p, std=0.02)

    def layout(self, chunks: int) -> Layout:
        return Layout(chunks, self.cfg.frame_tokens // self.cfg.video_pool if self.video else 0)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The interleaved input sequence x_BLD."""
        model_codes_BKF = batch["model_codes"].long()
        B, K, Fr = model_codes_BKF.shape
        C = Fr // FRAMES_PER_CHUNK
        offs = self.codebook_offsets_K[None, :, None]
        model_BFD = self.model_codes_in(model_codes_BKF + offs).sum(dim=1)
        model_BFD = model_BFD + self.model_text_in(batch["model_text"].long()) + self.kind_3D[0]
        user_BFD = self.user_codes_in(batch["user_codes"].long() + offs).sum(dim=1)
        user_BFD = user_BFD + self.user_text_in(batch["user_text"].long()) + self.kind_3D[2]
        parts = [model_BFD.view(B, C, FRAMES_PER_CHUNK, -1)]
        if self.video:
            frames_BCPD = self.frame_in(batch["frames"].long()) + self.frame_pos_PD
            pool = self.cfg.video_pool
            if pool > 1:
                frames_BCPD = frames_BCPD.view(B, C, -1, pool, frames_BCPD.shape[-1]).mean(dim=3)
            parts.append(frames_BCPD + self.kind_3D[1])
        parts.append(user_BFD.view(B, C, FRAMES_PER_CHUNK, -1))
        x_BLD = torch.cat(parts, dim=2).reshape(B, -1, model_BFD.shape[-1])
        layout = self.layout(C)
        x_BLD = torch.cat([self.bos_D.expand(B, 1, -1), x_BLD], dim=1)
        return x_BLD[:, : layout.length]

    def frame_states(
        self, batch: dict[str, torch.Tensor], dispatch: Optional[str] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """h_BFD: the temporal state that predicts each model frame, plus router statistics."""
        cfg = self.cfg
        x_BLD = self.embed(batch)
        B, L, D = x_BLD.shape
        rope = rope_tables(L, D // cfg.n_heads, cfg.rope_theta, x_BLD.device)
        z_loss = x_BLD.new_zeros((), dtype=torch.float32)
        aux_loss = x_BLD.new_zeros((), dtype=torch.float32)
        counts = []
        for block in self.blocks:
            x_BLD, stats = block(x_BLD, rope, dispatch)
            z_loss = z_loss + stats["z_loss"]
            aux_loss = aux_loss + stats["aux_loss"]
            counts.append(stats["counts_E"])
        h_BLD = self.norm(x_BLD)
        chunks = batch["model_codes"].shape[2] // FRAMES_PER_CHUNK
        h_BFD = h_BLD[:, self.layout(chunks).predictor_positions(h_BLD.device)]
        n_layers = len(self.blocks)
        return h_BFD, {"z_loss": z_loss / n_layers, "aux_loss": aux_loss / n_layers, "counts_LE": torch.stack(counts)}

    def forward(self, batch: dict[str, torch.Tensor], dispatch: Optional[str] = None) -> dict[str, torch.Tensor]:
        """Losses per stream (mean over valid frames), router losses and expert counts [n_layers, E]."""
        cfg = self.cfg
        h_BFD, router = self.frame_states(batch, dispatch)
        D = h_BFD.shape[-1]
        codes_BKF = batch["model_codes"].long()
        valid_N = batch["valid"].reshape(-1).bool()
        text_N = batch["model_text"].long().reshape(-1)
        codes_NK = codes_BKF.transpose(1, 2).reshape(-1, cfg.codebooks)
        text_logits_NV, audio_logits_NKV = self.depth(h_BFD.reshape(-1, D), text_N, codes_NK)

        ignore = -100
        text_tgt_N = torch.where(valid_N, text_N, ignore)
        codes_tgt_NK = torch.where(valid_N[:, None], codes_NK, ignore)
        loss_text = F.cross_entropy(text_logits_NV.float(), text_tgt_N, ignore_index=ignore)
        N, K, V = audio_logits_NKV.shape
        loss_audio_NK = F.cross_entropy(
            audio_logits_NKV.float().reshape(N * K, V), codes_tgt_NK.reshape(-1), ignore_index=ignore, reduction="none"
        ).view(N, K)
        loss_audio_K = loss_audio_NK.sum(dim=0) / valid_N.sum().clamp(min=1)
        loss_audio = loss_audio_K.mean()
        z_loss, aux_loss = router["z_loss"], router["aux_loss"]
        loss = cfg.text_loss_weight * loss_text + cfg.audio_loss_weight * loss_audio + cfg.z_loss_coef * z_loss
        if cfg.balance == "aux_loss":
            loss = loss + cfg.aux_loss_coef * aux_loss
        return {
            "loss": loss,
            "loss_text": loss_text.detach(),
            "loss_audio": loss_audio.detach(),
            "loss_audio_cb0": loss_audio_K[0].detach(),
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


# ---------------------------------------------------------------- sizes and FLOPs


def parameter_counts(cfg: ModelConfig, video: bool = True) -> dict[str, int]:
    """Total and active (per position) parameter counts, embeddings excluded from 'active'."""
    D, Hx, E, k = cfg.d_model, cfg.expert_hidden, cfg.n_experts, cfg.top_k
    attn = 4 * D * D
    expert = 3 * D * Hx
    per_layer_total = attn + D * E + E * expert + 2 * D
    per_layer_active = attn + D * E + k * expert
    Dd, K = cfg.depth_d_model, cfg.codebooks
    depth_block = 4 * Dd * Dd + 3 * Dd * 4 * Dd + 2 * Dd
    depth = D * Dd + cfg.depth_layers * depth_block + Dd * cfg.text_vocab + K * cfg.audio_vocab * Dd
    depth += (K + 1) * Dd + Dd  # step embeddings, final norm
    emb = 2 * K * (cfg.audio_vocab + 1) * D + 2 * (cfg.text_vocab + 1) * D + (cfg.frame_vocab + 1) * D
    emb += max(1, K - 1) * (cfg.audio_vocab + 1) * Dd + (cfg.text_vocab + 1) * Dd
    emb += (cfg.frame_tokens or 0) * D + 4 * D  # frame positions, BOS, 3 position kinds
    if not video:
        emb -= (cfg.frame_vocab + 1) * D + (cfg.frame_tokens or 0) * D
    return {
        "total": cfg.n_layers * per_layer_total + depth + emb + D,  # + final norm
        "temporal_active_per_position": cfg.n_layers * per_layer_active,
        "depth_per_frame": depth,
        "embeddings": emb,
    }


def train_flops_per_example(cfg: ModelConfig, layout: Layout) -> float:
    """Training FLOPs (forward + backward ~ 3x forward) of one example: matmuls plus causal attention."""
    counts = parameter_counts(cfg)
    L = layout.length
    frames = layout.chunks * FRAMES_PER_CHUNK
    temporal = 6 * L * counts["temporal_active_per_position"] + 6 * cfg.n_layers * L * L * cfg.d_model
    steps = cfg.codebooks + 1
    Dd = cfg.depth_d_model
    depth_blocks = cfg.depth_layers * (4 * Dd * Dd + 12 * Dd * Dd)
    depth = 6 * frames * (cfg.d_model * Dd + steps * depth_blocks + Dd * cfg.text_vocab + cfg.codebooks * cfg.audio_vocab * Dd)
    depth += 6 * frames * cfg.depth_layers * steps * steps * Dd
    return float(temporal + depth)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(cfg: ModelConfig) -> dict[str, Any]:
    c = parameter_counts(cfg)
    return {k: int(v) for k, v in c.items()} | {"experts": cfg.n_experts, "top_k": cfg.top_k}
