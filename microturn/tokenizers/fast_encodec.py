"""A faster forward pass of EnCodec's SEANet encoder, same weights, same architecture.

What changes against ``encodec``'s modules (and why):
- the convolutions before the LSTM (all but the last, widest one) run **in time tiles**
  (``TILE_SAMPLES`` of input at a time, all layers one tile after another), each conv keeping the
  last ``padding_total`` inputs of the previous tile as its left context; the ELU before a conv writes
  straight into that conv's tile buffer, behind the context, so nothing is concatenated. A 10 s
  window of 32 channels at 24 kHz is 30 MB per tensor: run whole, every ELU, pad, add and
  small-channel conv streams through main memory (measured: the first residual block alone took
  3x longer whole than tiled); a tile keeps a layer's input and output in cache. Every output reads
  exactly the inputs it reads in one pass: the encoder is causal and every layer's input length is a
  multiple of its stride (inputs are whole 320-sample frames); only the first tile pads (reflect, as
  EnCodec does). Float results differ from one pass in the last bits only (oneDNN picks kernels by
  shape);
- weight norm is folded once (EnCodec recomputes ``g * v / |v|`` for every conv at every call);
- the LSTM runs once over the rows of several batches (``forward_many``): each step reads its 4 MB of
  recurrent weights once for all rows, 2.6x less LSTM time per row at 12 rows than at 2 on one
  thread, and each row's output is bit for bit the one it gets alone;
- the first conv's output (one input channel, which oneDNN answers in [B, C, T] order) is made
  channels-last, so the adds after it (and PyTorch's ELU, where it still runs: a GPU, bf16) take
  PyTorch's vectorized path, not a transposing scalar loop (10x slower per ELU);
- the ELUs on a CPU (``elu``) go through NumPy's vectorized float64 ``expm1``, rounded once: PyTorch's
  float32 ELU calls a scalar ``expm1`` per element, 44% of the encoder's time on one thread here; now
  0.4 s less per 30 s stream, and the correctly rounded ELU, the same on every CPU (PyTorch's is one
  ulp off it in 0.03-0.1% of values: none of 18,000 codes of a 30 s stream changed, and the codes differ
  from stock EnCodec's in 0.16% of a 60 s stream, 0.14% before);
- every Conv1d runs as a Conv2d of height 1 in channels-last memory (``[B, T, C]`` in memory):
  oneDNN's convolutions work in that layout natively, so no reorder happens around each conv;
- on a CPU the 1x1 convolutions (eight of the eighteen) ask for oneDNN by name: PyTorch sends a 1x1
  convolution on one thread to im2col and BLAS (2-2.5x slower here), and its sums then depend on the
  thread count; now the codes are the same with one thread as with several;
- ``rvq_encode``: EnCodec's residual quantizer, the same codes bit for bit, with each block of frames
  scored against a codebook while it is in cache, the dot products by oneDNN (not MKL's AVX2 kernels on
  an AMD CPU): 2.6 against 4.3 ms per 1,000 frames and codebook on one thread;
- with ``precision="bf16"`` the convolutions before the LSTM run in bfloat16 (AVX512-BF16 / AMX on
  CPUs that have it, tensor cores on GPUs) while the LSTM, the last conv and the quantizer stay in
  float32. That changes a measured fraction of codes (see benchmarks/codec_speed.py), so it is opt-in
  and the fingerprint records it.
Padding is EnCodec's: causal, reflect on the left, "extra" right padding to whole frames.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microturn.clock import HOP  # the encoder's total stride (2 * 4 * 5 * 8)
# Input samples per tile: whole frames; small enough that a tile's widest tensors (32 channels at
# 24 kHz, 64 at 12 kHz) stay in a core's L2 cache, large enough that per-op overhead stays small.
TILE_SAMPLES = 32 * HOP
MIN_TILED_SAMPLES = 4 * HOP  # shorter inputs take the one-pass path (EnCodec's short-input padding rule)


def elu(x: torch.Tensor, alpha: float, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.elu(x, alpha)``, correctly rounded, in ``out`` when given (any layout; ``x``'s by default).

    Why not PyTorch's: its float32 ELU calls a scalar ``expm1`` per element, 6 ns each on this
    project's 2-core machine (2.0 ms per 32-channel tile, 44% of the encoder's time on one thread).
    NumPy's float64 ``expm1`` is vectorized: 1.0 ms per tile. A float64 ``expm1`` rounded to float32 is
    the correctly rounded ELU, the same on every CPU and thread count; PyTorch's is within one ulp of it.
    Other devices and dtypes (the GPU path, bf16) keep PyTorch's."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or (out is not None and out.dtype != torch.float32):
        return F.elu(x, alpha) if out is None else torch._C._nn.elu(x, alpha, out=out)
    if out is None:
        out = torch.empty_like(x)
    xv, ov = x.numpy(), out.numpy()
    neg = np.minimum(xv, np.float64(0.0))  # float64, x's layout
    np.expm1(neg, out=neg)
    if alpha != 1.0:
        neg *= alpha
    np.maximum(xv, np.float32(0.0), out=ov)
    np.add(ov, neg, out=ov, casting="same_kind")  # x + 0 or 0 + alpha * expm1(x), rounded once
    return out


def _onednn_takes(x: torch.Tensor) -> bool:
    """Whether oneDNN can be asked by name for ``x``: float32 on a CPU, in a PyTorch built with it."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class _Conv(nn.Module):
    """EnCodec's SConv1d (causal) as a channels-last Conv2d with the folded weight."""

    def __init__(self, sconv: Any, dtype: torch.dtype) -> None:
        super().__init__()
        conv = sconv.conv.conv  # SConv1d -> NormConv1d -> nn.Conv1d
        if not sconv.causal:
            raise ValueError("the fast encoder supports the causal (24 kHz) model only")
        self.kernel = conv.kernel_size[0]
        self.stride = conv.stride[0]
        self.dilation = conv.dilation[0]
        self.pad_mode = sconv.pad_mode
        with torch.no_grad():
            weight = conv.weight.detach().clone()  # weight norm already folded: a plain tensor
        self.weight = nn.Parameter(
            weight.unsqueeze(2).to(dtype).contiguous(memory_format=torch.channels_last), requires_grad=False
        )
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.bias = nn.Parameter(bias.to(dtype), requires_grad=False) if bias is not None else None
        self.padding_total = (self.kernel - 1) * self.dilation - (self.stride - 1)
        self.pointwise = self.kernel == 1 and self.stride == 1

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.pointwise and _onednn_takes(x):
            # PyTorch runs a 1x1 convolution on one CPU thread through im2col and BLAS, "faster than
            # oneDNN single-threaded" (its heuristic; oneDNN with two threads or more). Measured here
            # (MKL on an AMD CPU): 2-2.5x slower than oneDNN, for the residual blocks' eight 1x1 convs
            # 0.55 of EnCodec's 1.3 s of convolutions per 30 s session. Always oneDNN also gives the
            # same codes whatever the thread count (the two paths round some sums differently).
            y = torch.mkldnn_convolution(x, self.weight, self.bias, (0, 0), (1, 1), (1, 1), 1)
        else:
            y = F.conv2d(x, self.weight, self.bias, stride=(1, self.stride), dilation=(1, self.dilation))
        # A one-channel input is contiguous in both layouts, and oneDNN then answers in [B, C, T] order:
        # every ELU and add after the first conv would transpose on the fly, through PyTorch's scalar
        # loop (measured: 5.3 ms against 0.55 ms per tile for one ELU). A no-op for the other convs.
        return y.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 1, T] channels-last, the whole sequence
        length = x.shape[-1]
        n_frames = (length - self.kernel + self.padding_total) / self.stride + 1
        ideal = (math.ceil(n_frames) - 1) * self.stride + (self.kernel - self.padding_total)
        extra = ideal - length
        left = self.padding_total
        if left or extra:
            tail = 0
            if self.pad_mode == "reflect" and length <= max(left, extra):
                tail = max(left, extra) - length + 1  # EnCodec's rule: reflect needs a longer input
                x = F.pad(x, (0, tail))
            x = F.pad(x, (left, extra, 0, 0), mode=self.pad_mode)
            if tail:
                x = x[..., : x.shape[-1] - tail]
        return self._conv(x)

    def tile(self, x: torch.Tensor, state: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One tile of a longer sequence: (output, left context for the next tile).

        ``state`` is None for the first tile (the sequence start: EnCodec's reflect padding) or the
        last ``padding_total`` inputs of the previous tile. The tile's length is a multiple of the
        stride, so no right padding is ever needed (EnCodec's "extra" padding is zero)."""
        left = self.padding_total
        if not left:
            return self._conv(x), None
        if state is None:
            ext = F.pad(x, (left, 0, 0, 0), mode=self.pad_mode)
        else:
            ext = torch.cat([state, x], dim=-1)
        return self._conv(ext), ext[..., ext.shape[-1] - left :]

    def tile_elu(
        self, x: torch.Tensor, alpha: float, state: Optional[tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, int]]:
        """``tile(elu(x))`` without a concatenation: ELU writes into a buffer kept between tiles,
        right behind the previous tile's last ``padding_total`` values (at the sequence start, their
        reflection: an elementwise function commutes with reflecting its input). The state is
        (buffer, inputs the last tile wrote)."""
        left, n = self.padding_total, x.shape[-1]
        if state is None or state[0].shape[0] != x.shape[0]:
            buf = x.new_empty((x.shape[0], x.shape[1], 1, left + n)).contiguous(memory_format=torch.channels_last)
            elu(x, alpha, out=buf[..., left : left + n])
            if self.pad_mode == "reflect":
                buf[..., :left] = buf[..., left + 1 : 2 * left + 1].flip(-1)
            else:
                buf[..., :left] = 0
        else:
            buf, prev = state
            buf[..., :left] = buf[..., prev : prev + left]  # the previous tile's last inputs
            elu(x, alpha, out=buf[..., left : left + n])
        ext = buf if buf.shape[-1] == left + n else buf[..., : left + n]  # the last tile may be short
        return self._conv(ext), (buf, n)


class FastSEANetEncoder(nn.Module):
    """Runs an (inference-only) copy of a SEANetEncoder; outputs float32 [B, D, T] like the original."""

    def __init__(self, encoder: Any, precision: str = "fp32", tile_samples: int = TILE_SAMPLES) -> None:
        super().__init__()
        from encodec.modules.lstm import SLSTM
        from encodec.modules.seanet import SEANetResnetBlock

        if tile_samples % HOP:
            raise ValueError(f"tile_samples must be a multiple of {HOP}")
        self.tile_samples = tile_samples
        self.low = torch.bfloat16 if precision == "bf16" else torch.float32
        steps: list[tuple[str, Any]] = []
        mods = nn.ModuleList()
        layers = list(encoder.model)
        lstm_at = next((i for i, m in enumerate(layers) if isinstance(m, SLSTM)), len(layers))
        for i, layer in enumerate(layers):
            dtype = self.low if i < lstm_at else torch.float32  # LSTM and what follows stay fp32
            if isinstance(layer, nn.ELU):
                steps.append(("elu", layer.alpha))
            elif isinstance(layer, SEANetResnetBlock):
                convs = [m for m in layer.block if not isinstance(m, nn.ELU)]
                if len(convs) != 2 or not all(isinstance(m, nn.ELU) for m in layer.block[::2]):
                    raise ValueError("unexpected SEANet residual block layout")
                alpha = layer.block[0].alpha
                if isinstance(layer.shortcut, nn.Identity):
                    short = None
                else:
                    short = len(mods)
                    mods.append(_Conv(layer.shortcut, dtype))
                first = len(mods)
                mods.append(_Conv(convs[0], dtype))
                mods.append(_Conv(convs[1], dtype))
                steps.append(("res", (short, first, first + 1, alpha)))
            elif isinstance(layer, SLSTM):
                steps.append(("lstm", (len(mods), layer.skip)))
                mods.append(layer.lstm)
            elif hasattr(layer, "conv") and hasattr(layer, "causal"):
                steps.append(("conv", (len(mods), dtype)))
                mods.append(_Conv(layer, dtype))
            else:
                raise ValueError(f"unexpected encoder layer {type(layer).__name__}")
        self.steps = steps
        self.mods = mods
        # The steps before the LSTM are convolutional (tiled); the LSTM and what follows run whole.
        self.conv_steps = next((i for i, (kind, _) in enumerate(steps) if kind == "lstm"), len(steps))
        # Tiled: the front up to its last conv. That one (256 -> 512 channels) has 8 MB of weights:
        # re-reading them for every tile costs more than keeping its small input (2.5 MB per 10 s
        # window) in cache saves, so it runs whole (measured: 10% faster than tiling it too).
        front_convs = [i for i, (kind, _) in enumerate(steps[: self.conv_steps]) if kind == "conv"]
        self.tiled_steps = front_convs[-1] if front_convs else self.conv_steps

    def _run_conv_steps(
        self, h: torch.Tensor, states: Optional[dict[int, Any]], first: int, last: int
    ) -> torch.Tensor:
        """Steps [first, last) on a whole sequence (``states`` None) or on one tile.

        ``conv(idx, x, alpha)`` runs conv ``idx`` on ``elu(x, alpha)`` (on ``x`` when alpha is None):
        in a tile, the ELU writes straight into the conv's input buffer behind its left context."""

        def conv(idx: int, x: torch.Tensor, alpha: Optional[float] = None) -> torch.Tensor:
            mod = self.mods[idx]
            if states is None:
                return mod(x if alpha is None else elu(x, alpha))
            if not mod.padding_total:
                return mod._conv(x if alpha is None else elu(x, alpha))
            if alpha is None:
                y, states[idx] = mod.tile(x, states.get(idx))
                return y
            y, states[idx] = mod.tile_elu(x, alpha, states.get(idx))
            return y

        pending: Optional[float] = None  # an ELU step waiting to be fused into the next conv's input
        for kind, arg in self.steps[first:last]:
            if pending is not None and kind != "conv":
                h, pending = elu(h, pending), None
            if kind == "elu":
                pending = arg
            elif kind == "res":
                short, a, b, alpha = arg
                h = h.to(self.mods[a].weight.dtype)
                y = conv(b, conv(a, h, alpha), alpha)
                h = (h if short is None else conv(short, h)) + y
            else:  # conv
                idx, dtype = arg
                h, pending = conv(idx, h.to(dtype), pending), None
        if pending is not None:
            h = elu(h, pending)
        return h

    def _lstm_many(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The LSTM step over the rows of several batches at once ([B_i, C, 1, T_i] each, shorter ones
        padded at the end: it is causal, so their outputs are cropped back unchanged). Each step reads
        the 4 MB of recurrent weights once for all rows: on one CPU thread a row costs 82 ms per 10 s
        window in a batch of 2, 36 ms in 6, 31 ms in 12, and every row's output is bit for bit the same
        whatever it is batched with or padded to (oneDNN's LSTM; checked)."""
        if self.conv_steps == len(self.steps):  # no LSTM (conv_steps: where the first one is)
            return hs
        _, (idx, skip) = self.steps[self.conv_steps]
        seqs = [h.float().squeeze(2).permute(2, 0, 1) for h in hs]  # [T, B, C]
        longest = max(seq.shape[0] for seq in seqs)
        joint = torch.cat([F.pad(seq, (0, 0, 0, 0, 0, longest - seq.shape[0])) for seq in seqs], dim=1)
        out, _ = self.mods[idx](joint)
        outs, row = [], 0
        for seq in seqs:
            o = out[: seq.shape[0], row : row + seq.shape[1]]
            row += seq.shape[1]
            if skip:
                o = o + seq
            outs.append(o.permute(1, 2, 0).unsqueeze(2).contiguous(memory_format=torch.channels_last))
        return outs

    def _run_after_lstm(self, h: torch.Tensor) -> torch.Tensor:
        for kind, arg in self.steps[self.conv_steps + 1 :]:
            if kind == "elu":
                h = elu(h, arg)
            elif kind == "conv":
                idx, dtype = arg
                h = self.mods[idx](h.to(dtype))
            else:
                raise ValueError(f"unexpected step {kind} after the LSTM")
        return h

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float32 [B, 1, L] -> float32 [B, D, T]
        return self.forward_many([x])[0]

    @torch.inference_mode()
    def forward_many(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``forward`` of several batches (each float32 [B_i, 1, L_i]), bit for bit: the convolutions
        run batch by batch (their shapes, so their kernels, are those of one batch), the LSTM once
        over all rows (``_lstm_many``)."""
        hs = self._lstm_many([self._front(x) for x in xs])
        return [self._run_after_lstm(h).squeeze(2).float().contiguous() for h in hs]

    def _front(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional steps before the LSTM: float32 [B, 1, L] -> [B, C, 1, T] channels-last."""
        h = x.unsqueeze(2).to(self.low).contiguous(memory_format=torch.channels_last)  # [B, 1, 1, L]
        length = h.shape[-1]
        split = min(self.tiled_steps, self.conv_steps)
        if length % HOP or length < MIN_TILED_SAMPLES:
            split = 0
        if split:
            states: dict[int, Any] = {}
            tiles = [
                self._run_conv_steps(h[..., start : start + self.tile_samples], states, 0, split)
                for start in range(0, length, self.tile_samples)
            ]
            h = torch.cat(tiles, dim=-1) if len(tiles) > 1 else tiles[0]
        return self._run_conv_steps(h, None, split, self.conv_steps)


# Rows of the code distance matrix computed at a time: 256 frames x 1024 entries is 1 MB, a core's L2.
QUANTIZE_ROWS = 256


@torch.inference_mode()
def rvq_encode(quantizer: Any, x: torch.Tensor, sample_rate: int, bandwidth: Optional[float]) -> torch.Tensor:
    """``quantizer.encode(x, sample_rate, bandwidth)`` of EnCodec's residual quantizer, the same codes
    bit for bit, on a CPU in less time: float32 [B, D, T] -> int64 [K, B, T].

    EnCodec scores every frame against all 1024 entries of a codebook in one [B*T, 1024] matrix, four
    passes over 6.8 MB for a 10 s window pair (subtract, add, negate, arg-max), each out of cache: 0.2 s
    of a 30 s session's 0.33 s of quantizing. Here each block of ``QUANTIZE_ROWS`` frames goes through
    the same operations in the same order, in place, while it is in cache."""
    n_q = quantizer.get_num_quantizers_for_bandwidth(sample_rate, bandwidth)
    batch, dim, frames = x.shape
    residual = x
    codes = []
    for layer in quantizer.vq.layers[:n_q]:
        flat = residual.permute(0, 2, 1).reshape(-1, dim)  # EnCodec's "b d n -> (b n) d"
        indices = _nearest(flat, layer._codebook.embed).view(batch, frames)
        residual = residual - layer.decode(indices)
        codes.append(indices)
    return torch.stack(codes)


def _nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of ``embed`` [1024, D] for each row of ``x`` [N, D], as EnCodec's
    ``EuclideanCodebook.quantize`` computes it: arg-max of -(|x|^2 - 2x.e + |e|^2)."""
    embed_t = embed.t()
    x2 = x.pow(2).sum(1, keepdim=True)
    e2 = embed_t.pow(2).sum(0, keepdim=True)
    twice = 2 * x
    onednn = _onednn_takes(x)
    kernel = embed.reshape(*embed.shape, 1, 1)  # the entries as a 1x1 convolution's filters
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], QUANTIZE_ROWS):
        rows = slice(start, start + QUANTIZE_ROWS)
        dist = _dot_products(twice[rows], kernel) if onednn else twice[rows] @ embed_t
        torch.sub(x2[rows], dist, out=dist)
        dist.add_(e2).neg_()
        out[rows] = dist.max(dim=-1).indices
    return out


def _dot_products(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``x @ kernel[:, :, 0, 0].t()`` ([n, D] x [E, D] -> [n, E]) by oneDNN, as a 1x1 convolution over n
    positions: PyTorch's CPU matmul goes to MKL, which on an AMD CPU runs its AVX2 kernels, 1.4-2.3x
    slower here; for EnCodec's 128-dim codes both give the same sums bit for bit (checked here, and by
    the tests against EnCodec's own quantizer)."""
    n, dim = x.shape
    y = torch.mkldnn_convolution(x.reshape(1, 1, n, dim).permute(0, 3, 1, 2), kernel, None, (0, 0), (1, 1), (1, 1), 1)
    return y.permute(0, 2, 3, 1).reshape(n, kernel.shape[0])
