"""Importing what the align stage uses prints nothing: no torchcodec warning on every pyannote import."""

import subprocess
import sys


def test_pyannote_import_through_the_align_stage_is_quiet():
    code = "import microturn.pipeline.align, microturn.align.vad; import pyannote.audio; import whisperx"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "torchcodec" not in res.stderr, res.stderr[-2000:]
