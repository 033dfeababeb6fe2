"""The one device resolver: every stage that runs a model (align, tokenize, train) asks it, so
``device: auto | cpu | cuda`` means the same in every config section."""

from __future__ import annotations

from microturn.errors import Stage, StageError


def resolve_device(device: str, stage: Stage) -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is visible, else ``"cpu"``; ``"cuda"`` without CUDA raises
    ``StageError(stage, "no_cuda")`` (asked for explicitly, a silent fall back to the CPU would hide a
    broken driver behind a run hundreds of times slower); anything else is returned as given."""
    import torch  # heavy: only stages that run a model pay for it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError(stage, "no_cuda", "device=cuda was asked for but CUDA is not available")
    return device
