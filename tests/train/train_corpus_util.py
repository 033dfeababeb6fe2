"""Test helpers for corpora in the format of docs/format.md.

* ``derive_corpus`` re-shards the samples of a REAL built corpus (their tar members byte for byte) into
  another shard layout, for tests that need one the build does not give (uneven shards, a two-sample
  corpus to memorise).
* ``make_sample`` / ``write_corpus`` write hand-made samples, for unit tests that need a special sample
  (a padded tail, a pickle, foreign tokenizer fingerprints).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

FINGERPRINTS = {
    "audio": "encodec24k/6kbps/K8/V1024/untrained:0",
    "frames": "fsq/64px/d8/L8x5x5x5/h64/V1000/untrained:0",
    "text": "bytes/utf8/V260",
}
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
    frame_hw: tuple[int, int] = (8, 8),
    valid_frames: Optional[int] = None,
    fingerprints: Optional[dict[str, str]] = None,
) -> dict[str, bytes]:
    """One window: codes int16 [S, K, F], activity uint8 [S, F], text int32 [S, F], video tokens."""
    F = chunks * FRAMES_PER_CHUNK
    valid = F if valid_frames is None else valid_frames
    # some structure: each stream hums a slowly changing code, with noise on the upper codebooks
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
    frames = rng.integers(0, VOCAB["frames"], size=(chunks, *frame_hw)).astype(np.int16)
    frame_chunks = np.arange(chunks, dtype=np.int32)
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
        "stats": {},
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


def _dataset_json(fingerprints: dict[str, str], codebooks: int, shards: list[dict]) -> dict:
    """A dataset.json in the layout the build writes (docs/format.md), for hand-made shards."""
    return {
        "format": "microturn",
        "format_version": 1,
        "tokenizers": {
            "audio": {"fingerprint": fingerprints["audio"], "vocab_size": VOCAB["audio"], "codebooks": codebooks},
            "frames": {"fingerprint": fingerprints["frames"], "vocab_size": VOCAB["frames"]},
            "text": {"fingerprint": fingerprints["text"], "vocab_size": VOCAB["text"]},
        },
        "shards": shards,
        "totals": {"samples": sum(s["samples"] for s in shards), "shards": len(shards)},
    }


def write_corpus(
    root: Path,
    samples_per_shard: list[int],
    *,
    seed: int = 0,
    fingerprints: Optional[dict[str, str]] = None,
    **sample_kw,
) -> Path:
    """A hand-made corpus: shards/shard-NNNNNN.tar (one per entry of ``samples_per_shard``, written with a
    plain webdataset.TarWriter) + dataset.json."""
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
    doc = _dataset_json(fingerprints or FINGERPRINTS, sample_kw.get("codebooks", 4), entries)
    (root / "dataset.json").write_text(json.dumps(doc, sort_keys=True, indent=2))
    return root


Edit = Callable[[dict[str, bytes]], dict[str, bytes]]


def derive_corpus(
    source: Path, root: Path, layout: Sequence[Sequence[int]], edit: Optional[Mapping[int, Edit]] = None
) -> Path:
    """A corpus whose shard i holds the samples ``layout[i]`` (indices into the source corpus' samples,
    in shard order), copied byte for byte with the build's own tar writer; dataset.json is the source's
    with the shard list replaced. ``edit[j]`` rewrites the members of sample j on the way (to damage it
    after the build, as a disk or a bad copy would)."""
    from microturn.format import TarStream, iter_dataset

    samples = list(iter_dataset(str(source)))
    doc = json.loads((source / "dataset.json").read_text())
    (root / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, picks in enumerate(layout):
        name = f"shard-{i:06d}.tar"
        with open(root / "shards" / name, "wb") as fh:
            stream = TarStream(fh)
            for j in picks:
                key, members = samples[j]
                stream.add_sample(key, (edit or {}).get(j, dict)(dict(members)))
            stream.finish()
        entries.append({"name": name, "samples": len(picks), "bytes": stream.bytes,
                        "sha256": stream.sha256.hexdigest()})  # fmt: skip
    doc["shards"] = entries
    doc["totals"] = dict(doc.get("totals", {}), samples=sum(len(p) for p in layout), shards=len(layout))
    (root / "dataset.json").write_text(json.dumps(doc, sort_keys=True))
    return root
