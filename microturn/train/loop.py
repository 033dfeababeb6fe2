"""The training entry point. Reads top to bottom: set up, build, resume, loop, save.

    train(cfg, data_uri, out_dir) -> summary dict
    python -m microturn.train.loop --config FILE --data DIR --out RUN_DIR [key.path=value ...]
    torchrun --nproc_per_node N -m microturn.train.loop --config FILE --data DIR --out RUN_DIR

RUN_DIR gets config.yaml (resolved: vocab sizes and tokenizer fingerprints filled from the corpus),
metrics.jsonl (one JSON object per logged step), eval.jsonl, and checkpoints/step-NNNNNNNN.pt holding
model, optimizer, step, tokens seen, every rank's loader position and the config. A run started again
with the same RUN_DIR resumes exactly from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from microturn import storage
from microturn.clock import FRAMES_PER_CHUNK
from microturn.train.config import TrainConfig, load_train_config
from microturn.train.loader import (
    BadSamples,
    CorpusInfo,
    ExampleSpec,
    SampleError,
    TrainDataError,
    TrainLoader,
    check_fingerprints,
    iter_raw_samples,
    load_npy,
    read_corpus,
    split_train_eval,
)
from microturn.train.model import InteractionModel, train_flops_per_example
from microturn.train.schedule import lr_at

log = logging.getLogger(__name__)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


# ---------------------------------------------------------------- distributed setup


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
    want = cfg.run.device
    use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainDataError("no_cuda", "run.device is 'cuda' but no CUDA device is visible")
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


def _all_reduce(t: torch.Tensor, d: Dist, op: Any = None) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# ---------------------------------------------------------------- resolving the config against the corpus


def _frame_tokens_in(corpus: CorpusInfo, *, look_at: int = 64) -> Optional[int]:
    """Tokens per video frame (h * w) from the first readable ``frames.npy`` among the first ``look_at``
    samples. An audio-only sample still says its grid (frames ``[0, h, w]``); damaged samples are passed
    over (the loader skips and counts them later)."""
    seen = 0
    for uri in corpus.shard_uris:
        for raw in iter_raw_samples(uri):
            seen += 1
            if "frames.npy" in raw:
                try:
                    frames = load_npy(raw["frames.npy"], "frames.npy")
                except SampleError:
                    frames = None
                if frames is not None and frames.ndim == 3 and frames.shape[1] * frames.shape[2] > 0:
                    return int(frames.shape[1] * frames.shape[2])
            if seen >= look_at:
                return None
    if not seen:
        raise TrainDataError("no_samples", f"no samples in any shard of {corpus.root}")
    return None


def resolve_config(cfg: TrainConfig, corpus: CorpusInfo) -> TrainConfig:
    """Fill vocab sizes, tokens per frame and fingerprints from the corpus; refuse disagreements.

    Vocab sizes, codebooks and fingerprints come from dataset.json; tokens per video frame (h * w) from
    the first readable ``frames.npy``.
    """
    m, fp = cfg.model, cfg.fingerprints
    # a config that names fingerprints must match the corpus (a resumed run saved them)
    if cfg.data.check_fingerprints:
        check_fingerprints(fp.model_dump(), corpus.fingerprints, f"{corpus.root}/dataset.json")
    fingerprints = {k: (getattr(fp, k) or corpus.fingerprints.get(k)) for k in ("audio", "frames", "text")}
    if corpus.codebooks is not None and corpus.codebooks < m.codebooks:
        raise TrainDataError(
            "too_few_codebooks", f"corpus has {corpus.codebooks} codebooks, model.codebooks is {m.codebooks}"
        )
    frame_tokens = m.frame_tokens
    if frame_tokens is None:
        frame_tokens = _frame_tokens_in(corpus)
    vocab = {"audio_vocab": corpus.vocab.get("audio"), "text_vocab": corpus.vocab.get("text"),
             "frame_vocab": corpus.vocab.get("frames")}  # fmt: skip
    for name, corpus_value in vocab.items():
        have = getattr(m, name)
        if have is not None and corpus_value is not None and have != corpus_value:
            raise TrainDataError("vocab_mismatch", f"model.{name}={have} but the corpus says {corpus_value}")
        if have is None and corpus_value is None:
            raise TrainDataError("unknown_vocab", f"{name} is in neither dataset.json nor the model config")
        vocab[name] = have or corpus_value
    if not cfg.data.video:
        frame_tokens = frame_tokens or cfg.model.video_pool
    if frame_tokens is None:
        raise TrainDataError("unknown_vocab", "tokens per video frame unknown: set model.frame_tokens")
    return cfg.replace(model={**vocab, "frame_tokens": frame_tokens}, fingerprints=fingerprints)


def example_spec(cfg: TrainConfig) -> ExampleSpec:
    m = cfg.model
    assert m.audio_vocab and m.text_vocab and m.frame_vocab and m.frame_tokens  # resolve_config ran
    return ExampleSpec(
        window_chunks=cfg.data.window_chunks,
        codebooks=m.codebooks,
        audio_vocab=m.audio_vocab,
        text_vocab=m.text_vocab,
        frame_vocab=m.frame_vocab,
        frame_tokens=m.frame_tokens,
        video=cfg.data.video,
        user_text=cfg.data.user_text,
    )


# ---------------------------------------------------------------- checkpoints


def _checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def checkpoints(out_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest first. Temporary files (``.step-*.tmp-*``: a write that never
    finished) are never listed."""
    return sorted(_checkpoint_dir(out_dir).glob("step-*.pt"))


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(
    out_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, tokens_seen: int,
    loaders: list[dict[str, Any]], cfg: TrainConfig, keep: int,
) -> Path:  # fmt: skip
    """Commit a checkpoint durably, then prune: write a temporary file, fsync it, rename it to its
    final name, fsync the folder. Only then are checkpoints beyond the last ``keep`` deleted, so the
    previous one stays on disk until the new one would survive a crash or power loss."""
    folder = _checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens_seen": tokens_seen,
        "loaders": json.dumps(loaders),  # one state per rank
        "config": json.dumps(cfg.to_plain()),
    }
    with storage.atomic_writer(str(path)) as fh:  # tmp, fsync, rename, fsync of the folder
        torch.save(state, fh)
    for old in checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files left by a run that died while writing (never resumed from)."""
    partial = sorted(_checkpoint_dir(out_dir).glob(".step-*.pt.tmp-*"))
    for p in partial:
        log.warning("removing %s: a checkpoint write that never finished", p)
        p.unlink(missing_ok=True)
    return partial


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    state = torch.load(path, map_location=device, weights_only=True)
    state["loaders"] = json.loads(state["loaders"])
    state["config"] = json.loads(state["config"])
    return state


def _set_aside(path: Path) -> None:
    """Move an unreadable checkpoint out of the ``step-*.pt`` set: left there, it would sort as the
    newest and pruning after the next save would delete the good ones instead (several ranks may try
    at once: the first rename wins)."""
    try:
        os.replace(path, path.with_name(path.name + ".bad"))
    except OSError:
        pass


def load_latest_checkpoint(out_dir: Path, device: torch.device) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The newest checkpoint that loads, newest first: one that cannot be read (cut short by a crash
    before checkpoints were fsync'd, damaged on disk) is reported and the one before it used."""
    found = checkpoints(out_dir)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, device)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            log.warning("cannot resume from %s (%s: %s); set aside as %s.bad, trying the checkpoint before it",
                        path, type(exc).__name__, str(exc)[:200], path.name)  # fmt: skip
            _set_aside(path)
    if found:
        raise TrainDataError("bad_checkpoint", f"none of the {len(found)} checkpoints in "
                                               f"{_checkpoint_dir(out_dir)} can be read")  # fmt: skip
    return None, None


# ---------------------------------------------------------------- helpers


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    use_bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _peak_flops(cfg: TrainConfig, device: torch.device) -> Optional[float]:
    if cfg.run.peak_tflops is not None:
        return cfg.run.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (and expert weight tensors); not norms, biases, embeddings or small vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith("_in.weight")
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TrainLoader, batches: int, cfg: TrainConfig, d: Dist) -> dict[str, float]:
    """Mean per-stream losses over ``batches`` held-out batches on every rank."""
    was_training = model.training
    model.eval()
    keys = ("loss", "loss_text", "loss_audio", "loss_audio_cb0")
    sums = torch.zeros(len(keys), device=d.device, dtype=torch.float64)
    for _ in range(batches):
        batch = _to_device(next(loader), d.device)
        with _autocast(cfg, d.device):
            out = model(batch)
        sums += torch.stack([out[k].detach().double() for k in keys])
    _all_reduce(sums, d)
    model.train(was_training)
    n = batches * d.world
    return {f"eval_{k}": float(v) / n for k, v in zip(keys, sums.tolist())}


def _gather_bad(new: list[list[Any]], into: BadSamples, d: Dist) -> None:
    """Rank 0 learns the bad samples every rank found since the last call (only new ones travel): a
    sample found bad on two ranks, in different epochs, is counted once."""
    if d.world > 1:
        gathered: list[Any] = [None] * d.world
        dist.all_gather_object(gathered, new)
        new = [item for part in gathered for item in part]
    into.merge(new)


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, data_uri: str, out_dir: str | Path) -> dict[str, Any]:
    """Train (or resume training) on the corpus at ``data_uri``; outputs under ``out_dir``.

    Returns a summary: steps, tokens_seen, final loss, last eval, run dir, checkpoint path, params.
    Works the same in one process and under torchrun / Ray Train (env RANK, WORLD_SIZE, LOCAL_RANK).
    """
    d = setup_distributed(cfg)
    try:
        return _train(cfg, data_uri, Path(out_dir), d)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, data_uri: str, out: Path, d: Dist) -> dict[str, Any]:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out.mkdir(parents=True, exist_ok=True)

    # 1. resume point (its saved config wins for model and fingerprints: the weights were made with it)
    if d.is_main:
        remove_partial_checkpoints(out)
    ckpt_path, ckpt = load_latest_checkpoint(out, d.device) if cfg.run.resume else (None, None)
    if ckpt is not None:
        saved = TrainConfig.model_validate(ckpt["config"])
        cfg = cfg.replace(model=saved.model.model_dump(), fingerprints=saved.fingerprints.model_dump())

    # 2. data: corpus description, held-out shards, config resolved against the corpus
    corpus = read_corpus(data_uri)
    train_shards, eval_shards = split_train_eval(corpus, cfg)
    eval_samples = corpus.shard_samples
    if cfg.data.eval_data:
        eval_corpus = read_corpus(cfg.data.eval_data)
        eval_shards, eval_samples = eval_corpus.shard_uris, eval_corpus.shard_samples
    cfg = resolve_config(cfg, corpus)
    spec = example_spec(cfg)
    expected_fp = cfg.fingerprints.model_dump() if cfg.data.check_fingerprints else {}
    if d.is_main:
        (out / "config.yaml").write_text(cfg.dump_yaml(), encoding="utf-8")

    # 3. model and optimizer (same seed on every rank; DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.run.seed)
    model = InteractionModel(cfg.model, video=cfg.data.video).to(d.device)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        _param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
        fused=d.device.type == "cuda",
    )  # fmt: skip
    step, tokens_seen = 0, 0
    loader_state = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, tokens_seen = int(ckpt["step"]), int(ckpt["tokens_seen"])
        states = ckpt["loaders"]
        if len(states) != d.world:
            raise TrainDataError("resume_layout_changed", f"checkpoint has {len(states)} ranks, now {d.world}")
        loader_state = states[d.rank]
        log.info("resumed from %s at step %d", ckpt_path, step)
        del ckpt
    loader = TrainLoader(train_shards, spec, cfg, rank=d.rank, world=d.world, expected_fp=expected_fp,
                         state=loader_state, shard_samples=corpus.shard_samples)  # fmt: skip
    bad_seen = BadSamples()  # rank 0: bad samples found by any rank (distinct), for metrics.jsonl

    dispatch = model.blocks[0].moe.resolve_dispatch(d.device)
    net: torch.nn.Module = model
    if cfg.run.compile:
        net = torch.compile(net)
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.device.index] if d.device.type == "cuda" else None, broadcast_buffers=False
        )

    layout = model.layout(cfg.data.window_chunks)
    positions_per_step = layout.length * cfg.data.batch_size * d.world
    frames_per_step = cfg.data.window_chunks * FRAMES_PER_CHUNK * cfg.data.batch_size * d.world
    flops_per_step = train_flops_per_example(cfg.model, layout) * cfg.data.batch_size * d.world
    peak = _peak_flops(cfg, d.device)
    metrics = MetricsLog(out / "metrics.jsonl", d.is_main)
    evals = MetricsLog(out / "eval.jsonl", d.is_main)
    for record_log in (metrics, evals):
        record_log.drop_after(step)
    if d.is_main:
        log.info("model: %.1fM parameters, dispatch=%s, device=%s, world=%d",
                 sum(p.numel() for p in model.parameters()) / 1e6, dispatch, d.device, d.world)  # fmt: skip

    # 4. the loop
    last_eval: dict[str, float] = {}
    last: dict[str, float] = {}
    ckpt_written: Optional[Path] = None
    t_log, steps_since_log = time.perf_counter(), 0
    model.train()
    while step < cfg.run.max_steps:
        lr = lr_at(step, lr=o.lr, warmup_steps=o.warmup_steps, max_steps=cfg.run.max_steps,
                   min_lr_ratio=o.min_lr_ratio)  # fmt: skip
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _to_device(next(loader), d.device)
        with _autocast(cfg, d.device):
            out_ = net(batch)
        out_["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
        counts_LE = _all_reduce(out_["counts_LE"].clone(), d)
        model.update_router_biases(counts_LE)  # before the step, with the load of all ranks
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_since_log += 1
        tokens_seen += positions_per_step

        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            keys = ("loss", "loss_text", "loss_audio", "loss_audio_cb0", "z_loss", "aux_loss")
            vals = _all_reduce(torch.stack([out_[k].detach().float() for k in keys]), d) / d.world
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)
            dt = time.perf_counter() - t_log
            share_LE = counts_LE.float() / counts_LE.sum(dim=1, keepdim=True).clamp(min=1)
            last = dict(zip(keys, (float(v) for v in vals.tolist())))
            _gather_bad(loader.bad.drain(), bad_seen, d)
            record = {
                "step": step,
                **last,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": positions_per_step * steps_since_log / dt,
                "frames_per_s": frames_per_step * steps_since_log / dt,
                "mfu": (flops_per_step * steps_since_log / dt / peak) if peak else None,
                "expert_load_min": float(share_LE.min()),
                "expert_load_max": float(share_LE.max()),
                "tokens_seen": tokens_seen,
                "bad_samples": bad_seen.total,
                "bad_samples_by_reason": bad_seen.by_reason(),
            }
            metrics.write(record)
            if d.is_main:
                log.info("step %d loss %.4f text %.4f audio %.4f  %.0f tok/s", step, last["loss"],
                         last["loss_text"], last["loss_audio"], record["tokens_per_s"])  # fmt: skip
            t_log, steps_since_log = time.perf_counter(), 0

        is_last = step == cfg.run.max_steps
        if eval_shards and ((cfg.run.eval_every and step % cfg.run.eval_every == 0) or is_last):
            eval_loader = TrainLoader(eval_shards, spec, cfg, rank=d.rank, world=d.world, expected_fp=expected_fp,
                                      num_workers=min(cfg.data.num_workers, 1), shard_samples=eval_samples)  # fmt: skip
            last_eval = evaluate(net, eval_loader, cfg.run.eval_batches, cfg, d)
            eval_loader.close()
            evals.write({"step": step, **last_eval})
            t_log = time.perf_counter()  # eval time is not training throughput

        if (cfg.run.ckpt_every and step % cfg.run.ckpt_every == 0) or is_last:
            states = [loader.state_dict()]
            if d.world > 1:
                gathered: list[Any] = [None] * d.world
                dist.all_gather_object(gathered, json.dumps(states[0]))
                states = [json.loads(s) for s in gathered]
            if d.is_main:
                ckpt_written = save_checkpoint(out, model=model, optimizer=optimizer, step=step,
                                               tokens_seen=tokens_seen, loaders=states, cfg=cfg,
                                               keep=cfg.run.keep_checkpoints)  # fmt: skip
            if d.world > 1:
                dist.barrier()
            t_log = time.perf_counter()
    loader.close()
    return {
        "steps": step,
        "tokens_seen": tokens_seen,
        "final": last,
        "eval": last_eval,
        "run_dir": str(out),
        "checkpoint": str(ckpt_written or latest_checkpoint(out) or ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dispatch": dispatch,
        "world": d.world,
        "device": str(d.device),
    }


# ---------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microturn.train.loop", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="training YAML (configs/train_tiny.yaml)")
    parser.add_argument("--data", required=True, help="a built corpus folder (holding dataset.json, shards/)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed when it holds checkpoints)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.max_steps=10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg, args.data, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
