"""One device resolver for every stage: ``auto`` follows CUDA, an explicit ``cuda`` without it is an error."""

from __future__ import annotations

import pytest
import torch

from microturn.devices import resolve_device
from microturn.errors import StageError


@pytest.mark.parametrize("has_cuda, want", [(True, "cuda"), (False, "cpu")])
def test_auto_follows_cuda(monkeypatch, has_cuda, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert resolve_device("auto", "tokenize") == want


def test_an_explicit_device_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cpu", "align") == "cpu"
    assert resolve_device("cuda", "align") == "cuda"


@pytest.mark.parametrize("stage", ["align", "tokenize", "train"])
def test_cuda_without_cuda_fails_for_the_stage_that_asked(monkeypatch, stage):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StageError) as err:
        resolve_device("cuda", stage)
    assert err.value.stage == stage and err.value.reason == "no_cuda"
