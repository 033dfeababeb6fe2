"""Model variants (model.audio: codes | dmel, model.video: tokens | pixels | none): sizes, losses,
causality, the hMLP, the examples each variant reads, and a dMel+text-only corpus that trains."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_realtime import VARIANTS, variant_batch, variant_cfg

from microturn.errors import SampleError
from microturn.train.config import ModelConfig, load_train_config
from microturn.train.corpus import iter_raw_samples, read_corpus
from microturn.train.examples import ExampleSpec, build_example, example_members
from microturn.train.loop import example_spec, resolve_config, train
from microturn.train.model import InteractionModel, PatchHMLP, count_parameters, parameter_counts
from microturn.train.realtime import RealtimeSession, UserChunk, load_run
from tests.factories import random_tokenized_session, write_corpus

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = {
    "dmel": {"fingerprint": "dmel/test", "vocab_size": 16, "mel_channels": 8, "dims": {"M": 8}},
    "pixels": {"fingerprint": "pixels/80x80/rgb8/p40", "vocab_size": 256, "patch": 40,
               "dims": {"Y": 80, "X": 80, "C": 3}},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}


@pytest.fixture(scope="module")
def dmel_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dMel, pixels and text only (no codes, no frame tokens): 9.03 s, windows of 10 chunks."""
    tok = random_tokenized_session("s0", 24000 * 9 + 700, seed=3, representations=("dmel", "pixels"))
    return write_corpus(tmp_path_factory.mktemp("dmel_corpus") / "corpus", tok, TOKENIZERS, window_chunks=10)


@pytest.mark.parametrize("audio", ["codes", "dmel"])
@pytest.mark.parametrize("video", ["tokens", "pixels", "none"])
def test_parameter_counts_are_the_built_models(audio, video):
    cfg = variant_cfg(audio, video)
    assert count_parameters(InteractionModel(cfg)) == parameter_counts(cfg)["total"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_reports_its_streams_losses_and_trains_every_parameter(name):
    torch.manual_seed(0)
    cfg = variant_cfg(**VARIANTS[name])
    model = InteractionModel(cfg)
    out = model(variant_batch(cfg, 3), "loop")
    streams = {"loss_audio", "loss_audio_cb0"} if cfg.audio == "codes" else {"loss_dmel"}
    assert {k for k in out if k.startswith("loss_")} == {"loss_text", *streams}
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    if cfg.audio == "dmel":
        assert not hasattr(model, "depth") and not any("codes" in n for n, _ in model.named_parameters())
        # near uniform at init: the per-channel loss is about log(bins)
        assert float(out["loss_dmel"]) == pytest.approx(np.log(cfg.dmel_bins), rel=0.2)


@pytest.mark.parametrize("name", ["dmel+pixels", "codes+tokens"])
def test_the_model_sees_chunk_c_only_after_speaking_chunk_c(name):
    torch.manual_seed(0)
    cfg = variant_cfg(**VARIANTS[name])
    model = InteractionModel(cfg).eval()
    batch = variant_batch(cfg, 4)
    changed = {k: v.clone() for k, v in batch.items()}
    if cfg.video == "pixels":
        changed["pixels"][:, 2] = 255 - changed["pixels"][:, 2]
    else:
        changed["frames"][:, 2] = (changed["frames"][:, 2] + 1) % cfg.frame_vocab
    with torch.no_grad():
        a, _ = model.frame_logits(batch, "loop")
        b, _ = model.frame_logits(changed, "loop")
    diff_F = (a["text"] - b["text"]).abs().amax(dim=-1)[0]
    assert float(diff_F[:45].max()) == 0.0 and float(diff_F[45:].max()) > 0


def test_pixels_of_a_chunk_without_a_frame_are_not_read():
    torch.manual_seed(0)
    cfg = variant_cfg("dmel", "pixels")
    model = InteractionModel(cfg).eval()
    batch = variant_batch(cfg, 3)
    assert not bool(batch["has_frame"][0, 1])
    changed = {k: v.clone() for k, v in batch.items()}
    changed["pixels"][:, 1] = 200
    with torch.no_grad():
        assert torch.equal(model.embed(batch), model.embed(changed))


def test_the_hmlp_embeds_each_40x40_patch_from_its_own_pixels():
    torch.manual_seed(0)
    hmlp = PatchHMLP(32, 40).eval()
    pixels = torch.randint(0, 256, (1, 80, 80, 3), dtype=torch.uint8)
    changed = pixels.clone()
    changed[0, 40:, :40] = 0  # the bottom-left patch: patch 2 in row-major order
    with torch.no_grad():
        a, b = hmlp(pixels), hmlp(changed)
    assert a.shape == (1, 4, 32)
    moved = (a - b).abs().amax(dim=-1)[0]
    assert float(moved[2]) > 0 and float(moved[[0, 1, 3]].max()) == 0.0


def test_each_variant_reads_only_its_members():
    assert example_members(ModelConfig()) == ("meta.json", "codes.npy", "text.npy", "frames.npy", "frame_chunks.npy")
    assert example_members(ModelConfig(audio="dmel", video="none")) == ("meta.json", "dmel.npy", "text.npy")
    assert example_members(ModelConfig(audio="dmel", video="pixels"))[-2:] == ("pixels.npy", "frame_chunks.npy")


def _cfg(corpus: Path, video: str, *overrides: str):
    cfg = load_train_config(REPO / "configs" / "train_tiny.yaml",
                            ["model.audio=dmel", f"model.video={video}", "run.threads=1", *overrides])  # fmt: skip
    return resolve_config(cfg, read_corpus(str(corpus), example_members(cfg.model)))


def test_a_dmel_pixels_corpus_resolves_sizes_and_lays_out_examples(dmel_corpus):
    cfg = _cfg(dmel_corpus, "pixels")
    m = cfg.model
    assert (m.dmel_channels, m.dmel_bins, m.pixel_size, m.pixel_patch) == (8, 16, 80, 40)
    assert cfg.fingerprints.dmel == "dmel/test" and cfg.fingerprints.pixels.startswith("pixels/")
    assert cfg.fingerprints.audio is None and cfg.fingerprints.frames is None
    spec = example_spec(cfg)
    raw = next(iter_raw_samples(read_corpus(str(dmel_corpus), spec.members).shard_uris[0]))
    ex = build_example(raw, 0, spec, seed=0, epoch=0, expected_fp=cfg.fingerprints.model_dump())
    C = cfg.data.window_chunks
    assert ex["model_dmel"].shape == (8, C * 15) and ex["model_dmel"].dtype == np.uint8
    assert ex["pixels"].shape == (C, 80, 80, 3) and ex["has_frame"].all()
    assert "model_codes" not in ex and "frames" not in ex
    stored = np.load(io.BytesIO(bytes(raw["dmel.npy"])), allow_pickle=False)
    np.testing.assert_array_equal(ex["model_dmel"], stored[0, :, : C * 15])
    np.testing.assert_array_equal(ex["user_dmel"], stored[1, :, : C * 15])


@pytest.mark.parametrize("change, reason", [
    ({"dmel_channels": 6}, "bad_shape"),
    ({"dmel_bins": 8}, "token_out_of_range"),
    ({"pixel_size": 40}, "bad_shape"),
])  # fmt: skip
def test_dmel_and_pixels_that_do_not_fit_the_model_are_bad_samples(dmel_corpus, change, reason):
    cfg = _cfg(dmel_corpus, "pixels")
    spec = ExampleSpec(**(example_spec(cfg).__dict__ | change))
    raw = next(iter_raw_samples(read_corpus(str(dmel_corpus), spec.members).shard_uris[0]))
    with pytest.raises(SampleError) as err:
        build_example(raw, 0, spec, seed=0, epoch=0, expected_fp={})
    assert err.value.code == reason


def test_a_dmel_text_corpus_trains_and_its_run_streams(dmel_corpus, tmp_path):
    cfg = load_train_config(REPO / "configs" / "train_tiny.yaml",
                            ["model.audio=dmel", "model.video=none", "run.threads=1", "run.max_steps=4",
                             "run.log_every=2", "run.ckpt_every=4", "data.window_chunks=4"])  # fmt: skip
    summary = train(cfg, str(dmel_corpus), tmp_path / "run")
    assert summary["steps"] == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_dmel" in r and "loss_audio" not in r and np.isfinite(r["loss_dmel"]) for r in records)
    model, run_cfg = load_run(tmp_path / "run")
    assert run_cfg.model.dmel_channels == 8 and run_cfg.fingerprints.dmel == "dmel/test"
    session = RealtimeSession(model, temperature=0.0)
    out = session.turn(UserChunk(np.zeros((8, 15), np.uint8), np.full(15, 260)))
    assert out.audio_XJ.shape == (8, 15) and out.text_J.shape == (15,)
