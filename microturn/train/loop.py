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
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from microturn.clock import FRAMES_PER_CHUNK
from microturn.errors import TrainDataError
from microturn.train.checkpoint import (
    latest_checkpoint,
    load_latest_checkpoint,
    loader_states,
    remove_partial_checkpoints,
    save_checkpoint,
)
from microturn.train.config import ModelConfig, TrainConfig, load_train_config
from microturn.train.corpus import (CorpusInfo, check_fingerprints, frame_tokens_in, read_corpus, sessions_of,
                                    split_train_eval)
from microturn.train.examples import ExampleSpec, example_members
from microturn.train.loader import TrainLoader
from microturn.train.metrics import MetricsLog, StepLog, peak_flops
from microturn.train.model import InteractionModel, train_flops_per_example
from microturn.train.schedule import lr_at
from microturn.train.step import Dist, evaluate, make_optimizer, setup_distributed, train_step, wrap_model

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- resolving the config against the corpus


def resolve_config(cfg: TrainConfig, corpus: CorpusInfo) -> TrainConfig:
    """Fill the sizes the model variant needs and the fingerprints of what it reads from the corpus;
    refuse disagreements.

    Vocab sizes, codebooks, dMel channels and bins, pixel frame and patch sizes come from dataset.json;
    tokens per video frame (h * w) from the first readable ``frames.npy``.
    """
    m, fp = cfg.model, cfg.fingerprints
    reads = m.representations
    # a config that names fingerprints must match the corpus (a resumed run saved them)
    if cfg.data.check_fingerprints:
        check_fingerprints({k: getattr(fp, k) for k in reads}, corpus.fingerprints, f"{corpus.root}/dataset.json")
    fingerprints = {k: (getattr(fp, k) or corpus.fingerprints.get(k)) for k in reads}
    if m.audio == "codes" and corpus.codebooks is not None and corpus.codebooks < m.codebooks:
        raise TrainDataError(
            "too_few_codebooks", f"corpus has {corpus.codebooks} codebooks, model.codebooks is {m.codebooks}"
        )
    sizes = {name: _resolved(m, name, value) for name, value in _corpus_sizes(m, corpus).items()}
    return cfg.replace(model=sizes, fingerprints=fingerprints)


def _corpus_sizes(m: ModelConfig, corpus: CorpusInfo) -> dict[str, Optional[int]]:
    """The sizes of the variant's inputs as the corpus states them (None: it does not say)."""
    toks = corpus.tokenizers
    sizes: dict[str, Optional[int]] = {"text_vocab": corpus.vocab.get("text")}
    if m.audio == "codes":
        sizes["audio_vocab"] = corpus.vocab.get("audio")
    else:
        dmel = toks.get("dmel", {})
        sizes["dmel_bins"] = corpus.vocab.get("dmel")
        sizes["dmel_channels"] = dmel.get("mel_channels") or (dmel.get("dims") or {}).get("M")
    if m.video == "tokens":
        sizes["frame_vocab"] = corpus.vocab.get("frames")
        sizes["frame_tokens"] = m.frame_tokens or frame_tokens_in(corpus)
    elif m.video == "pixels":
        pixels = toks.get("pixels", {})
        sizes["pixel_size"] = (pixels.get("dims") or {}).get("Y")
        sizes["pixel_patch"] = pixels.get("patch")
    return sizes


def _resolved(m: ModelConfig, name: str, corpus_value: Optional[int]) -> int:
    have = getattr(m, name)
    if have is not None and corpus_value is not None and have != corpus_value:
        raise TrainDataError("vocab_mismatch", f"model.{name}={have} but the corpus says {corpus_value}")
    if have is None and corpus_value is None:
        raise TrainDataError("unknown_vocab", f"{name} is in neither dataset.json nor the model config")
    return int(have or corpus_value)


def example_spec(cfg: TrainConfig) -> ExampleSpec:
    return ExampleSpec.of(cfg.model, window_chunks=cfg.data.window_chunks, user_text=cfg.data.user_text)


# ---------------------------------------------------------------- the run


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
    cfg, ckpt_path, ckpt = _resume_point(cfg, out, d)

    # 2. data: corpus description, held-out shards, config resolved against the corpus
    data = _prepare_data(cfg, data_uri, out, d)
    cfg = data.cfg

    # 3. model and optimizer (same seed on every rank; DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.run.seed)
    model = InteractionModel(cfg.model).to(d.device)
    optimizer = make_optimizer(model, cfg.optim, d.device)
    step, tokens_seen, loader_state = 0, 0, None
    if ckpt is not None:
        step, tokens_seen, loader_state = _restore(ckpt, model, optimizer, d)
        log.info("resumed from %s at step %d", ckpt_path, step)
    del ckpt  # the weights now live in the model: no second copy through the run
    loader = TrainLoader(data.train_shards, data.spec, cfg, rank=d.rank, world=d.world, expected_fp=data.expected_fp,
                         state=loader_state, shard_samples=data.train_samples)  # fmt: skip
    net, dispatch = _network(model, cfg, d)
    metrics, evals = _open_logs(model, cfg, out, d, step=step)

    # 4. the loop
    o, run = cfg.optim, cfg.run
    last: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    ckpt_written: Optional[Path] = None
    metrics.restart_clock()
    model.train()
    while step < run.max_steps:
        lr = lr_at(step, lr=o.lr, warmup_steps=o.warmup_steps, max_steps=run.max_steps, min_lr_ratio=o.min_lr_ratio)
        out_, grad_norm, counts_LE = train_step(net, model, optimizer, next(loader), lr, cfg, d)
        step += 1
        metrics.count_step()
        tokens_seen += metrics.positions_per_step
        if step % run.log_every == 0 or step == run.max_steps:
            last = metrics.write(step, out_, lr=lr, grad_norm=grad_norm, counts_LE=counts_LE, tokens_seen=tokens_seen,
                                 new_bad=loader.bad.drain())  # fmt: skip
        is_last = step == run.max_steps
        if data.eval_shards and ((run.eval_every and step % run.eval_every == 0) or is_last):
            last_eval = _evaluate_held_out(net, data, cfg, d)
            evals.write({"step": step, **last_eval})
            metrics.restart_clock()  # eval time is not training throughput
        if (run.ckpt_every and step % run.ckpt_every == 0) or is_last:
            ckpt_written = _save(out, model, optimizer, step, tokens_seen, loader, cfg, d) or ckpt_written
            metrics.restart_clock()
    if run.max_steps == 0 and latest_checkpoint(out) is None:  # the untrained baseline: its initial weights
        ckpt_written = _save(out, model, optimizer, step, tokens_seen, loader, cfg, d)
    loader.close()
    return {
        "steps": step, "tokens_seen": tokens_seen, "final": last, "eval": last_eval, "run_dir": str(out),
        "checkpoint": str(ckpt_written or latest_checkpoint(out) or ""),
        "parameters": sum(p.numel() for p in model.parameters()), "dispatch": dispatch, "world": d.world,
        "device": str(d.device),
    }  # fmt: skip


# ---------------------------------------------------------------- the pieces of the run, in order


@dataclass(frozen=True)
class RunData:
    """The data side of a run, resolved once: the config filled from the corpus, the example shapes,
    train and held-out shards with the sample counts dataset.json lists for them."""

    cfg: TrainConfig
    spec: ExampleSpec
    train_shards: tuple[str, ...]
    train_samples: dict[str, int]
    eval_shards: tuple[str, ...]
    eval_samples: dict[str, int]
    expected_fp: dict[str, Optional[str]]


def _resume_point(cfg: TrainConfig, out: Path, d: Dist
                  ) -> tuple[TrainConfig, Optional[Path], Optional[dict[str, Any]]]:  # fmt: skip
    """The newest readable checkpoint (None without one, or with run.resume off) and the config to run
    with: the checkpoint's model and fingerprints win over the given ones."""
    if d.is_main:
        remove_partial_checkpoints(out)
    ckpt_path, ckpt = load_latest_checkpoint(out, d.device) if cfg.run.resume else (None, None)
    if ckpt is None:
        return cfg, None, None
    saved = TrainConfig.model_validate(ckpt["config"])
    return cfg.replace(model=saved.model.model_dump(), fingerprints=saved.fingerprints.model_dump()), ckpt_path, ckpt


def _prepare_data(cfg: TrainConfig, data_uri: str, out: Path, d: Dist) -> RunData:
    """Read the corpus, hold out eval shards (or read data.eval_data), resolve the config against the
    corpus; rank 0 saves the resolved config as RUN_DIR/config.yaml."""
    needs = example_members(cfg.model)  # refused up front: a corpus without a member the model reads
    corpus = read_corpus(data_uri, needs)
    train_shards, eval_shards = split_train_eval(corpus, cfg)
    eval_samples = corpus.shard_samples
    if cfg.data.eval_data:
        eval_corpus = read_corpus(cfg.data.eval_data, needs)
        eval_shards, eval_samples = eval_corpus.shard_uris, eval_corpus.shard_samples
    cfg = resolve_config(cfg, corpus)
    # samples are checked against the fingerprints of what the model variant reads, and only those
    fp = cfg.fingerprints
    expected_fp = {k: getattr(fp, k) for k in cfg.model.representations} if cfg.data.check_fingerprints else {}
    if d.is_main:
        (out / "config.yaml").write_text(cfg.dump_yaml(), encoding="utf-8")
        write_split(out, corpus, train_shards, eval_shards)
    return RunData(cfg, example_spec(cfg), train_shards, corpus.shard_samples, eval_shards, eval_samples, expected_fp)


def write_split(out: Path, corpus: CorpusInfo, train_shards: tuple[str, ...], eval_shards: tuple[str, ...]) -> None:
    """RUN_DIR/split.json: what the run trained on (corpus, shards, session ids) and what it held out, so
    an evaluation of the run can refuse sessions it has seen (``microturn eval --run``)."""
    split = {"data": corpus.root, "train_shards": [u.rsplit("/", 1)[-1] for u in train_shards],
             "eval_shards": list(eval_shards), "train_sessions": sessions_of(corpus.root, train_shards)}  # fmt: skip
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def _restore(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist
             ) -> tuple[int, int, dict[str, Any]]:  # fmt: skip
    """Load weights and optimizer state; (step, tokens seen, this rank's loader state)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    step, tokens_seen = int(ckpt["step"]), int(ckpt["tokens_seen"])
    states = ckpt["loaders"]
    if len(states) != d.world:
        raise TrainDataError("resume_layout_changed", f"checkpoint has {len(states)} ranks, now {d.world}")
    return step, tokens_seen, states[d.rank]


def _network(model: InteractionModel, cfg: TrainConfig, d: Dist) -> tuple[torch.nn.Module, str]:
    """What the steps call (compiled, under DDP: ``step.wrap_model``) and the expert dispatch path."""
    dispatch = model.blocks[0].moe.resolve_dispatch(d.device)
    net = wrap_model(model, cfg, d)
    if d.is_main:
        log.info("model: %.1fM parameters, dispatch=%s, device=%s, world=%d",
                 sum(p.numel() for p in model.parameters()) / 1e6, dispatch, d.device, d.world)  # fmt: skip
    return net, dispatch


def _open_logs(model: InteractionModel, cfg: TrainConfig, out: Path, d: Dist, *, step: int
               ) -> tuple[StepLog, MetricsLog]:  # fmt: skip
    """metrics.jsonl (knowing what one step of all ranks processes: positions, codec frames, FLOPs) and
    eval.jsonl, both cut back to ``step``: a resumed run logs the steps after its checkpoint again."""
    layout = model.layout(cfg.data.window_chunks)
    examples = cfg.data.batch_size * d.world
    metrics = StepLog(
        out / "metrics.jsonl", d,
        positions_per_step=layout.length * examples,
        frames_per_step=cfg.data.window_chunks * FRAMES_PER_CHUNK * examples,
        flops_per_step=train_flops_per_example(cfg.model, layout) * examples,
        peak=peak_flops(cfg, d.device),
    )  # fmt: skip
    evals = MetricsLog(out / "eval.jsonl", d.is_main)
    for record_log in (metrics.metrics, evals):
        record_log.drop_after(step)
    return metrics, evals


def _evaluate_held_out(net: torch.nn.Module, data: RunData, cfg: TrainConfig, d: Dist) -> dict[str, float]:
    """Mean losses over run.eval_batches held-out batches (a fresh loader: always the same batches)."""
    eval_loader = TrainLoader(data.eval_shards, data.spec, cfg, rank=d.rank, world=d.world,
                              expected_fp=data.expected_fp, num_workers=min(cfg.data.num_workers, 1),
                              shard_samples=data.eval_samples)  # fmt: skip
    result = evaluate(net, eval_loader, cfg.run.eval_batches, cfg, d)
    eval_loader.close()
    return result


def _save(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, tokens_seen: int,
          loader: TrainLoader, cfg: TrainConfig, d: Dist) -> Optional[Path]:  # fmt: skip
    """Every rank's loader state goes into rank 0's checkpoint; the others wait until it is committed."""
    states = loader_states(loader, d)
    path = None
    if d.is_main:
        path = save_checkpoint(out, model=model, optimizer=optimizer, step=step, tokens_seen=tokens_seen,
                               loaders=states, cfg=cfg, keep=cfg.run.keep_checkpoints)  # fmt: skip
    if d.world > 1:
        dist.barrier()
    return path


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
