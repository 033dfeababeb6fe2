"""What a run writes as it goes: metrics.jsonl (one record per logged step: losses, learning rate,
throughput, MFU, expert load, bad samples) and eval.jsonl, plus a log line per logged step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch

from microturn import storage
from microturn.train.config import TrainConfig
from microturn.train.step import Dist, all_reduce, gather_bad
from microturn.train.stream import BadSamples

log = logging.getLogger(__name__)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
ROUTER_KEYS = ("z_loss", "aux_loss")


def peak_flops(cfg: TrainConfig, device: torch.device) -> Optional[float]:
    """The denominator of MFU: run.peak_tflops, else the dense bf16 spec of a known GPU."""
    if cfg.run.peak_tflops is not None:
        return cfg.run.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


class MetricsLog:
    """Appends one JSON line per record; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def drop_after(self, step: int) -> None:
        """Forget records past ``step``: a run that died after its last checkpoint logged steps that the
        resumed run logs again, and the log must hold each step once."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) > step:
                    continue
            except (ValueError, TypeError, AttributeError):
                pass  # a torn last line from a killed run: keep what cannot be judged
            kept.append(line)
        storage.write_bytes_atomic(str(self.path), "".join(f"{line}\n" for line in kept).encode("utf-8"))


class StepLog:
    """metrics.jsonl of a run: throughput over the steps since the last record (time spent in eval and
    checkpoints excluded: ``restart_clock``), the losses averaged over ranks, and the distinct bad
    samples any rank found."""

    def __init__(self, path: Path, d: Dist, *, positions_per_step: int, frames_per_step: int,
                 flops_per_step: float, peak: Optional[float]):  # fmt: skip
        self.metrics = MetricsLog(path, d.is_main)
        self.d = d
        self.positions_per_step = positions_per_step
        self.frames_per_step = frames_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self.bad_seen = BadSamples()  # rank 0: bad samples found by any rank (distinct)
        self.t0, self.steps = time.perf_counter(), 0

    def restart_clock(self) -> None:
        """Throughput is timed from now (after an eval or a checkpoint: their time is not training)."""
        self.t0 = time.perf_counter()

    def count_step(self) -> None:
        self.steps += 1

    def write(self, step: int, out: dict[str, torch.Tensor], *, lr: float, grad_norm: torch.Tensor,
              counts_LE: torch.Tensor, tokens_seen: int, new_bad: list[list[Any]]) -> dict[str, float]:  # fmt: skip
        """Record ``step`` (collectives: every rank calls it); returns its losses."""
        d = self.d
        # the model's losses per stream (which depend on its variant: loss_audio or loss_dmel), then the router's
        keys = (*(k for k in out if k == "loss" or k.startswith("loss_")), *ROUTER_KEYS)
        vals = all_reduce(torch.stack([out[k].detach().float() for k in keys]), d) / d.world
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        dt = time.perf_counter() - self.t0
        share_LE = counts_LE.float() / counts_LE.sum(dim=1, keepdim=True).clamp(min=1)
        losses = dict(zip(keys, (float(v) for v in vals.tolist())))
        gather_bad(new_bad, self.bad_seen, d)
        record = {
            "step": step,
            **losses,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": self.positions_per_step * self.steps / dt,
            "frames_per_s": self.frames_per_step * self.steps / dt,
            "mfu": (self.flops_per_step * self.steps / dt / self.peak) if self.peak else None,
            "expert_load_min": float(share_LE.min()),
            "expert_load_max": float(share_LE.max()),
            "tokens_seen": tokens_seen,
            "bad_samples": self.bad_seen.total,
            "bad_samples_by_reason": self.bad_seen.by_reason(),
        }
        self.metrics.write(record)
        if d.is_main:
            log.info("step %d loss %.4f text %.4f audio %.4f  %.0f tok/s", step, losses["loss"],
                     losses["loss_text"], losses.get("loss_audio", losses.get("loss_dmel", float("nan"))),
                     record["tokens_per_s"])  # fmt: skip
        self.t0, self.steps = time.perf_counter(), 0
        return losses
