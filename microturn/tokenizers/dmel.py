"""dMel (Bai et al. 2024, arXiv 2407.15835): log-mel energies per speaker stream, each channel cut into a
few intensity bins. Training-free and weight-free: real signal on every machine, offline.

    tok = DMelTokenizer(DMelConfig())
    bins = tok.encode(wave_24k)      # float32 [S, N] -> uint8 [S, M, N // hop]
    wave = tok.decode(bins)          # uint8 [S, M, F] -> float32 [S, F * hop] (Griffin-Lim, to listen to)

Exactly what a bin means (the fingerprint ``dmel/24k/h320/w1024/M80/B16/f0-8000/ln-12..12`` names every
free number; the rules below are fixed, a change to any of them needs a new name):
- framing: frame t is the ``window_samples``-long Hann (periodic) window starting at ``t*hop - window//2``,
  i.e. centred on sample ``t*hop`` as ``torch.stft(center=True)``, over the stream zero-padded on both
  sides (no reflection: a frame depends only on real samples, so blocks join exactly). A padded session
  of N samples (whole 200 ms chunks) gives exactly ``F = N // hop`` frames;
- energy: ``|rfft|^2`` of the windowed frame (no normalisation), summed by HTK-mel triangles
  (``2595 log10(1 + f/700)``, peaks of 1, no area normalisation) from f_min to f_max;
- bins: with ``step = (log_max - log_min) / B``, bin b holds natural-log mel power in
  ``[log_min + b*step, log_min + (b+1)*step)``; below ``log_min + step`` is bin 0 (silence, also the
  chunker's fill), at or above ``log_max - step`` the top bin (louder values clip into it).

Why ln -12..12 (measured on ../shared/media with these defaults; 16 bins of 1.5 nats = 6.5 dB): the
loudest speech reaches ln 10.1 (michaelandsickmichael; jfk 9.9; p99.9 of every file <= 10.1), a
full-scale sine ln 10.8-11.4 and full-scale white noise ln 8.1, so nothing real clips at the top. At
the bottom, over frames within 40 dB of each file's loudest, 0.0-1.4% of values fall below -12 (jfk
1.4%; katiesteve, a quiet -22 dBFS recording, 0.8%): the floor sits at the recordings' noise floor
(16-bit silence is about ln -23), and the quiet recording still spans 11 bins (ln -11.9 .. 5.0).

Determinism: everything runs in float64, so the last-bit differences that kernels make between thread
counts, batch shapes or devices (~1e-16 relative) change a byte only when a value lies that close to a
bin edge (bins are 1.5 nats wide: about one value in 1e15). Audio is processed in blocks of ``block_s``
(4 s: the block's frames stay in cache, and memory is bounded for hours-long streams), every frame from
its own samples, so blocks join exactly.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.config import DMelConfig
from microturn.devices import resolve_device
from microturn.errors import StageError
from microturn.format import MemberSpec
from microturn.media import spill
from microturn.records import TokenizeInput

GRIFFIN_LIM_ITERS = 32  # STOI/correlation gain little beyond (measured); decode is for listening only


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filters(cfg: DMelConfig) -> np.ndarray:
    """float64 [K, M]: HTK triangles (peak 1) over the K = window//2 + 1 rfft bins; a channel that no
    bin reaches (too many channels for the window's resolution) is a config error."""
    freqs = np.arange(cfg.window_samples // 2 + 1) * (GRID.sample_rate / cfg.window_samples)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min_hz), hz_to_mel(cfg.f_max_hz), cfg.mel_channels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lo) / (mid - lo)
    falling = (hi - freqs[:, None]) / (hi - mid)
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    empty = np.flatnonzero(fb.sum(0) == 0)
    if empty.size:
        raise ValueError(f"dmel: mel channels {empty.tolist()} get no STFT bin with a {cfg.window_samples}-sample "
                         f"window; use fewer mel_channels or a longer window")
    return fb


def dmel_member(time_axis: str = "F") -> MemberSpec:
    """The ``dmel.npy`` member: bins per speaker stream on the codec frame grid (F, the default hop) or
    on a time axis of its own (T, another hop)."""
    return MemberSpec("dmel.npy", "npy", "uint8", ("S", "M", time_axis), "dMel: log-mel bins per speaker stream",
                      order=15, tokenizer="dmel")


class DMelTokenizer:
    """The ``dmel`` representation: ``dmel.npy`` uint8 [S, M, F], F = padded samples // hop.

    At the default hop (320) F is the codec frame grid the chunker windows; another hop that tiles
    200 ms computes fine (``encode``) but needs the chunker to window members at their own rate."""

    name = "dmel"

    def __init__(self, cfg: DMelConfig) -> None:
        import torch

        self.cfg = cfg
        self.hop = cfg.hop_samples
        self.frame_rate = Fraction(GRID.sample_rate, self.hop)
        self.frames_per_chunk = GRID.steps_per_chunk(self.frame_rate)
        self.vocab_size = cfg.bins
        self.device = resolve_device(cfg.device, "tokenize")
        # on the codec frame grid (F) at the default hop; at another hop on a time axis of its own (T)
        time_axis = "F" if self.hop == GRID.hop else "T"
        self.members = (dmel_member(time_axis),)
        self.fill = {"dmel.npy": 0}  # bin 0 is silence
        self.filters = mel_filters(cfg)
        # the rfft bins any channel reaches (342 of 513 at the defaults): the rest are never summed
        self.used_bins = int(np.flatnonzero(self.filters.sum(1))[-1]) + 1
        self._filters = torch.from_numpy(self.filters[: self.used_bins]).to(self.device)
        self._inverse = np.linalg.pinv(self.filters.T)  # [K, M]: least-squares mel -> linear power
        step = (cfg.log_max - cfg.log_min) / cfg.bins
        # bin b starts at power exp(log_min + b*step): bucketize against these B - 1 edges (b = 1..B-1)
        self._edges = torch.from_numpy(np.exp(cfg.log_min + step * np.arange(1, cfg.bins))).to(self.device)
        self._window = torch.hann_window(cfg.window_samples, dtype=torch.float64, device=self.device)
        chunks = max(1, round(cfg.block_s / float(GRID.chunk_seconds)))
        self.block_frames = chunks * self.frames_per_chunk
        self.fingerprint = (f"dmel/{GRID.sample_rate // 1000}k/h{self.hop}/w{cfg.window_samples}/M{cfg.mel_channels}/"
                            f"B{cfg.bins}/f{cfg.f_min_hz:g}-{cfg.f_max_hz:g}/ln{cfg.log_min:g}..{cfg.log_max:g}")

    # -- encode

    def encode(self, wave_24k: np.ndarray) -> np.ndarray:
        """float32 [S, N] (N a multiple of hop) -> uint8 [S, M, N // hop], in blocks of ``block_frames``."""
        wave = _checked_wave(wave_24k, self.hop)
        streams, num_samples = wave.shape
        frames = num_samples // self.hop
        out = np.zeros((streams, self.cfg.mel_channels, frames), dtype=np.uint8)
        for f0 in range(0, frames, self.block_frames):
            f1 = min(frames, f0 + self.block_frames)
            out[:, :, f0:f1] = self.encode_frames(wave, f0, f1)
        return out

    def encode_frames(self, wave: np.ndarray, f0: int, f1: int) -> np.ndarray:
        """Frames [f0, f1) of float32 [S, N] -> uint8 [S, M, f1 - f0]; reads only the samples they cover."""
        import torch

        with torch.inference_mode():
            bins = torch.bucketize(self._mel_power(wave, f0, f1), self._edges, right=True).to(torch.uint8)
        return bins.transpose(1, 2).cpu().numpy()

    def mel_power(self, wave_24k: np.ndarray) -> np.ndarray:
        """float32 [S, N] -> float64 [S, M, N // hop]: the mel power before binning (for measurements)."""
        wave = _checked_wave(wave_24k, self.hop)
        frames = wave.shape[1] // self.hop
        parts = [self._mel_power(wave, f0, min(frames, f0 + self.block_frames)).transpose(1, 2).cpu().numpy()
                 for f0 in range(0, frames, self.block_frames)]
        return np.concatenate(parts, axis=2)

    def _mel_power(self, wave: np.ndarray, f0: int, f1: int) -> Any:
        """float64 tensor [S, f1 - f0, M] on the device: centred Hann frames -> |rfft|^2 -> mel sums."""
        import torch

        w, half = self.cfg.window_samples, self.cfg.window_samples // 2
        start, length = f0 * self.hop - half, (f1 - f0 - 1) * self.hop + w
        seg = np.zeros((wave.shape[0], length), dtype=np.float64)  # zeros beyond the stream: centred framing
        a, b = max(0, start), min(wave.shape[1], start + length)
        if b > a:
            seg[:, a - start : b - start] = wave[:, a:b]
            spill.release(wave[:, a:b])  # a spilled session's window goes back once copied
        if not np.isfinite(seg).all():  # checked per block: no session-sized temporary
            raise StageError("tokenize", "non_finite_audio", f"audio holds NaN or infinity (frames {f0}-{f1})")
        x = torch.from_numpy(seg).to(self.device)
        with torch.inference_mode():
            spec = torch.fft.rfft(x.unfold(-1, w, self.hop) * self._window)[..., : self.used_bins]  # [S, T, K]
            return (spec.real.square() + spec.imag.square()) @ self._filters

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        return [({"dmel.npy": self.encode(inp.waves_24k)}, {}) for inp in batch]

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "mel_channels": cfg.mel_channels,
                "hop_samples": self.hop, "log_range": [cfg.log_min, cfg.log_max], "dims": {"M": cfg.mel_channels}}

    def window_meta(self) -> dict[str, Any]:
        return {}

    # -- decode

    def log_mel(self, bins: np.ndarray) -> np.ndarray:
        """uint8 [..., M, F] -> float64 natural-log mel power at each bin's centre."""
        step = (self.cfg.log_max - self.cfg.log_min) / self.cfg.bins
        return self.cfg.log_min + (np.asarray(bins, dtype=np.float64) + 0.5) * step

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """uint8 [S, M, F] -> float32 [S, F * hop]: bin centres -> mel power -> linear power (least-squares
        inverse of the filters, clipped at 0) -> Griffin-Lim from zero phase (deterministic). Bin 0
        decodes to silence. For listening to what was encoded: quality is Griffin-Lim's, no weights."""
        import torch
        import torchaudio

        tokens = np.asarray(tokens)
        if tokens.ndim != 3 or tokens.shape[1] != self.cfg.mel_channels or tokens.dtype != np.uint8:
            want = f"uint8 [streams, {self.cfg.mel_channels}, frames]"
            raise StageError("tokenize", "bad_dmel_shape", f"expected {want}, got {tokens.dtype} {tokens.shape}")
        streams, _, frames = tokens.shape
        mel = np.where(tokens > 0, np.exp(self.log_mel(tokens)), 0.0)  # [S, M, F]
        linear = np.clip(self._inverse @ mel, 0.0, None)  # [S, K, F]
        griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=self.cfg.window_samples, hop_length=self.hop, power=2.0, n_iter=GRIFFIN_LIM_ITERS,
            rand_init=False, window_fn=torch.hann_window).to(self.device)
        with torch.inference_mode():
            wave = griffin_lim(torch.from_numpy(linear).float().to(self.device)).cpu().numpy()
        out = np.zeros((streams, frames * self.hop), dtype=np.float32)  # Griffin-Lim gives (F - 1) * hop
        out[:, : wave.shape[1]] = wave[:, : frames * self.hop]
        return out


def _checked_wave(wave_24k: np.ndarray, hop: int) -> np.ndarray:
    wave = np.asarray(wave_24k, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise StageError("tokenize", "bad_audio_shape", f"expected [streams, samples], got {wave.shape}")
    if wave.shape[1] % hop:
        raise StageError("tokenize", "bad_audio_length", f"{wave.shape[1]} samples is not a multiple of hop {hop}")
    return wave
