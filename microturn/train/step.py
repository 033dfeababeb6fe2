"""One optimizer step, one evaluation, and the process layout they run in (one process per GPU or CPU
process under torchrun / Ray Train; collectives only when there is more than one)."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from microturn.devices import resolve_device
from microturn.train.config import OptimConfig, TrainConfig
from microturn.train.loader import TrainLoader
from microturn.train.model import InteractionModel, loss_keys
from microturn.train.stream import BadSamples


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we created the process group (torchrun), not a host like Ray Train

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> Dist:
    """One process per GPU (or CPU process) under torchrun / Ray Train: RANK, WORLD_SIZE, LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(cfg.run.device, "train") == "cuda"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=cfg.run.timeout_s),
        )
        owns_group = True
    return Dist(rank, world, local_rank, device, owns_group)


def all_reduce(t: torch.Tensor, d: Dist, op: Any = None) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def gather_bad(new: list[list[Any]], into: BadSamples, d: Dist) -> None:
    """Rank 0 learns the bad samples every rank found since the last call (only new ones travel): a
    sample found bad on two ranks, in different epochs, is counted once."""
    if d.world > 1:
        gathered: list[Any] = [None] * d.world
        dist.all_gather_object(gathered, new)
        new = [item for part in gathered for item in part]
    into.merge(new)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    use_bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (and expert weight tensors); not norms, biases, embeddings or small vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith("_in.weight")
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                             fused=device.type == "cuda")  # fmt: skip


def wrap_model(model: InteractionModel, cfg: TrainConfig, d: Dist) -> torch.nn.Module:
    """What the step calls: the model, compiled when asked, under DDP with more than one process."""
    net: torch.nn.Module = model
    if cfg.run.compile:
        net = torch.compile(net)
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.device.index] if d.device.type == "cuda" else None, broadcast_buffers=False
        )
    return net


def train_step(
    net: torch.nn.Module, model: InteractionModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
    lr: float, cfg: TrainConfig, d: Dist,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward, backward, clip, balance the experts, step. Returns the model's outputs, the gradient
    norm and the expert counts of all ranks [n_layers, E]."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch = to_device(batch, d.device)
    with autocast(cfg, d.device):
        out = net(batch)
    out["loss"].backward()
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    counts_LE = all_reduce(out["counts_LE"].clone(), d)
    model.update_router_biases(counts_LE)  # before the step, with the load of all ranks
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out, grad_norm, counts_LE


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TrainLoader, batches: int, cfg: TrainConfig, d: Dist) -> dict[str, float]:
    """Mean per-stream losses over ``batches`` held-out batches on every rank."""
    was_training = model.training
    model.eval()
    keys = loss_keys(cfg.model)  # the variant's streams: loss_audio(_cb0) with codes, loss_dmel with dMel
    sums = torch.zeros(len(keys), device=d.device, dtype=torch.float64)
    for _ in range(batches):
        batch = to_device(next(loader), d.device)
        with autocast(cfg, d.device):
            out = model(batch)
        sums += torch.stack([out[k].detach().double() for k in keys])
    all_reduce(sums, d)
    model.train(was_training)
    n = batches * d.world
    return {f"eval_{k}": float(v) / n for k, v in zip(keys, sums.tolist())}
