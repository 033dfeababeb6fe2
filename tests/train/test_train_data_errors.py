"""Training survives real corpora: audio-only sessions train, and a sample damaged after the build is
skipped and counted by reason (metrics.jsonl), failing the run only past ``data.max_bad_fraction``."""

from __future__ import annotations

import ast
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from microturn.errors import TrainDataError
from microturn.train.corpus import read_corpus
from microturn.train.examples import build_example
from microturn.train.loader import TrainLoader
from microturn.train.loop import example_spec, main, resolve_config, train

from train_corpus_util import derive_corpus, make_sample

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _header(data: bytes, **changes: object) -> bytes:
    """The .npy with its header dict changed in place (same length, data untouched): what a flipped
    byte or a crafted file gives."""
    hlen = int.from_bytes(data[8:10], "little")
    header = ast.literal_eval(data[10 : 10 + hlen].decode("latin1"))
    header.update(changes)
    text = repr(header).encode("latin1")
    assert len(text) < hlen
    return data[:10] + text.ljust(hlen - 1) + b"\n" + data[10 + hlen :]


def _with(member: str, fn):
    def edit(members: dict[str, bytes]) -> dict[str, bytes]:
        members[member] = fn(members[member])
        return members

    return edit


def _drop(member: str):
    def edit(members: dict[str, bytes]) -> dict[str, bytes]:
        del members[member]
        return members

    return edit


def _codes_with(value: int):
    def change(data: bytes) -> bytes:
        codes = _load(data).copy()
        codes[1, 0, 7] = value
        return _npy(codes)

    return change


def _meta_with(**fields: object):
    return lambda data: json.dumps(json.loads(data) | fields).encode()


# one way to damage a sample per row: (member edit, the reason it is counted under)
DAMAGE = {
    "npy_magic": (_with("codes.npy", lambda d: b"\x00" * 6 + d[6:]), "bad_npy"),
    "npy_negative_dims": (_with("codes.npy", lambda d: _header(d, shape=(-2, 8, 150))), "bad_npy"),
    "npy_short_data": (_with("text.npy", lambda d: d[:-40]), "bad_npy"),
    "codes_uint16": (_with("codes.npy", lambda d: _header(d, descr="<u2")), "bad_dtype"),
    "codes_big_endian": (_with("codes.npy", lambda d: _header(d, descr=">i2")), "bad_dtype"),
    "text_int16": (_with("text.npy", lambda d: _npy(_load(d).astype(np.int16))), "bad_dtype"),
    "frames_float": (_with("frames.npy", lambda d: _npy(_load(d).astype(np.float16))), "bad_dtype"),
    "zero_streams": (_with("codes.npy", lambda d: _header(d, shape=(0, 8, 150))), "bad_shape"),
    "frames_wrong_grid": (_with("frames.npy", lambda d: _npy(_load(d)[:, :4])), "bad_shape"),
    "token_too_large": (_with("codes.npy", _codes_with(5000)), "token_out_of_range"),
    "token_negative": (_with("codes.npy", _codes_with(-3)), "token_out_of_range"),
    "text_token_too_large": (_with("text.npy", lambda d: _npy(_load(d) + 1000)), "token_out_of_range"),
    "meta_not_json": (_with("meta.json", lambda d: d[:-5]), "bad_meta"),
    "meta_deep": (_with("meta.json", lambda d: b"[" * 200_000 + b"]" * 200_000), "bad_meta"),
    "meta_huge": (_with("meta.json", lambda d: json.dumps({"pad": "x" * (2 << 20)}).encode()), "bad_meta"),
    "meta_not_object": (_with("meta.json", lambda d: b"[1, 2]"), "bad_meta"),
    "meta_negative_valid_frames": (_with("meta.json", _meta_with(valid_frames=-5)), "bad_meta"),
    "missing_text": (_drop("text.npy"), "missing_member"),
}


def _cfg(tiny_cfg, corpus: Path, **data):
    cfg = tiny_cfg.replace(data={"shuffle_buffer": 0, "eval_shards": 0, **data})
    return resolve_config(cfg, read_corpus(str(corpus)))


def _loader(cfg, corpus: Path) -> TrainLoader:
    info = read_corpus(str(corpus))
    return TrainLoader(info.shard_uris, example_spec(cfg), cfg, expected_fp=cfg.fingerprints.model_dump(),
                       shard_samples=info.shard_samples)  # fmt: skip


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- audio-only sessions


def test_an_audio_only_sample_trains_with_every_chunk_frameless(tiny_cfg, train_corpus):
    # what the build writes for a session without video: frames [0, h, w], frame_chunks [0]
    cfg = _cfg(tiny_cfg, train_corpus)
    spec = example_spec(cfg)
    raw = make_sample(np.random.default_rng(0), "call", 0, chunks=spec.window_chunks)
    raw["frames.npy"] = _npy(np.zeros((0, 8, 8), dtype=np.int16))
    raw["frame_chunks.npy"] = _npy(np.zeros(0, dtype=np.int32))
    ex = build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})
    assert (ex["frames"] == spec.frame_vocab).all() and ex["valid"].all()
    assert np.array_equal(ex["model_codes"], _load(raw["codes.npy"])[0, : spec.codebooks])


@pytest.mark.slow
def test_an_audio_only_corpus_trains_end_to_end(audio_only_corpus, tmp_path, capsys):
    # a corpus built by the real pipeline from a two-channel call without video
    doc = json.loads((audio_only_corpus / "dataset.json").read_text())
    assert doc["totals"]["samples"] >= 2
    rc = main(["--config", str(REPO / "configs" / "train_tiny.yaml"), "--data", str(audio_only_corpus),
               "--out", str(tmp_path / "run"), "run.max_steps=4", "run.log_every=2", "run.ckpt_every=0",
               "data.eval_shards=0"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(m["loss"] > 0 and m["bad_samples"] == 0 for m in metrics)
    # the frame grid comes from the build's [0, h, w] frames although no sample has a frame
    assert "frame_tokens: 64" in (tmp_path / "run" / "config.yaml").read_text()


# ---------------------------------------------------------------- damaged samples


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_sample_is_skipped_and_counted_by_reason(tiny_cfg, train_corpus, tmp_path, damage):
    edit, reason = DAMAGE[damage]
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6)], edit={2: edit})
    cfg = _cfg(tiny_cfg, corpus, max_bad_fraction=0.2, window_chunks=10, batch_size=5)
    loader = _loader(cfg, corpus)
    # the 5 good windows, 2 roles each: two batches per epoch; three epochs
    batches = [next(loader) for _ in range(6)]
    assert loader.bad.by_reason() == {reason: 1}  # once, though it was met in three epochs and two roles
    assert list(loader.bad.entries) == [f"shard-000000.tar:{_key(train_corpus, 2)}"]
    # what was laid out is the good samples only: every row holds real, in-range tokens
    spec = example_spec(cfg)
    for b in batches:
        assert int(b["model_codes"].max()) <= spec.audio_vocab and int(b["model_codes"].min()) >= 0
    assert loader.state_dict()["bad"] == {f"shard-000000.tar:{_key(train_corpus, 2)}": [reason, 1]}


def _key(corpus: Path, index: int) -> str:
    from microturn.format import iter_dataset

    for i, (key, _) in enumerate(iter_dataset(str(corpus))):
        if i == index:
            return key
    raise AssertionError(index)


def test_a_truncated_shard_counts_the_samples_it_loses(tiny_cfg, train_corpus, tmp_path):
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6), range(6, 12)])
    shard = corpus / "shards" / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == f"{_key(train_corpus, 3)}.codes.npy")
    with open(shard, "r+b") as fh:  # a copy cut short inside sample 3's codes
        fh.truncate(member.offset_data + 100)
    cfg = _cfg(tiny_cfg, corpus, max_bad_fraction=0.25, window_chunks=10)
    loader = _loader(cfg, corpus)
    for _ in range(8):
        next(loader)
    # samples 3, 4 and 5 are lost (dataset.json lists 6, three were read before the damage)
    assert loader.bad.by_reason() == {"bad_tar": 3}
    assert list(loader.bad.entries) == ["shard-000000.tar:@3"]


def test_bad_samples_go_into_metrics_and_the_checkpoint(tiny_cfg, train_corpus, tmp_path):
    edits = {1: DAMAGE["codes_uint16"][0], 8: DAMAGE["meta_deep"][0]}
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6), range(6, 12)], edit=edits)
    cfg = tiny_cfg.replace(data={"eval_shards": 0, "max_bad_fraction": 2 / 12},
                           run={"max_steps": 8, "log_every": 4, "ckpt_every": 8})  # fmt: skip
    summary = train(cfg, str(corpus), tmp_path / "run")
    assert summary["steps"] == 8
    last = read_metrics(tmp_path / "run")[-1]
    assert last["bad_samples"] == 2 and last["bad_samples_by_reason"] == {"bad_dtype": 1, "bad_meta": 1}
    from microturn.train.checkpoint import load_checkpoint

    state = load_checkpoint(Path(summary["checkpoint"]), torch.device("cpu"))
    assert sorted(r for r, _ in state["loaders"][0]["bad"].values()) == ["bad_dtype", "bad_meta"]


def test_the_run_fails_past_the_bad_fraction_naming_the_counts(tiny_cfg, train_corpus, tmp_path):
    edits = {1: DAMAGE["codes_uint16"][0], 4: DAMAGE["token_too_large"][0]}
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6), range(6, 12)], edit=edits)
    cfg = tiny_cfg.replace(data={"eval_shards": 0, "shuffle_buffer": 0, "max_bad_fraction": 0.1},
                           run={"max_steps": 20, "log_every": 1})  # fmt: skip
    with pytest.raises(TrainDataError, match="too_many_bad_samples") as err:  # 2 of 12 > 10 %: 1 allowed
        train(cfg, str(corpus), tmp_path / "run")
    message = str(err.value)
    assert "'bad_dtype': 1" in message and "'token_out_of_range': 1" in message and "of 12" in message


def test_the_bad_fraction_limit_holds_in_dataloader_workers(tiny_cfg, train_corpus, tmp_path):
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6)], edit={0: DAMAGE["npy_magic"][0],
                                                                           3: DAMAGE["missing_text"][0]})  # fmt: skip
    cfg = _cfg(tiny_cfg, corpus, num_workers=1, prefetch_factor=1, max_bad_fraction=0.2)
    loader = _loader(cfg, corpus)
    with pytest.raises(TrainDataError, match="too_many_bad_samples") as err:
        for _ in range(6):
            next(loader)
    assert err.value.reason == "too_many_bad_samples"


def test_a_damaged_first_sample_does_not_stop_config_resolution(tiny_cfg, train_corpus, tmp_path):
    corpus = derive_corpus(train_corpus, tmp_path / "c", [range(6)],
                           edit={0: _with("frames.npy", lambda d: b"junk" + d[4:])})  # fmt: skip
    cfg = _cfg(tiny_cfg, corpus)
    assert cfg.model.frame_tokens == 64
