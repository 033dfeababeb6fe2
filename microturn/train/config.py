"""Training configuration: one pydantic model (``TrainConfig``), loaded from YAML, dotted overrides.

Kept apart from the build config (microturn/config.py): a training run reads a built corpus, never the
build settings. Vocabulary sizes and tokenizer fingerprints may be left empty here; they are then taken
from the corpus' dataset.json at start and written into the run's resolved config (RUN_DIR/config.yaml),
so a resumed run refuses a corpus tokenized differently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from microturn.config import ConfigError, apply_overrides


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class DataConfig(_Section):
    window_chunks: int = Field(25, gt=0, description="200 ms chunks per training example (cropped/padded)")
    batch_size: int = Field(8, gt=0, description="examples per batch on each rank")
    roles: Literal["both", "random", "first"] = Field(
        "both", description="which stream is the model: both assignments (2 examples), one at random, stream 0"
    )
    video: bool = Field(True, description="feed video frame tokens (chunks without a frame get a 'no frame' token)")
    user_text: bool = Field(True, description="feed the user's text stream as input (needs ASR at inference)")
    shuffle_buffer: int = Field(256, ge=0, description="examples shuffled within each shard (0 = shard order)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    prefetch_factor: int = Field(4, gt=0)
    pin_memory: bool = True
    eval_shards: int = Field(1, ge=0, description="the last N shards (sorted by name) are held out for eval")
    eval_data: Optional[str] = Field(None, description="a separate corpus for eval (overrides eval_shards)")
    check_fingerprints: bool = Field(True, description="refuse samples whose tokenizer fingerprints differ")


class ModelConfig(_Section):
    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(4, gt=0)
    n_experts: int = Field(4, gt=0)
    top_k: int = Field(2, gt=0)
    expert_hidden: int = Field(128, gt=0, description="SwiGLU hidden size of one expert")
    balance: Literal["aux_free", "aux_loss"] = Field(
        "aux_free", description="aux-loss-free router bias updates, or a Switch-style auxiliary loss"
    )
    aux_loss_coef: float = Field(0.01, ge=0)
    z_loss_coef: float = Field(0.001, ge=0)
    bias_update_rate: float = Field(1e-3, ge=0, description="aux_free: bias step per optimizer step")
    dispatch: Literal["auto", "grouped", "padded", "loop"] = Field(
        "auto", description="expert matmuls: torch._grouped_mm, padded bmm, plain loop (reference); auto picks"
    )
    depth_d_model: int = Field(64, gt=0, description="depth head (per codec frame over text + codebooks)")
    depth_layers: int = Field(1, gt=0)
    depth_heads: int = Field(4, gt=0)
    codebooks: int = Field(8, gt=0, description="codebooks modelled (the first K of the corpus')")
    video_pool: int = Field(1, gt=0, description="frame tokens averaged per sequence position")
    text_loss_weight: float = Field(1.0, ge=0)
    audio_loss_weight: float = Field(1.0, ge=0)
    rope_theta: float = Field(10000.0, gt=0)
    # filled from dataset.json when None
    audio_vocab: Optional[int] = Field(None, gt=0)
    frame_vocab: Optional[int] = Field(None, gt=0)
    text_vocab: Optional[int] = Field(None, gt=0)
    frame_tokens: Optional[int] = Field(None, gt=0, description="h * w tokens per video frame")

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.depth_d_model % self.depth_heads:
            raise ValueError("depth_d_model must be divisible by depth_heads")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed n_experts ({self.n_experts})")
        return self


class OptimConfig(_Section):
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm (0 = off)")


class RunConfig(_Section):
    max_steps: int = Field(100, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool = False
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0, description="steps between evals (0 = only at the end)")
    eval_batches: int = Field(4, gt=0, description="batches per rank per eval")
    ckpt_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = Field(True, description="continue from RUN_DIR/checkpoints when one exists")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = leave as is)")
    peak_tflops: Optional[float] = Field(None, gt=0, description="for MFU; None = known GPUs, else not reported")
    timeout_s: float = Field(600.0, gt=0, description="collective timeout for DDP")


class Fingerprints(_Section):
    audio: Optional[str] = None
    frames: Optional[str] = None
    text: Optional[str] = None


class TrainConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    fingerprints: Fingerprints = Fingerprints()

    def to_plain(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_plain(), sort_keys=True)

    def config_hash(self) -> str:
        blob = json.dumps(self.to_plain(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A copy with some fields of some sections changed: ``cfg.replace(run={"max_steps": 5})``."""
        plain = self.to_plain()
        for name, fields in sections.items():
            plain[name].update(fields)
        return TrainConfig.model_validate(plain)


def _format_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{key}: unknown key" if e["type"] == "extra_forbidden" else f"{key}: {e['msg']}")
    return f"invalid training config ({origin}):\n  " + "\n  ".join(lines)


def train_config_from_dict(data: dict[str, Any], origin: str = "dict") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


def load_train_config(path: Optional[Path | str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a training YAML (or defaults), apply ``a.b=value`` overrides, validate."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"training config not found: {p}")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, overrides)
    return train_config_from_dict(data, origin + (" + overrides" if overrides else ""))
