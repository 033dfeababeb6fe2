"""A corpus mixing good sessions with every kind of bad input finishes, and accounts for everything."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.jobs.util import REPO

pytestmark = pytest.mark.slow
SHARED = REPO.parent / "shared" / "media"


def _write_wav(path: Path, wave: np.ndarray, rate: int = 16000, codec: str = "pcm_s16le") -> Path:
    import av

    fmt = "flt" if codec == "pcm_f32le" else "s16"
    layout = "mono" if wave.ndim == 1 else "stereo"
    data = wave.reshape(1, -1) if wave.ndim == 1 else wave.T.reshape(1, -1)
    if fmt == "s16":
        data = (np.clip(data, -1, 1) * 32767).astype(np.int16)
    else:
        data = data.astype(np.float32)
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _write_video_only(path: Path, seconds: float = 2.0) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * 10)):
            img = np.full((48, 64, 3), (i * 10) % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


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
    speech = _write_wav(d / "speech.wav", _speech(4.0))
    nan = _speech(4.0)
    nan[1000:2000] = np.nan
    rows = {
        "bad-truncated": {"video": {"uri": str(trunc)}, "audio": [{"uri": str(trunc), "speaker": None}]},
        "bad-zero-bytes": {"audio": [{"uri": str(d / "empty.mp4"), "speaker": "A"}]},
        "bad-text-as-mp4": {"audio": [{"uri": str(d / "text.mp4"), "speaker": "A"}]},
        "bad-audio-only-video": {"video": {"uri": str(speech)}, "audio": [{"uri": str(speech), "speaker": "A"}]},
        "bad-video-no-audio": {"video": {"uri": str(_write_video_only(d / "silent.mp4"))}},
        "bad-wrong-channel": {"audio": [{"uri": str(speech), "channel": 1, "speaker": "A"}]},
        "bad-nan-samples": {"audio": [{"uri": str(_write_wav(d / "nan.wav", nan, codec="pcm_f32le")), "speaker": "A"}]},
        "bad-too-short": {"audio": [{"uri": str(_write_wav(d / "short.wav", _speech(0.1))), "speaker": "A"}]},
        "bad-mismatched-durations": {"audio": [
            {"uri": str(_write_wav(d / "long.wav", _speech(12.0, seed=1))), "speaker": "A"},
            {"uri": str(_write_wav(d / "brief.wav", _speech(3.0, seed=2))), "speaker": "B"}]},
    }
    if SHARED.is_dir():
        for name in ("corrupted.mp4", "missing_wav_header.wav", "test1_empty.wav"):
            rows[f"shared-{name.split('.')[0].replace('_', '-')}"] = {"audio": [{"uri": str(SHARED / "broken" / name), "speaker": None}]}
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
    quarantine = {r["session_id"]: r for r in pq.read_table(out / "quarantine.parquet").to_pylist()}
    for sid in bad:
        assert sid in quarantine, f"{sid} was neither sharded nor quarantined"
        row = quarantine[sid]
        assert row["reason"] and not row["reason"].startswith("internal"), (sid, row)
        assert row["stage"] in ("probe", "decode", "align") and row["message"], (sid, row)
    assert any(r["stage"] == "manifest" for r in quarantine.values())
    report = validate_dataset(str(out))
    assert report.ok, report.problems
