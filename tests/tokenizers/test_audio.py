"""The audio tokenizer: EnCodec 24 kHz codes on the microturn frame grid."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microturn.clock import CHUNK_SAMPLES, FRAMES_PER_CHUNK, HOP
from microturn.config import AudioCodecConfig
from microturn.records import StageError
from microturn.tokenizers.calibration import speech_like

REPO = Path(__file__).resolve().parents[2]
SHARED_MEDIA = REPO / ".." / "shared" / "media"


def entropy_bits(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def two_streams(chunks: int, seed: int = 11) -> np.ndarray:
    n = chunks * CHUNK_SAMPLES
    return np.stack([speech_like(n / 24000, seed), speech_like(n / 24000, seed + 1)])


def test_codes_follow_the_grid(audio_tok):
    codes = audio_tok.encode(two_streams(chunks=7))
    assert codes.dtype == np.int16
    assert codes.shape == (2, 8, 7 * FRAMES_PER_CHUNK)  # 6 kbps -> 8 codebooks, 15 frames per chunk
    assert codes.min() >= 0 and codes.max() < audio_tok.vocab_size == 1024
    assert audio_tok.num_codebooks == 8


def test_bandwidth_sets_the_number_of_codebooks(small_windows):
    from microturn.tokenizers.audio import load_audio_tokenizer

    tok = load_audio_tokenizer(AudioCodecConfig(bandwidth_kbps=1.5, **small_windows))
    codes = tok.encode(two_streams(chunks=2))
    assert codes.shape == (2, 2, 30)
    assert re.fullmatch(r"encodec24k/1\.5kbps/K2/V1024/untrained:0@[0-9a-f]{8}", tok.fingerprint)


def test_fingerprint_names_codec_config_and_weights(audio_tok):
    assert re.fullmatch(r"encodec24k/6kbps/K8/V1024/untrained:0@[0-9a-f]{8}", audio_tok.fingerprint)
    assert re.fullmatch(r"encodec24k/[0-9.]+kbps/K\d+/V1024/(untrained:\d+@[0-9a-f]{8}|sha256:[0-9a-f]{16})", audio_tok.fingerprint)


@pytest.mark.parametrize(
    "wave, reason",
    [
        (np.zeros((1, CHUNK_SAMPLES + 1), np.float32), "bad_audio_length"),
        (np.full((1, CHUNK_SAMPLES), np.nan, np.float32), "non_finite_audio"),
        (np.zeros((1, 2, CHUNK_SAMPLES), np.float32), "bad_audio_shape"),
    ],
)
def test_bad_audio_is_a_typed_error(audio_tok, wave, reason):
    with pytest.raises(StageError) as err:
        audio_tok.encode(wave)
    assert err.value.stage == "tokenize" and err.value.reason == reason


def test_same_input_same_codes(audio_tok):
    wave = two_streams(chunks=6)
    assert np.array_equal(audio_tok.encode(wave), audio_tok.encode(wave.copy()))


def test_codes_are_the_same_in_another_process_and_with_one_thread(audio_tok, small_windows, tmp_path):
    """A fresh interpreter builds the same untrained codec and the same codes, with the test's thread
    count and with one thread (a Ray worker's): every convolution runs through oneDNN, whose sums do not
    depend on the thread count (PyTorch's own 1x1 path on one thread rounded some differently)."""
    wave = two_streams(chunks=6, seed=21)
    ours = audio_tok.encode(wave)
    script = f"""
import numpy as np, torch
from microturn.clock import CHUNK_SAMPLES
from microturn.config import AudioCodecConfig
from microturn.tokenizers.audio import load_audio_tokenizer
from microturn.tokenizers.calibration import speech_like
tok = load_audio_tokenizer(AudioCodecConfig(**{small_windows!r}))
n = 6 * CHUNK_SAMPLES
wave = np.stack([speech_like(n / 24000, 21), speech_like(n / 24000, 22)])
np.save({str(tmp_path / "same.npy")!r}, tok.encode(wave))
torch.set_num_threads(1)
np.save({str(tmp_path / "one_thread.npy")!r}, tok.encode(wave))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp_path / "same.npy"), ours)
    assert np.array_equal(np.load(tmp_path / "one_thread.npy"), ours)


def test_on_one_cpu_thread_every_encoder_convolution_runs_through_onednn(audio_tok):
    """PyTorch sends a 1x1 convolution on one thread to im2col + BLAS, 2-2.5x slower than oneDNN here;
    the fast encoder's pointwise convolutions ask for oneDNN directly."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            audio_tok.encode(two_streams(chunks=6))
    finally:
        torch.set_num_threads(threads)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::mkldnn_convolution", 0) > 0
    assert calls.get("aten::_slow_conv2d_forward", 0) == 0 and calls.get("aten::thnn_conv2d", 0) == 0


def test_batching_equals_one_by_one(audio_tok, small_windows):
    """The batch a window lands in (its size, its neighbours) never changes the window's codes."""
    from microturn.tokenizers.audio import load_audio_tokenizer

    wave = two_streams(chunks=13)  # 3 windows of 5 chunks per stream, the last one short
    batched = audio_tok.encode(wave)
    for batch_windows in (1, 2, 3, 8):
        other = load_audio_tokenizer(AudioCodecConfig(**dict(small_windows, batch_windows=batch_windows)))
        assert np.array_equal(batched, other.encode(wave)), batch_windows
    per_stream = np.concatenate([audio_tok.encode(wave[s : s + 1]) for s in range(2)])
    assert np.array_equal(batched, per_stream)


def test_padding_changes_only_the_padded_tail(audio_tok):
    """The 24 kHz model is causal: zeros appended after a window leave its codes unchanged."""
    x = speech_like(1.0, seed=5)[None, None]  # [1, 1, 24000]
    alone = audio_tok.encode_batch(x)
    padded = audio_tok.encode_batch(np.concatenate([x, np.zeros((1, 1, 9600), np.float32)], axis=-1))
    assert padded.shape[-1] == alone.shape[-1] + 9600 // HOP
    assert np.array_equal(padded[..., : alone.shape[-1]], alone)
    # and inside one batch next to a longer window
    longer = speech_like(1.4, seed=6)[None, None]
    mixed = np.zeros((2, 1, longer.shape[-1]), np.float32)
    mixed[0, 0, : x.shape[-1]] = x[0, 0]
    mixed[1] = longer[0]
    assert np.array_equal(audio_tok.encode_batch(mixed)[0:1, :, : alone.shape[-1]], alone)


def test_windows_with_context_track_whole_file_encoding(audio_tok, small_windows):
    """Windows fed with left context give nearly the codes of one pass over the whole stream."""
    from microturn.tokenizers.audio import load_audio_tokenizer

    wave = speech_like(3.0, seed=9)[None]
    whole = load_audio_tokenizer(AudioCodecConfig(**dict(small_windows, window_s=60.0))).encode(wave)
    windowed = audio_tok.encode(wave)
    first_window = 75  # frames of the first 1 s window: no context needed, identical
    assert np.array_equal(windowed[..., :first_window], whole[..., :first_window])
    agreement = float((windowed == whole)[0, 0].mean())  # first codebook
    assert agreement > 0.9, agreement


def test_fast_engine_gives_the_stock_codes(audio_tok, small_windows):
    """The fast encoder computes the same function in another memory layout: its float32 outputs
    differ from EnCodec's modules in the last bits only, so codes agree except at rare near-ties
    (the same noise floor a change of thread count has)."""
    import torch

    from microturn.tokenizers.audio import load_audio_tokenizer

    stock = load_audio_tokenizer(AudioCodecConfig(**dict(small_windows, engine="stock")))
    wave = two_streams(chunks=8, seed=31)
    assert float((audio_tok.encode(wave) != stock.encode(wave)).mean()) < 0.01
    x = torch.from_numpy(wave[:1, None])
    with torch.inference_mode():
        ref, fast = stock.encoder(x), audio_tok.encoder(x)
    assert ref.shape == fast.shape
    assert float((ref - fast).abs().max()) < 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("tile_frames", [4, 7])
def test_tiled_encoder_equals_one_pass(audio_tok, tile_frames):
    """The fast encoder runs its convolutions tile by tile, each conv carrying its left context
    across tiles; the result is the one-pass encoder's to float rounding (oneDNN picks its kernels by
    shape; the untrained codec amplifies that to ~1e-5 of its range), including a last tile shorter
    than the others and the reflect padding at the start."""
    import torch

    from microturn.tokenizers.fast_encodec import HOP as ENC_HOP, FastSEANetEncoder

    fast = audio_tok.encoder
    tiled = FastSEANetEncoder(audio_tok.model.encoder, tile_samples=tile_frames * ENC_HOP)
    whole = FastSEANetEncoder(audio_tok.model.encoder)
    whole.tiled_steps = 0
    x = torch.from_numpy(two_streams(chunks=2, seed=51)[:, None])  # 9600 samples: 30 frames
    with torch.inference_mode():
        a, b, c = whole(x), tiled(x), fast(x)
    assert a.shape == b.shape == c.shape == (2, 128, 30)
    scale = float(a.abs().max())
    assert float((a - b).abs().max()) < 1e-4 * scale  # a wrong halo would differ by O(scale)
    assert float((a - c).abs().max()) < 1e-4 * scale
    # no state leaks from one call into the next (tile buffers live for one call)
    with torch.inference_mode():
        tiled(torch.from_numpy(two_streams(chunks=3, seed=52)[:1, None]))
        again = tiled(x)
    assert torch.equal(again, b)


def test_untrained_codes_spread_over_each_codebook(audio_tok):
    """Speech-like audio (not the calibration signal's seed) uses many codes in every codebook."""
    codes = audio_tok.encode(speech_like(9.6, seed=1234)[None])
    bits = [entropy_bits(codes[0, k]) for k in range(codes.shape[1])]
    assert min(bits) > 4.0, bits


def _decode_speech_24k(path: Path, seconds: float) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=24000)
        parts = [f.to_ndarray().reshape(-1) for fr in container.decode(audio=0) for f in resampler.resample(fr)]
    wave = np.concatenate(parts).astype(np.float32)
    n = int(seconds * 24000) // CHUNK_SAMPLES * CHUNK_SAMPLES
    return wave[:n]


def test_untrained_codes_spread_on_real_speech(audio_tok):
    path = SHARED_MEDIA / "speech" / "jfk.flac"
    if not path.is_file():
        pytest.skip("shared media not available")
    codes = audio_tok.encode(_decode_speech_24k(path, 9.6)[None])
    bits = [entropy_bits(codes[0, k]) for k in range(codes.shape[1])]
    assert min(bits) > 4.0, bits


def test_decode_returns_the_encoded_length(audio_tok):
    wave = two_streams(chunks=6)
    codes = audio_tok.encode(wave)
    audio = audio_tok.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == wave.shape
    assert np.isfinite(audio).all() and audio.std() > 0


def test_checkpoint_round_trips_through_encodec_format(tmp_path, audio_tok, small_windows):
    from encodec import EncodecModel

    from microturn.tokenizers.audio import load_audio_tokenizer, save_encodec_checkpoint, seeded_encodec

    path = save_encodec_checkpoint(seeded_encodec(0, 8), tmp_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"encodec_24khz-{sha[:8]}.th"
    # EnCodec's own loader (the one behind `repository=`) accepts the file: same sha-prefix rule
    state = EncodecModel._get_pretrained(path.name, tmp_path)
    assert "quantizer.vq.layers.0._codebook.embed" in state

    loaded = load_audio_tokenizer(AudioCodecConfig(weights_dir=tmp_path, **small_windows))
    assert loaded.fingerprint == f"encodec24k/6kbps/K8/V1024/sha256:{sha[:16]}"
    wave = two_streams(chunks=6, seed=41)
    assert np.array_equal(loaded.encode(wave), audio_tok.encode(wave))
    by_file = load_audio_tokenizer(AudioCodecConfig(checkpoint=path, **small_windows))
    assert by_file.fingerprint == loaded.fingerprint


def test_a_checkpoint_whose_name_lies_about_its_sha_is_refused(tmp_path, small_windows):
    from microturn.tokenizers.audio import load_audio_tokenizer, save_encodec_checkpoint, seeded_encodec

    good = save_encodec_checkpoint(seeded_encodec(0, 2), tmp_path / "good")
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shutil.copy(good, bad_dir / "encodec_24khz-00000000.th")
    with pytest.raises(StageError) as err:
        load_audio_tokenizer(AudioCodecConfig(weights_dir=bad_dir, **small_windows))
    assert err.value.reason == "codec_checksum"
    with pytest.raises(StageError) as err:
        load_audio_tokenizer(AudioCodecConfig(weights_dir=tmp_path / "missing", **small_windows))
    assert err.value.reason == "codec_missing"


def test_batches_encoded_in_one_call_get_their_own_outputs_bit_for_bit(audio_tok):
    """On a CPU several batches share one LSTM call (the recurrent weights read once per step for all
    rows); each batch still gets exactly what it gets alone, whatever the other batches' lengths."""
    import torch

    encoder = audio_tok.encoder
    xs = [torch.from_numpy(two_streams(chunks=c, seed=60 + c)[:, None]) for c in (5, 2, 7)]
    with torch.inference_mode():
        together = encoder.forward_many(xs)
        alone = [encoder(x) for x in xs]
    assert [t.shape for t in together] == [a.shape for a in alone]
    assert all(torch.equal(t, a) for t, a in zip(together, alone))


def test_a_cpu_call_groups_batches_up_to_the_lstm_rows(audio_tok):
    from microturn.tokenizers.audio import LSTM_ROWS

    assert audio_tok.device == "cpu" and audio_tok.cfg.engine == "fast"
    assert audio_tok._batches_per_call() * max(audio_tok.cfg.batch_windows, 2) >= LSTM_ROWS


@pytest.mark.parametrize("rows", [7, 256])
def test_our_residual_quantizer_gives_encodecs_codes_bit_for_bit(audio_tok, monkeypatch, rows):
    """The codes in cache-sized blocks of frames (a short last block included) equal EnCodec's own
    quantizer's, every codebook, for a batch of two windows."""
    import torch

    from microturn.tokenizers import fast_encodec

    monkeypatch.setattr(fast_encodec, "QUANTIZE_ROWS", rows)
    model = audio_tok.model
    wave = torch.from_numpy(two_streams(chunks=9))[:, None]  # [2, 1, samples]: 135 frames each
    with torch.inference_mode():
        emb = audio_tok.encoder(wave)
        stock = model.quantizer.encode(emb, model.frame_rate, model.bandwidth)
        ours = fast_encodec.rvq_encode(model.quantizer, emb, model.frame_rate, model.bandwidth)
    assert ours.shape == stock.shape == (8, 2, 135) and ours.dtype == stock.dtype
    assert torch.equal(ours, stock)
    assert len(torch.unique(stock[0])) > 10  # real codes, not one entry everywhere


def test_our_elu_is_the_correctly_rounded_elu_in_any_layout():
    """The encoder's ELU equals ELU computed in float64 and rounded once to float32 (the correctly
    rounded result), within one ulp of PyTorch's: in a channels-last tile, into a slice of a tile
    buffer, with another alpha, and at the edges (zeros, infinities, NaN, large negatives)."""
    import torch

    from microturn.tokenizers.fast_encodec import elu

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 32, 1, 3000, generator=g) * 4).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), -200.0, 1e-30])
    x[1, 0, 0, 0] = float("nan")

    def correctly_rounded(t: torch.Tensor, alpha: float) -> torch.Tensor:
        d = t.double()
        return torch.where(d > 0, d, alpha * torch.expm1(d)).float()

    for alpha in (1.0, 0.5):
        ours = elu(x, alpha)
        assert ours.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(ours, correctly_rounded(x, alpha), rtol=0, atol=0, equal_nan=True)
        theirs = torch.nn.functional.elu(x, alpha)
        ulp = torch.finfo(torch.float32).eps * theirs.abs().clamp(min=torch.finfo(torch.float32).tiny)
        finite = theirs.isfinite()
        assert bool(((ours - theirs).abs()[finite] <= ulp[finite]).all())
        assert torch.equal(ours.isnan(), theirs.isnan())

    buf = torch.zeros(2, 32, 1, 3010).contiguous(memory_format=torch.channels_last)
    elu(x, 1.0, out=buf[..., 10:])
    assert torch.allclose(buf[..., 10:], correctly_rounded(x, 1.0), rtol=0, atol=0, equal_nan=True)
    assert not bool(buf[..., :10].any())  # nothing written outside the slice
