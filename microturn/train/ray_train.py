"""Training on a Ray cluster with Ray Train's TorchTrainer: one worker process per GPU (or CPU slot), each
running the ordinary loop (``microturn.train.loop.train``) inside the process group TorchTrainer created.

    fit_on_ray(cfg, data_uri, run_dir, workers=N) -> ray.train.Result

The checkpoints are the loop's own (RUN_DIR/checkpoints, written by rank 0; Ray Train keeps none), so
``run_dir`` must be a folder every worker sees, and calling ``fit_on_ray`` again with the same ``run_dir``
resumes from its latest checkpoint. docs/training.md quotes the two functions below verbatim
(tests/train/test_ray_train.py checks that it still does).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from microturn.train.config import TrainConfig

if TYPE_CHECKING:
    import ray.train


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. TorchTrainer has set RANK, WORLD_SIZE and LOCAL_RANK and created the process
    group, so ``train()`` joins that group (and leaves destroying it to Ray). Progress goes to RUN_DIR
    (metrics.jsonl, checkpoints/), not to ``ray.train.report``: Ray Train keeps no checkpoint of ours."""
    from microturn.train.loop import train

    train(TrainConfig.model_validate(config["cfg"]), config["data"], config["run_dir"])


def fit_on_ray(cfg: TrainConfig, data_uri: str, run_dir: str | Path, *, workers: int, use_gpu: bool = False,
               storage_path: Optional[str | Path] = None) -> ray.train.Result:  # fmt: skip
    """Train on ``workers`` workers of the Ray cluster this process is connected to (``ray.init`` first);
    raises when a worker fails. ``storage_path`` holds Ray Train's own run records (default ~/ray_results),
    not the checkpoints."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # workers do not share the driver's working directory: hand them absolute paths
    data = data_uri if "://" in data_uri else str(Path(data_uri).absolute())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_plain(), "data": data, "run_dir": str(Path(run_dir).absolute())},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(cfg.run.timeout_s)),
        run_config=RunConfig(storage_path=str(storage_path) if storage_path else None),
    )
    return trainer.fit()
