"""Training throughput (tokens/s) and MFU of the train_small model, GPU-ready, honest on CPU.

    .venv/bin/python benchmarks/train.py [--config configs/train_small.yaml] [--steps N] [--batch B]
                                         [--window-chunks C] [--dispatch auto|grouped|padded|loop]

Runs full optimizer steps (forward, backward, clip, router-bias update, AdamW) of the configured
model on batches of random tokens shaped like the corpus (8 codebooks of 1024, 8x8 video tokens of
1000, a 260-token text vocab): the loader is measured by benchmarks/loader.py. "Tokens" are sequence
positions of the temporal transformer (one per codec frame of each speaker, plus pooled video tokens).

On a GPU: bf16 autocast, the configured batch and window, MFU against the card's dense bf16 peak.
On CPU (no GPU here): the same architecture with a reduced batch and window (--batch 1
--window-chunks 4 --steps 1 by default: a 2-core CPU takes about a minute per
step of this 236M-parameter model); MFU is reported against a *measured* fp32 matmul
peak of this machine, which says how well the model uses the CPU, not what a GPU would do.

Prints one JSON line last. ``ratio``: tokens/s of the configured expert dispatch ("auto":
torch._grouped_mm on sm90 GPUs, the loop elsewhere) over the plain loop reference path, same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder would come first on sys.path: put the repo there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))


def random_batch(cfg, batch: int, chunks: int, device):
    import torch

    F = chunks * 15
    m = cfg.model
    g = torch.Generator().manual_seed(0)

    def ints(high, *shape):
        return torch.randint(0, high, shape, generator=g, dtype=torch.int32).to(device)

    return {
        "model_codes": ints(m.audio_vocab, batch, m.codebooks, F),
        "user_codes": ints(m.audio_vocab, batch, m.codebooks, F),
        "model_text": ints(m.text_vocab, batch, F),
        "user_text": ints(m.text_vocab, batch, F),
        "frames": ints(m.frame_vocab, batch, chunks, m.frame_tokens),
        "valid": torch.ones(batch, F, dtype=torch.bool, device=device),
    }


def bench_config(path: str | Path, **sections: dict):
    """The train config at ``path`` with the corpus's vocabularies (and any ``sections`` overrides)."""
    from microturn.train.config import load_train_config

    model = {"audio_vocab": 1024, "text_vocab": 260, "frame_vocab": 1000, "frame_tokens": 64}
    return load_train_config(path).replace(model=model, **sections)


def measured_cpu_peak_flops(seconds: float = 1.0) -> float:
    """fp32 GEMM FLOP/s this process reaches with its thread count (the CPU 'peak' for MFU)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


def run(cfg, device, batch: int, chunks: int, steps: int, dispatch: str) -> dict:
    import torch

    from microturn.train.step import autocast, param_groups
    from microturn.train.model import InteractionModel, train_flops_per_example

    torch.manual_seed(0)
    model = InteractionModel(cfg.model).to(device)
    net = torch.compile(model) if cfg.run.compile and device.type == "cuda" else model
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=device.type == "cuda")
    data = random_batch(cfg, batch, chunks, device)
    resolved = model.blocks[0].moe.resolve_dispatch(device) if dispatch == "auto" else dispatch

    def step():
        with autocast(cfg, device):
            out = net(data, resolved)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        model.update_router_biases(out["counts_LE"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    for _ in range(2 if device.type == "cuda" else 1):  # warm-up (and compile)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    layout = model.layout(chunks)
    flops = train_flops_per_example(cfg.model, layout) * batch * steps
    return {
        "dispatch": resolved,
        "step_s": dt / steps,
        "tokens_per_s": layout.length * batch * steps / dt,
        "frames_per_s": chunks * 15 * batch * steps / dt,
        "flops_per_s": flops / dt,
        "loss": float(out["loss"].detach()),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "train_small.yaml"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--window-chunks", type=int, default=None)
    ap.add_argument("--dispatch", default="auto", choices=["auto", "grouped", "padded", "loop"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from microturn.train.metrics import PEAK_BF16_TFLOPS

    cfg = bench_config(args.config)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda") if gpu else torch.device("cpu")
    if not gpu:
        torch.set_num_threads(args.threads)
    batch = args.batch or (cfg.data.batch_size if gpu else 1)
    chunks = args.window_chunks or (cfg.data.window_chunks if gpu else 4)
    steps = args.steps or (20 if gpu else 1)

    ours = run(cfg, device, batch, chunks, steps, args.dispatch)
    baseline = run(cfg, device, batch, chunks, steps, "loop")
    if gpu:
        name = torch.cuda.get_device_name()
        peak = next((t * 1e12 for k, t in PEAK_BF16_TFLOPS.items() if k in name), None)
        peak_kind = f"{name} dense bf16 spec"
    else:
        name = f"cpu ({args.threads} threads)"
        peak = measured_cpu_peak_flops()
        peak_kind = "measured fp32 1024^3 matmul on this CPU"
    result = {
        "benchmark": "train",
        "device": name,
        "config": Path(args.config).name,
        "params_total": ours["params"],
        "batch": batch,
        "window_chunks": chunks,
        "steps": steps,
        "reduced_for_cpu": not gpu,
        "dispatch": ours["dispatch"],
        "step_s": round(ours["step_s"], 4),
        "tokens_per_s": round(ours["tokens_per_s"], 1),
        "frames_per_s": round(ours["frames_per_s"], 1),
        "tflops_per_s": round(ours["flops_per_s"] / 1e12, 4),
        "peak_tflops": round(peak / 1e12, 4) if peak else None,
        "peak_kind": peak_kind,
        "mfu": round(ours["flops_per_s"] / peak, 4) if peak else None,
        "baseline": "expert dispatch 'loop' (reference path)",
        "baseline_tokens_per_s": round(baseline["tokens_per_s"], 1),
        "ratio": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
