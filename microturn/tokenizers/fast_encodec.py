"""A faster forward pass of EnCodec's SEANet encoder, same weights, same architecture.

What changes against ``encodec``'s modules (and why):
- weight norm is folded once (EnCodec recomputes ``g * v / |v|`` for every conv at every call);
- every Conv1d runs as a Conv2d of height 1 in channels-last memory (``[B, T, C]`` in memory):
  oneDNN's convolutions work in that layout natively, so no reorder happens around each conv; the
  small channel counts of the early layers (32, 64) are where the stock NCW path loses most;
- with ``precision="bf16"`` the convolutions before the LSTM run in bfloat16 (AVX512-BF16 / AMX on
  CPUs that have it, tensor cores on GPUs) while the LSTM, the last conv and the quantizer stay in
  float32. That changes a small, measured fraction of codes (see benchmarks/tokenize.py), so it is
  opt-in and the fingerprint records it.
Padding is EnCodec's: causal, reflect on the left, "extra" right padding to whole frames.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 1, T] channels-last
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
        return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride), dilation=(1, self.dilation))


class FastSEANetEncoder(nn.Module):
    """Runs an (inference-only) copy of a SEANetEncoder; outputs float32 [B, D, T] like the original."""

    def __init__(self, encoder: Any, precision: str = "fp32") -> None:
        super().__init__()
        from encodec.modules.lstm import SLSTM
        from encodec.modules.seanet import SEANetResnetBlock

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

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float32 [B, 1, L] -> float32 [B, D, T]
        h = x.unsqueeze(2).to(self.low).contiguous(memory_format=torch.channels_last)
        for kind, arg in self.steps:
            if kind == "elu":
                h = F.elu(h, arg)
            elif kind == "res":
                short, a, b, alpha = arg
                y = self.mods[b](F.elu(self.mods[a](F.elu(h, alpha)), alpha))
                h = (h if short is None else self.mods[short](h)) + y
            elif kind == "conv":
                idx, dtype = arg
                h = self.mods[idx](h.to(dtype))
            else:  # lstm: [B, C, 1, T] -> [T, B, C]
                idx, skip = arg
                seq = h.float().squeeze(2).permute(2, 0, 1)
                out, _ = self.mods[idx](seq)
                if skip:
                    out = out + seq
                h = out.permute(1, 2, 0).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return h.squeeze(2).float().contiguous()
