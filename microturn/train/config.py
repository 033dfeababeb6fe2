"""Training configuration: one pydantic model (``TrainConfig``), loaded from YAML, dotted overrides.

Kept apart from the build config (microturn/config.py): a training run reads a built corpus, never the
build settings. Vocabulary sizes and tokenizer fingerprints may be left empty here; they are then taken
from the corpus' dataset.json at start and written into the run's resolved config (RUN_DIR/config.yaml),
so a resumed run refuses a corpus tokenized differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import Field, ValidationError, model_validator

from microturn.config import ConfigError, RootConfig, Section, format_validation_error, load_model


class DataConfig(Section):
    window_chunks: int = Field(25, gt=0, description="200 ms chunks per training example (cropped/padded)")
    batch_size: int = Field(8, gt=0, description="examples per batch on each rank")
    roles: Literal["both", "random", "first"] = Field(
        "both", description="which stream is the model: both assignments (2 examples), one at random, stream 0"
    )
    user_text: bool = Field(True, description="feed the user's text stream as input (needs ASR at inference)")
    shuffle_buffer: int = Field(256, ge=0, description="examples shuffled within each shard (0 = shard order)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    prefetch_factor: int = Field(4, gt=0)
    pin_memory: bool = True
    eval_shards: int = Field(1, ge=0, description="the last N shards (sorted by name) are held out for eval")
    eval_data: Optional[str] = Field(None, description="a separate corpus for eval (overrides eval_shards)")
    check_fingerprints: bool = Field(True, description="refuse samples whose tokenizer fingerprints differ")
    max_bad_fraction: float = Field(
        0.05, ge=0, le=1,
        description="samples that fail to parse are skipped and counted; the run fails once the distinct "
                    "bad samples exceed this fraction of the samples dataset.json lists",
    )  # fmt: skip


class ModelConfig(Section):
    audio: Literal["codes", "dmel"] = Field(
        "codes", description="audio in and out: codec codes (depth head) or dMel bins (all channels in parallel)"
    )
    video: Literal["tokens", "pixels", "none"] = Field(
        "tokens", description="video in: frame-codec tokens, 40x40 pixel patches through an hMLP, or none; "
                              "chunks without a frame get a learned 'no frame' input"
    )  # fmt: skip
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
    dmel_channels: Optional[int] = Field(None, gt=0, description="dMel mel channels M (dataset.json dmel dims)")
    dmel_bins: Optional[int] = Field(None, gt=0, description="dMel bins per channel B (dataset.json dmel vocab)")
    pixel_size: Optional[int] = Field(None, gt=0, description="pixel frames are pixel_size x pixel_size RGB")
    pixel_patch: Optional[int] = Field(None, gt=0, description="pixel patch side (a multiple of 8: the hMLP)")

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.depth_d_model % self.depth_heads:
            raise ValueError("depth_d_model must be divisible by depth_heads")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed n_experts ({self.n_experts})")
        if self.pixel_patch is not None and self.pixel_patch % 8:
            raise ValueError(f"pixel_patch ({self.pixel_patch}) must be a multiple of 8 (4x4 pixels, merged 2x2)")
        if self.pixel_size is not None and self.pixel_patch is not None and self.pixel_size % self.pixel_patch:
            raise ValueError(f"pixel_size ({self.pixel_size}) must be a multiple of pixel_patch ({self.pixel_patch})")
        return self

    @property
    def representations(self) -> tuple[str, ...]:
        """The corpus representations (dataset.json tokenizers entries) this variant reads."""
        video = {"tokens": ("frames",), "pixels": ("pixels",), "none": ()}[self.video]
        return ("audio" if self.audio == "codes" else "dmel", "text", *video)


class OptimConfig(Section):
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm (0 = off)")


class RunConfig(Section):
    max_steps: int = Field(100, ge=0, description="0 checkpoints the initial weights: an untrained baseline")
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


class Fingerprints(Section):
    audio: Optional[str] = None
    frames: Optional[str] = None
    text: Optional[str] = None
    dmel: Optional[str] = None
    pixels: Optional[str] = None


class TrainConfig(RootConfig):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    fingerprints: Fingerprints = Fingerprints()

    def config_hash(self) -> str:
        return self._hash_of(self.to_plain())

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A copy with some fields of some sections changed: ``cfg.replace(run={"max_steps": 5})``."""
        plain = self.to_plain()
        for name, fields in sections.items():
            plain[name].update(fields)
        return TrainConfig.model_validate(plain)


def train_config_from_dict(data: dict[str, Any], origin: str = "dict") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin, "training config")) from None


def load_train_config(path: Optional[Path | str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a training YAML (or defaults), apply ``a.b=value`` overrides, validate."""
    return load_model(TrainConfig, path, overrides, what="training config")
