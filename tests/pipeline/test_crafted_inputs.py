"""Crafted inputs cost bounded time and memory: each session is quarantined with a specific reason
within 10 s and under 500 MB of peak RSS (the whole session runner, measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media_helpers import burst, write_wav
from tests.pipeline.crafted import pcm_with_timestamp_jump

pytestmark = pytest.mark.slow

# Runs one session through process_session in this fresh process. Tokenization happens in actors
# in a build, and every session here must be refused before it: the tokenizer refuses to be used.
_RUNNER = """
import json, resource, sys, time
from microturn.config import BuildConfig
from microturn.manifest import SessionSpec
from microturn.pipeline.session import process_session
from microturn.records import StageError

class NotReached:
    text_pad_id = 0
    def tokenize(self, aligned):
        raise AssertionError("the session reached tokenization")
    def describe(self):
        return {}

spec = SessionSpec.model_validate_json(sys.argv[1])
cfg = BuildConfig.model_validate({"align": {"vad": "energy"}})
t0 = time.perf_counter()
try:
    process_session(spec, cfg, NotReached(), write=list)
    outcome = {"ok": True}
except StageError as exc:
    outcome = {"stage": exc.stage, "reason": exc.reason, "message": exc.message}
outcome["seconds"] = time.perf_counter() - t0
# VmHWM: this process image's peak RSS. ru_maxrss would also count the parent's peak (Linux keeps the
# high-water mark across fork + exec, and the pytest parent may hold torch).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome["peak_rss_mb"] = kb / 1024
print(json.dumps(outcome))
"""


def _run(spec: dict) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps({"session_id": "crafted", **spec})],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    print(outcome)  # the figures, for the record (pytest -s)
    return outcome


def test_a_transcript_time_of_1e999999999_is_quarantined_fast_and_small(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", burst(16000, 3.0, [(0.5, 2.0)]), 16000)
    stm = tmp_path / "t.stm"
    stm.write_text("rec 1 A 0.5 1e999999999 hello there\n")
    out = _run({"audio": [{"uri": str(wav), "speaker": "A"}], "transcript": {"uri": str(stm), "format": "stm"}})
    assert (out.get("stage"), out.get("reason")) == ("align", "bad_transcript"), out
    assert out["seconds"] < 10 and out["peak_rss_mb"] < 500, out


def test_a_wav_whose_timestamps_jump_by_10_hours_is_quarantined_fast_and_small(tmp_path: Path) -> None:
    wav = pcm_with_timestamp_jump(tmp_path / "jump.wav", jump_s=10 * 3600)
    out = _run({"audio": [{"uri": str(wav), "speaker": "A"}]})
    assert (out.get("stage"), out.get("reason")) == ("decode", "too_long"), out
    assert "jump by 36000.0 s" in out["message"]
    assert out["seconds"] < 10 and out["peak_rss_mb"] < 500, out
