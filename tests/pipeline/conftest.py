"""Media builders for the probe/decode/align tests: small real files written with PyAV."""

from __future__ import annotations

import numpy as np
import pytest

from tests.media_helpers import SHARED_MEDIA, burst, shared, write_video, write_wav  # noqa: F401 (re-exported to the tests)


def f1(ref: np.ndarray, hyp: np.ndarray) -> float:
    ref, hyp = ref.astype(bool), hyp.astype(bool)
    tp = float((ref & hyp).sum())
    return 2 * tp / max(float(ref.sum() + hyp.sum()), 1.0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
