"""dMel: log-mel bins per speaker stream on the 200 ms grid, deterministic, windowed exactly, decodable."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from microturn.clock import GRID
from microturn.config import DMelConfig, TokenizerConfig
from microturn.errors import StageError
from microturn.format import member_table
from microturn.pipeline.tokenize import tokenize_session
from microturn.records import TokenizeInput, Word
from microturn.tokenizers import REPRESENTATIONS, TokenizerSet
from microturn.tokenizers.dmel import DMelTokenizer
from microturn.tokenizers.text import ByteTokenizer, TextRepresentation
from tests.media_helpers import read_audio, shared

REPO = Path(__file__).resolve().parents[2]
TILING_HOPS = [h for h in range(1, GRID.chunk_samples + 1) if GRID.chunk_samples % h == 0]


@pytest.fixture(scope="module")
def tok() -> DMelTokenizer:
    return DMelTokenizer(DMelConfig(device="cpu"))


def noise(streams: int, chunks: int, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amp * rng.standard_normal((streams, chunks * GRID.chunk_samples))).astype(np.float32)


def tone(hz: float, amp: float, chunks: int = 2) -> np.ndarray:
    t = np.arange(chunks * GRID.chunk_samples) / GRID.sample_rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


def test_shapes_dtype_and_grid(tok):
    bins = tok.encode(noise(2, 3))
    assert bins.shape == (2, 80, 45) and bins.dtype == np.uint8  # 15 frames per 200 ms chunk
    assert tok.frame_rate == GRID.frame_rate and tok.frames_per_chunk == 15
    assert tok.fingerprint == "dmel/24k/h320/w1024/M80/B16/f0-8000/ln-12..12"
    assert tok.describe() == {"fingerprint": tok.fingerprint, "vocab_size": 16, "mel_channels": 80,
                              "hop_samples": 320, "log_range": [-12.0, 12.0], "dims": {"M": 80}}
    (spec,) = tok.members
    assert (spec.suffix, spec.dtype, spec.dims, spec.order, spec.tokenizer) == ("dmel.npy", "uint8", ("S", "M", "F"),
                                                                               15, "dmel")
    assert tok.fill == {"dmel.npy": 0} and bins.max() < tok.vocab_size


def test_silence_is_bin_zero_and_a_louder_tone_fills_higher_bins(tok):
    assert not tok.encode(np.zeros((2, GRID.chunk_samples), np.float32)).any()
    quiet, loud = tok.encode(tone(1000, 0.003))[0], tok.encode(tone(1000, 0.3))[0]  # 40 dB apart
    peak = int(np.argmax(loud[:, 15]))
    centre_hz = tok.filters[:, peak].argmax() * GRID.sample_rate / tok.cfg.window_samples
    assert abs(centre_hz - 1000) < 100  # the loud bins sit in the tone's mel channels
    # 40 dB = 9.2 nats = 6.1 bins of 1.5 nats; a -10 dBFS tone stays below the top bin (no clipping)
    assert (loud >= quiet).all() and loud[peak, 15] - quiet[peak, 15] == 6 and loud.max() < 15
    inner = loud[:, 2:-2]  # the edge frames see the tone switch on/off (zero padding): a broadband click
    assert inner[:10].max() == 0 and inner[60:].max() == 0  # channels far from 1 kHz stay silent


def test_blocks_join_exactly(tok):
    wave = noise(2, 10, seed=3)
    whole = DMelTokenizer(DMelConfig(device="cpu", block_s=100.0)).encode(wave)
    assert np.array_equal(DMelTokenizer(DMelConfig(device="cpu", block_s=0.2)).encode(wave), whole)  # 15-frame blocks
    assert np.array_equal(tok.encode(wave), whole)
    assert np.array_equal(tok.encode_frames(wave, 7, 29), whole[:, :, 7:29])  # any frame range, edges included


def _digest(bins: np.ndarray) -> str:
    return hashlib.sha256(bins.tobytes()).hexdigest()


_CHILD = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from microturn.config import DMelConfig
from microturn.tokenizers.dmel import DMelTokenizer
wave = (0.1 * np.random.default_rng(5).standard_normal((2, 8 * 4800))).astype(np.float32)
print(hashlib.sha256(DMelTokenizer(DMelConfig(device="cpu")).encode(wave).tobytes()).hexdigest())
"""


def test_byte_identical_across_thread_counts_and_processes(tok):
    import torch

    wave = noise(2, 8, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _digest(tok.encode(wave))
        torch.set_num_threads(2)
        two = _digest(tok.encode(wave))
    finally:
        torch.set_num_threads(threads)
    child = subprocess.run([sys.executable, "-c", _CHILD, "2" if threads == 1 else "1"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert one == two == child


@settings(max_examples=25, deadline=None)
@given(hop=st.sampled_from(TILING_HOPS[TILING_HOPS.index(40):]))
def test_every_hop_that_tiles_a_chunk_gives_whole_frames_per_chunk(hop):
    cfg = DMelConfig(device="cpu", hop_samples=hop, mel_channels=40)
    tok = DMelTokenizer(cfg)
    assert tok.frames_per_chunk * hop == GRID.chunk_samples
    bins = tok.encode(noise(1, 2, seed=hop))
    assert bins.shape == (1, 40, 2 * GRID.chunk_samples // hop) and bins.dtype == np.uint8
    assert f"/h{hop}/" in tok.fingerprint


@settings(max_examples=25, deadline=None)
@given(hop=st.integers(1, 20 * GRID.chunk_samples).filter(lambda h: GRID.chunk_samples % h))
def test_a_hop_that_does_not_tile_a_chunk_is_refused(hop):
    with pytest.raises(ValidationError, match="does not tile"):
        DMelConfig(hop_samples=hop)


@pytest.mark.parametrize("hop", [256, 500])
def test_common_non_tiling_hops_are_refused(hop):
    with pytest.raises(ValidationError, match=f"hop {hop} samples does not tile a 4800-sample"):
        DMelConfig(hop_samples=hop)


def test_a_mel_channel_without_stft_bins_is_a_config_error():
    with pytest.raises(ValueError, match="get no STFT bin"):
        DMelTokenizer(DMelConfig(device="cpu", window_samples=128, mel_channels=80))


def test_bad_input_is_a_stage_error(tok):
    with pytest.raises(StageError, match="not a multiple of hop"):
        tok.encode(np.zeros((1, 1000), np.float32))
    with pytest.raises(StageError, match="NaN"):
        tok.encode(np.full((1, 4800), np.nan, np.float32))
    with pytest.raises(StageError, match="bad_dmel_shape"):
        tok.decode(np.zeros((1, 40, 15), np.uint8))


def test_it_plugs_into_the_tokenize_stage_and_the_member_table(tok):
    assert isinstance(REPRESENTATIONS["dmel"](TokenizerConfig(dmel=DMelConfig(device="cpu"))), DMelTokenizer)
    toks = TokenizerSet({"dmel": tok, "text": TextRepresentation(ByteTokenizer())})
    num_samples = 2 * GRID.chunk_samples + 700  # 3 chunks, the last mostly padding
    waves = np.zeros((2, 3 * GRID.chunk_samples), np.float32)
    waves[:, :num_samples] = noise(2, 3)[:, :num_samples]
    inp = TokenizeInput(num_samples, waves, np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int32),
                        (Word("hi", 0, 4800, 0),))
    out = tokenize_session(inp, toks)
    assert out.arrays["dmel.npy"].shape == (2, 80, out.num_frames) == (2, 80, 45)
    assert np.array_equal(out.arrays["dmel.npy"], tok.encode(waves))
    assert out.fill["dmel.npy"] == 0 and out.fingerprints["dmel"] == tok.fingerprint
    table = member_table(toks.member_specs())
    assert "dmel.npy" in table and table.order.index("dmel.npy") < table.order.index("activity.npy")


def test_decode_gives_a_wave_on_the_grid(tok):
    bins = tok.encode(noise(2, 2))
    wave = tok.decode(bins)
    assert wave.shape == (2, 30 * 320) and wave.dtype == np.float32 and np.isfinite(wave).all()
    assert not tok.decode(np.zeros((1, 80, 15), np.uint8)).any()  # bin 0 decodes to silence


def frame_correlation(a_MF: np.ndarray, b_MF: np.ndarray) -> float:
    """Median over frames of the Pearson correlation across mel channels (frames flat in both skipped)."""
    a, b = a_MF - a_MF.mean(0), b_MF - b_MF.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    ok = den > 0
    return float(np.median((a * b).sum(0)[ok] / den[ok]))


def clipped_log_mel(tok: DMelTokenizer, wave: np.ndarray) -> np.ndarray:
    """ln mel power of stream 0 within the representation's range: [M, F]."""
    return np.clip(np.log(np.maximum(tok.mel_power(wave)[0], 1e-300)), tok.cfg.log_min, tok.cfg.log_max)


@pytest.mark.parametrize("name,start_s", [("speech/jfk.flac", 0.0), ("dialogue/katiesteve_mono.wav", 2.0)])
def test_round_trip_on_real_speech(tok, name, start_s):
    from pystoi import stoi

    audio = read_audio(shared(*name.split("/")), GRID.sample_rate)[0].astype(np.float32)
    first = int(start_s * GRID.sample_rate)
    wave = audio[None, first : first + 25 * GRID.chunk_samples]  # 5 s
    decoded = tok.decode(tok.encode(wave))
    assert frame_correlation(clipped_log_mel(tok, wave), clipped_log_mel(tok, decoded)) >= 0.95
    assert stoi(wave[0], decoded[0], GRID.sample_rate) >= 0.75


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_cuda_gives_the_cpu_bytes(tok):
    wave = noise(2, 20, seed=9)
    assert np.array_equal(DMelTokenizer(DMelConfig(device="cuda")).encode(wave), tok.encode(wave))
