"""A corpus mixing good sessions with every kind of bad input finishes, and accounts for everything."""

import json
from pathlib import Path

import numpy as np
import pytest

from microturn.storage import read_parquet
from tests.media_helpers import SHARED_MEDIA, write_video, write_wav

pytestmark = pytest.mark.slow


def _write_video_only(path: Path, seconds: float = 2.0) -> Path:
    return write_video(path, n_frames=int(seconds * 10), fps=10, codec="mpeg4")


def _speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(np.float32)
    return (0.3 * env * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _bad_rows(d: Path, good_mp4: Path) -> dict[str, dict]:
    """session id -> manifest row, one per kind of bad input."""
    trunc = d / "truncated.mp4"
    trunc.write_bytes(good_mp4.read_bytes()[: good_mp4.stat().st_size // 3])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    speech = write_wav(d / "speech.wav", _speech(4.0), 16000)
    nan = _speech(4.0)
    nan[1000:2000] = np.nan
    rows = {
        "bad-truncated": {"video": {"uri": str(trunc)}, "audio": [{"uri": str(trunc), "speaker": None}]},
        "bad-zero-bytes": {"audio": [{"uri": str(d / "empty.mp4"), "speaker": "A"}]},
        "bad-text-as-mp4": {"audio": [{"uri": str(d / "text.mp4"), "speaker": "A"}]},
        "bad-audio-only-video": {"video": {"uri": str(speech)}, "audio": [{"uri": str(speech), "speaker": "A"}]},
        "bad-video-no-audio": {"video": {"uri": str(_write_video_only(d / "silent.mp4"))}},
        "bad-wrong-channel": {"audio": [{"uri": str(speech), "channel": 1, "speaker": "A"}]},
        "bad-nan-samples": {"audio": [{"uri": str(write_wav(d / "nan.wav", nan, 16000, codec="pcm_f32le")), "speaker": "A"}]},
        "bad-too-short": {"audio": [{"uri": str(write_wav(d / "short.wav", _speech(0.1), 16000)), "speaker": "A"}]},
        "bad-mismatched-durations": {"audio": [
            {"uri": str(write_wav(d / "long.wav", _speech(12.0, seed=1), 16000)), "speaker": "A"},
            {"uri": str(write_wav(d / "brief.wav", _speech(3.0, seed=2), 16000)), "speaker": "B"}]},
    }
    if SHARED_MEDIA.is_dir():
        for name in ("corrupted.mp4", "missing_wav_header.wav", "test1_empty.wav"):
            rows[f"shared-{name.split('.')[0].replace('_', '-')}"] = {"audio": [{"uri": str(SHARED_MEDIA / "broken" / name), "speaker": None}]}
    return {sid: {"session_id": sid, **row} for sid, row in rows.items()}


def test_bad_inputs_are_quarantined_with_reasons_and_good_ones_shard(small_corpus_media, build_cfg, tmp_path):
    from microturn.jobs.build import run_build
    from microturn.validate import validate_dataset

    good_rows = [json.loads(l) for l in Path(small_corpus_media).read_text().splitlines() if l.strip()]
    media_dir = Path(small_corpus_media).parent
    for row in good_rows:  # make URIs absolute so the manifest can live elsewhere
        for a in row["audio"]:
            a["uri"] = str((media_dir / a["uri"]).resolve())
        if row.get("video"):
            row["video"]["uri"] = str((media_dir / row["video"]["uri"]).resolve())
        if row.get("transcript"):
            row["transcript"]["uri"] = str((media_dir / row["transcript"]["uri"]).resolve())
    good_mp4 = Path(next(r["video"]["uri"] for r in good_rows if r.get("video")))
    bad = _bad_rows(tmp_path, good_mp4)
    manifest = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r) for r in good_rows] + [json.dumps(r) for r in bad.values()] + ["{broken json"]
    manifest.write_text("\n".join(lines) + "\n")

    out = tmp_path / "corpus"
    summary = run_build(str(manifest), str(out), build_cfg, progress=False)

    assert summary.sessions_ok == len(good_rows)
    assert summary.sessions_in == len(good_rows) + len(bad) + 1
    assert summary.sessions_ok + summary.quarantined == summary.sessions_in
    quarantine = {r["session_id"]: r for r in read_parquet(out / "quarantine.parquet").to_pylist()}
    for sid in bad:
        assert sid in quarantine, f"{sid} was neither sharded nor quarantined"
        row = quarantine[sid]
        assert row["reason"] and not row["reason"].startswith("internal"), (sid, row)
        assert row["stage"] in ("probe", "decode", "align") and row["message"], (sid, row)
    assert any(r["stage"] == "manifest" for r in quarantine.values())
    report = validate_dataset(str(out))
    assert report.ok, report.problems
