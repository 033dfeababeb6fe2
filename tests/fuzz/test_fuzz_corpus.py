"""Corrupt corpora: a small real corpus (built by the shard writer) with bytes flipped, files cut short,
headers zeroed or files removed. The validator reports every change to a checksummed file and never
crashes; the reader yields samples or raises ``FormatError``, nothing else."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.format import FormatError, iter_dataset
from microturn.validate import validate_dataset
from tests.fuzz.fuzzkit import FUZZ, record

pytestmark = pytest.mark.slow

TOKENIZERS = {
    "audio": {"fingerprint": "untrained:0", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}
FILES = ("dataset.json", "index.parquet", "quarantine.parquet", "shards/shard-000000.tar")


@lru_cache(maxsize=1)
def _pristine() -> dict[str, bytes]:
    """The corpus' files (relative path -> bytes): one session of two windows and one rejection."""
    import tempfile

    from microturn.config import ChunkConfig, EventsConfig, ShardConfig
    from tests.factories import random_tokenized_session
    from microturn.pipeline.events import detect_events
    from microturn.pipeline.shard import ShardSink, finalize_dataset
    from microturn.records import Rejection

    out = Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    try:
        sink = ShardSink(str(out), ShardConfig(target_bytes=1))
        tok = random_tokenized_session("s0", 24000 * 4, seed=5, frame_hw=(4, 4))
        sink.add_session(tok.samples(detect_events(tok.activity, EventsConfig()),
                                      ChunkConfig(window_chunks=10, hop_chunks=10)))
        finalize_dataset(str(out), sink, config_hash="h" * 64, tokenizers=TOKENIZERS,
                         rejections=[Rejection("bad", "/in/bad.wav", "probe", "not_media", "x")], sessions_in=2)
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    finally:
        shutil.rmtree(out)


@st.composite
def corruption(draw) -> tuple[str, bytes | None]:
    """(file, its new bytes or None for removed)."""
    name = draw(st.sampled_from(FILES))
    data = bytearray(_pristine()[name])
    op = draw(st.sampled_from(["flip", "flip", "cut", "zero_block", "insert", "remove", "empty"]))
    if op == "flip":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
    elif op == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif op == "zero_block":
        at = draw(st.integers(0, len(data) // 512)) * 512
        data[at : at + 512] = bytes(len(data[at : at + 512]))
    elif op == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=600))
    elif op == "remove":
        return name, None
    else:
        data = bytearray()
    return name, bytes(data)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@FUZZ
@given(change=corruption())
def test_every_corrupt_corpus_is_reported_and_read_or_refused(tmp_path, change):
    root = tmp_path / "corpus"  # written once; each case changes one file and puts it back
    pristine = _pristine()
    if not root.exists():
        _write(root, pristine)
    name, data = change
    if data is None:
        (root / name).unlink()
    else:
        (root / name).write_bytes(data)
    report = validate_dataset(str(root), deep=True)  # must not raise
    changed = data != pristine[name]
    if changed and name != "dataset.json":  # every other file is checksummed in dataset.json
        assert not report.ok, (name, data is None)
    try:
        n = sum(1 for _ in iter_dataset(str(root), decode=True))
        read = f"read{n}"
    except FormatError as exc:
        read = exc.code
    record("corrupt_corpus", ("ok" if report.ok else "invalid") + f"/{read}")
    (root / name).write_bytes(pristine[name])  # back to pristine for the next case
