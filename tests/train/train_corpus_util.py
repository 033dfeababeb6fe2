"""Writes small corpora in the format of docs/format.md with a plain webdataset.TarWriter (test helper)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import numpy as np

FINGERPRINTS = {"audio": "encodec_24khz/6kbps/untrained:0", "frames": "fsq/8-5-5-5/untrained:0", "text": "bytes/utf8/V260"}
VOCAB = {"audio": 1024, "frames": 1000, "text": 260}
FRAMES_PER_CHUNK = 15


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def make_sample(
    rng: np.random.Generator,
    session: str,
    window: int,
    *,
    chunks: int = 8,
    streams: int = 2,
    codebooks: int = 4,
    frame_hw: tuple[int, int] = (4, 4),
    valid_frames: Optional[int] = None,
    fingerprints: Optional[dict[str, str]] = None,
) -> dict[str, bytes]:
    """One window: codes int16 [S, K, F], activity uint8 [S, F], text int32 [S, F], video tokens."""
    F = chunks * FRAMES_PER_CHUNK
    valid = F if valid_frames is None else valid_frames
    # some structure to learn: each stream hums a slowly changing code, with noise on the upper codebooks
    base = rng.integers(0, VOCAB["audio"], size=(streams, 1, 1))
    drift = (np.arange(F) // 5)[None, None, :]
    codes = (base + drift * (1 + np.arange(codebooks))[None, :, None]) % VOCAB["audio"]
    codes = codes + (rng.random((streams, codebooks, F)) < 0.1) * rng.integers(0, 50, size=(streams, codebooks, F))
    codes = (codes % VOCAB["audio"]).astype(np.int16)
    codes[:, :, valid:] = 0
    text = np.full((streams, F), 256, dtype=np.int32)  # PAD
    for s in range(streams):
        for start in range(int(rng.integers(0, 10)), valid, 20):
            word = rng.integers(97, 123, size=3)
            text[s, start] = 257  # EPAD before a word
            text[s, start + 1 : start + 4] = word[: max(0, min(3, valid - start - 1))]
    activity = (text != 256).astype(np.uint8)
    n_frames = chunks
    frames = rng.integers(0, VOCAB["frames"], size=(n_frames, *frame_hw)).astype(np.int16)
    frame_chunks = np.arange(n_frames, dtype=np.int32)
    meta = {
        "format_version": 1,
        "session_id": session,
        "window_index": window,
        "start_frame": window * F,
        "num_frames": F,
        "valid_frames": valid,
        "start_sample": window * F * 320,
        "speakers": [f"spk{s}" for s in range(streams)],
        "sources": {},
        "fingerprints": fingerprints or FINGERPRINTS,
        "quality": {},
    }
    return {
        "__key__": f"{session}-{window:06d}",
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
        "codes.npy": _npy(codes),
        "activity.npy": _npy(activity),
        "text.npy": _npy(text),
        "words.json": b"[]",
        "frames.npy": _npy(frames),
        "frame_chunks.npy": _npy(frame_chunks),
        "events.json": b"[]",
    }


def write_corpus(
    root: Path,
    samples_per_shard: list[int],
    *,
    seed: int = 0,
    fingerprints: Optional[dict[str, str]] = None,
    **sample_kw,
) -> Path:
    """A corpus folder: shards/shard-NNNNNN.tar (one per entry of ``samples_per_shard``) + dataset.json."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, n in enumerate(samples_per_shard):
        name = f"shard-{i:06d}.tar"
        with wds.TarWriter(str(shard_dir / name), mtime=0) as sink:
            for j in range(n):
                # the last window of each session is padded: valid_frames < num_frames
                session = f"sess-{i:03d}-{j // 3:03d}"
                valid = None if j % 3 != 2 else 100
                sink.write(make_sample(rng, session, j % 3, valid_frames=valid, fingerprints=fingerprints, **sample_kw))
        entries.append({"name": name, "samples": n})
    dataset = {
        "format_version": 1,
        "fingerprints": fingerprints or FINGERPRINTS,
        "vocab": VOCAB,
        "shards": entries,
        "totals": {"samples": sum(samples_per_shard)},
    }
    (root / "dataset.json").write_text(json.dumps(dataset, sort_keys=True, indent=2))
    return root
