"""The training loader: reads the corpus format safely, picks roles, crops, and resumes exactly."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from microturn.errors import TrainDataError
from microturn.train.config import ModelConfig
from microturn.train.corpus import TRAIN_MEMBERS, iter_raw_samples, read_corpus, shards_for, split_train_eval
from microturn.train.examples import build_example, example_members
from microturn.train.loader import TrainLoader
from microturn.train.stream import Position
from microturn.train.loop import example_spec, resolve_config

from train_corpus_util import FINGERPRINTS, derive_corpus, make_sample, write_corpus

torch.set_num_threads(1)


@pytest.fixture()
def resolved(tiny_cfg, train_corpus):
    corpus = read_corpus(str(train_corpus))
    cfg = resolve_config(tiny_cfg, corpus)
    return cfg, corpus, example_spec(cfg)


def _loader(cfg, corpus, spec, **kw) -> TrainLoader:
    train, _ = split_train_eval(corpus, cfg)
    return TrainLoader(train, spec, cfg, expected_fp=cfg.fingerprints.model_dump(), **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- corpus


def test_corpus_description_comes_from_dataset_json(train_corpus):
    doc = json.loads((train_corpus / "dataset.json").read_text())
    corpus = read_corpus(str(train_corpus))
    assert corpus.shard_uris == tuple(str(train_corpus / "shards" / s["name"]) for s in doc["shards"])
    read = ("audio", "frames", "text")  # what the model reads; the demo corpus also holds dmel and pixels
    assert corpus.fingerprints == {k: doc["tokenizers"][k]["fingerprint"] for k in read}
    assert corpus.vocab == {k: doc["tokenizers"][k]["vocab_size"] for k in read}
    assert {"dmel", "pixels"} <= set(doc["tokenizers"])
    assert corpus.codebooks == doc["tokenizers"]["audio"]["codebooks"] == 8
    assert corpus.samples == 12


@pytest.mark.parametrize(
    "path, reason",
    [
        (("tokenizers", "audio", "vocab_size"), "tokenizers.audio.vocab_size"),
        (("tokenizers", "frames", "fingerprint"), "tokenizers.frames.fingerprint"),
        (("tokenizers", "audio", "codebooks"), "tokenizers.audio.codebooks"),
        (("shards",), "shards"),
    ],
)
def test_a_dataset_json_missing_a_key_is_a_clear_error(train_corpus, tmp_path, path, reason):
    doc = json.loads((train_corpus / "dataset.json").read_text())
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(TrainDataError, match="bad_dataset_json") as err:
        read_corpus(str(tmp_path))
    assert reason in str(err.value)


def test_a_dataset_listing_no_shards_is_refused(train_corpus, tmp_path):
    doc = json.loads((train_corpus / "dataset.json").read_text()) | {"shards": []}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(TrainDataError, match="no_shards"):
        read_corpus(str(tmp_path))


@pytest.mark.parametrize("video, dropped, named", [
    ("none", "codes.npy", "codes.npy"),
    ("tokens", "frames.npy", "frames.npy"),
    ("none", "frames.npy", None),  # an audio-only model does not read frame tokens
])
def test_a_corpus_without_a_member_the_model_reads_is_refused_when_opened(train_corpus, tmp_path, video, dropped,
                                                                            named):
    doc = json.loads((train_corpus / "dataset.json").read_text())
    doc["members"] = [m for m in doc["members"] if m["suffix"] != dropped]
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    needs = example_members(ModelConfig(video=video))
    if named is None:
        assert read_corpus(str(tmp_path), needs).samples == 12
        return
    with pytest.raises(TrainDataError) as err:
        read_corpus(str(tmp_path), needs)
    assert err.value.code == "missing_member"
    assert f"the model reads {named}," in err.value.message
    held = err.value.message.split("it holds ", 1)[1]  # what the corpus holds, dMel and pixels among them
    assert "dmel.npy" in held and "pixels.npy" in held and dropped not in held


def test_the_training_run_refuses_a_corpus_without_codes(tiny_cfg, train_corpus, tmp_path):
    from microturn.train.loop import train

    doc = json.loads((train_corpus / "dataset.json").read_text())
    doc["members"] = [m for m in doc["members"] if m["suffix"] != "codes.npy"]
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(TrainDataError, match="missing_member") as err:
        train(tiny_cfg, str(tmp_path), tmp_path / "run")
    assert "codes.npy" in err.value.message


def test_extra_members_do_not_stop_training_reads(train_corpus):
    """The demo corpus holds dMel and pixels too: a codes model opens it; only the trainer's members are
    kept from a shard (as views, decoded only when the model variant reads them)."""
    corpus = read_corpus(str(train_corpus), example_members(ModelConfig()))
    raw = next(iter_raw_samples(corpus.shard_uris[0]))
    assert "codes.npy" in raw and set(raw) - {"__key__", "__url__"} <= set(TRAIN_MEMBERS)


def test_batches_hold_the_real_samples_tokens(tiny_cfg, train_corpus):
    from microturn.format import decode_sample, iter_samples

    corpus = read_corpus(str(train_corpus))
    # whole windows (10 chunks), stream 0 as the model, shard order: batch row i is sample i of shard 0
    cfg = resolve_config(tiny_cfg.replace(data={"shuffle_buffer": 0, "roles": "first", "window_chunks": 10,
                                                "eval_shards": 0}), corpus)  # fmt: skip
    loader = TrainLoader(corpus.shard_uris[:1], example_spec(cfg), cfg, expected_fp=cfg.fingerprints.model_dump())
    batch = next(loader)
    K = cfg.model.codebooks
    for i, (key, members) in enumerate(list(iter_samples(corpus.shard_uris[0]))[:4]):
        s = decode_sample(members, key)
        codes, text = s.arrays["codes.npy"], s.arrays["text.npy"]
        valid = s.meta["valid_frames"]
        assert np.array_equal(batch["model_codes"][i, :, :valid].numpy(), codes[0, :K, :valid])
        assert np.array_equal(batch["user_codes"][i, :, :valid].numpy(), codes[1, :K, :valid])
        assert np.array_equal(batch["model_text"][i, :valid].numpy(), text[0, :valid])
        assert np.array_equal(batch["user_text"][i, :valid].numpy(), text[1, :valid])
        assert int(batch["valid"][i].sum()) == valid
        frames = batch["frames"][i]
        for frame, chunk in zip(s.arrays["frames.npy"], s.arrays["frame_chunks.npy"]):
            assert np.array_equal(frames[chunk].numpy(), frame.reshape(-1))


def test_config_is_resolved_against_the_corpus(resolved):
    cfg, corpus, spec = resolved
    assert (cfg.model.audio_vocab, cfg.model.text_vocab, cfg.model.frame_vocab) == (1024, 260, 1000)
    assert cfg.model.frame_tokens == 64  # 8 x 8 frame tokens in the built corpus
    assert {k: v for k, v in cfg.fingerprints.model_dump().items() if v is not None} == corpus.fingerprints
    assert cfg.fingerprints.dmel is None and cfg.fingerprints.pixels is None  # read by other variants only
    assert spec.frames == cfg.data.window_chunks * 15


def test_a_model_configured_for_other_tokenizers_refuses_the_corpus(tiny_cfg, train_corpus):
    cfg = tiny_cfg.replace(fingerprints={"audio": "encodec_24khz/12kbps/some-other"})
    with pytest.raises(TrainDataError, match="fingerprint_mismatch"):
        resolve_config(cfg, read_corpus(str(train_corpus)))


def test_a_shard_from_another_tokenizer_is_refused_while_reading(tiny_cfg, train_corpus, tmp_path):
    root = derive_corpus(train_corpus, tmp_path / "c", [[0, 1]])
    foreign = dict(FINGERPRINTS, text="hf/V32004/sha256:abcd")
    write_corpus(tmp_path / "other", [2], fingerprints=foreign)
    (tmp_path / "other" / "shards" / "shard-000000.tar").rename(root / "shards" / "shard-000001.tar")
    doc = json.loads((root / "dataset.json").read_text())
    doc["shards"].append({"name": "shard-000001.tar", "samples": 2})  # listed as if the build wrote it
    (root / "dataset.json").write_text(json.dumps(doc))
    corpus = read_corpus(str(root))
    cfg = resolve_config(tiny_cfg.replace(data={"shuffle_buffer": 0, "eval_shards": 0}), corpus)
    loader = TrainLoader(corpus.shard_uris, example_spec(cfg), cfg, expected_fp=cfg.fingerprints.model_dump())
    with pytest.raises(TrainDataError, match="fingerprint_mismatch"):
        for _ in range(20):
            next(loader)


# ---------------------------------------------------------------- never unpickle


def test_pickled_arrays_are_refused_not_loaded(resolved, tmp_path):
    cfg, _, spec = resolved
    raw = make_sample(np.random.default_rng(0), "s", 0)
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    raw["codes.npy"] = buf.getvalue()
    with pytest.raises(TrainDataError, match="bad_npy"):
        build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})


def test_pickle_members_are_never_read(tmp_path):
    import webdataset as wds

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    sample = make_sample(np.random.default_rng(0), "s", 0)
    sample["extra.pyd"] = pickle.dumps(Boom())
    with wds.TarWriter(str(tmp_path / "x.tar")) as sink:
        sink.write(sample)
    (got,) = list(iter_raw_samples(str(tmp_path / "x.tar")))
    assert "extra.pyd" not in got and "codes.npy" in got


# ---------------------------------------------------------------- examples


def test_roles_swap_the_streams(resolved):
    cfg, _, spec = resolved
    raw = make_sample(np.random.default_rng(1), "s", 0)
    a = build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})
    b = build_example(raw, 1, spec, seed=0, epoch=1, expected_fp={})
    codes = np.load(io.BytesIO(raw["codes.npy"]))
    # the crop offset differs between the two; compare each with the source at its own offset
    for ex, model_stream in ((a, 0), (b, 1)):
        user_stream = 1 - model_stream
        f = _find_offset(codes[model_stream, : spec.codebooks], ex["model_codes"])
        assert np.array_equal(ex["user_codes"], codes[user_stream, : spec.codebooks, f : f + spec.frames])


def _find_offset(source_KF: np.ndarray, window_KF: np.ndarray) -> int:
    for f in range(0, source_KF.shape[1] - window_KF.shape[1] + 1, 15):
        if np.array_equal(source_KF[:, f : f + window_KF.shape[1]], window_KF):
            return f
    raise AssertionError("window not found at any chunk offset")


def test_crops_are_chunk_aligned_inside_real_audio_and_padding_is_masked(resolved):
    cfg, _, spec = resolved
    rng = np.random.default_rng(2)
    raw = make_sample(rng, "s", 0, chunks=8, valid_frames=100)  # 6.67 chunks of real audio
    codes = np.load(io.BytesIO(raw["codes.npy"]))
    starts = set()
    for epoch in range(40):
        ex = build_example(raw, 0, spec, seed=0, epoch=epoch, expected_fp={})
        if ex["valid"].all():
            starts.add(_find_offset(codes[0, : spec.codebooks], ex["model_codes"]) // 15)
        else:
            # a window reaching past the real audio: its tail is the absent token, masked from the loss
            n = int(ex["valid"].sum())
            assert (ex["model_codes"][:, n:] == spec.audio_vocab).all()
            assert (ex["model_text"][n:] == spec.text_vocab).all()
            assert ex["valid"][:n].all()
    assert len(starts) > 1  # offsets vary with the epoch
    assert max(starts) <= 7 - spec.window_chunks


def test_short_windows_are_padded(resolved):
    cfg, _, spec = resolved
    raw = make_sample(np.random.default_rng(3), "s", 0, chunks=2)  # 30 frames < 60
    ex = build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})
    assert ex["model_codes"].shape == (spec.codebooks, spec.frames)
    assert ex["valid"].sum() == 30 and not ex["valid"][30:].any()
    assert (ex["frames"][2:] == spec.frame_vocab).all()  # no frame for padded chunks


def test_video_frames_land_on_their_chunk(resolved):
    cfg, _, spec = resolved
    raw = make_sample(np.random.default_rng(4), "s", 0, chunks=spec.window_chunks)
    frames = np.load(io.BytesIO(raw["frames.npy"]))
    ex = build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})
    assert np.array_equal(ex["frames"], frames.reshape(len(frames), -1).astype(np.int32))


# ---------------------------------------------------------------- order, ranks, resume


def test_every_rank_and_worker_gets_shards_even_when_there_are_fewer_shards_than_readers():
    shards = ("a", "b", "c")
    lists = [
        shards_for(shards, seed=0, epoch=0, rank=r, world=2, worker=w, num_workers=2) for r in range(2) for w in range(2)
    ]
    assert all(lists)
    assert sorted(s for lst in lists for s in lst) == sorted(shards * 2)  # each read once per repetition


def test_shard_order_depends_on_seed_and_epoch_only():
    shards = tuple(f"s{i}" for i in range(10))
    a = shards_for(shards, seed=1, epoch=3, rank=0, world=1, worker=0, num_workers=1)
    assert a == shards_for(shards, seed=1, epoch=3, rank=0, world=1, worker=0, num_workers=1)
    assert a != shards_for(shards, seed=1, epoch=4, rank=0, world=1, worker=0, num_workers=1)
    assert sorted(a) == sorted(shards)


def test_same_seed_same_batches(resolved):
    cfg, corpus, spec = resolved
    a, b = _loader(cfg, corpus, spec), _loader(cfg, corpus, spec)
    for _ in range(5):
        assert _same(next(a), next(b))
    c = _loader(cfg.replace(run={"seed": 1}), corpus, spec)
    assert not all(_same(next(a), next(c)) for _ in range(3))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_continues_with_the_same_next_batches(resolved, workers):
    cfg, corpus, spec = resolved
    cfg = cfg.replace(data={"num_workers": workers, "prefetch_factor": 2})
    reference = _loader(cfg, corpus, spec)
    batches = [next(reference) for _ in range(9)]  # 3 epochs of the train shard (6 windows x 2 roles / 4)
    first = _loader(cfg, corpus, spec)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON (it goes into checkpoints)
    first.close()
    resumed = _loader(cfg, corpus, spec, state=state)
    for expected in batches[5:]:
        assert _same(next(resumed), expected)


def test_state_from_another_layout_is_refused(resolved):
    cfg, corpus, spec = resolved
    loader = _loader(cfg, corpus, spec)
    next(loader)
    state = loader.state_dict() | {"num_workers": 3}
    with pytest.raises(TrainDataError, match="resume_layout_changed"):
        _loader(cfg, corpus, spec, state=state)


def test_position_is_small_and_explicit(resolved):
    cfg, corpus, spec = resolved
    loader = _loader(cfg, corpus, spec)
    for _ in range(3):
        next(loader)
    state = loader.state_dict()
    assert state["batches_seen"] == 3
    assert Position(*state["positions"]["0"]).epoch >= 0
    assert len(json.dumps(state)) < 300


def test_roles_both_yields_each_window_twice_with_the_streams_swapped(tiny_cfg, train_corpus):
    # windows of the full sample length (10 chunks): no cropping, so the two roles line up frame by frame
    corpus = read_corpus(str(train_corpus))
    cfg = resolve_config(tiny_cfg.replace(data={"shuffle_buffer": 0, "batch_size": 2, "window_chunks": 10}), corpus)
    batch = next(_loader(cfg, corpus, example_spec(cfg)))
    assert torch.equal(batch["model_codes"][0], batch["user_codes"][1])
    assert torch.equal(batch["user_codes"][0], batch["model_codes"][1])
    assert torch.equal(batch["model_text"][0], batch["user_text"][1])
    assert not torch.equal(batch["model_codes"][0], batch["model_codes"][1])


def test_a_folder_without_dataset_json_is_a_clear_error(tmp_path: Path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(TrainDataError, match="no_corpus"):
        read_corpus(str(tmp_path))


def test_a_single_stream_sample_has_an_absent_user_under_either_role(resolved):
    cfg, _, spec = resolved
    raw = make_sample(np.random.default_rng(5), "mono", 0, chunks=spec.window_chunks, streams=1)
    codes = np.load(io.BytesIO(raw["codes.npy"]))
    for role in (0, 1):
        ex = build_example(raw, role, spec, seed=0, epoch=0, expected_fp={})
        assert np.array_equal(ex["model_codes"], codes[0, : spec.codebooks])
        assert (ex["user_codes"] == spec.audio_vocab).all() and (ex["user_text"] == spec.text_vocab).all()
