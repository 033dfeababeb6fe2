"""The audio tokenizer: EnCodec 24 kHz codes per speaker stream, on the microturn frame grid.

Weights come from (first match wins):
1. ``checkpoint``: an EnCodec-format state dict file; a name like ``encodec_24khz-<hex>.th`` has its
   sha256 prefix checked, as EnCodec does;
2. ``weights_dir``: a folder holding ``encodec_24khz-d7cc33bc.th`` (loaded through
   ``EncodecModel.encodec_model_24khz(pretrained=True, repository=dir)``, checksum verified) or,
   failing that, exactly one other ``encodec_24khz-<sha8>.th`` (same rule, same loader);
3. nothing: seeded weights (``torch.manual_seed(seed)``) and codebooks built from the statistics of
   the seeded encoder on a seeded speech-like calibration signal (see ``_init_codebooks``). Codes are
   deterministic and spread over the codebooks, but carry no learned meaning: a loud warning says so
   and the fingerprint ends in ``untrained:<seed>@<weights digest>``. The calibrated state is cached on
   disk (``tokenizers.cache_dir``, see ``seeded.cached_state``): later worker starts load it.

Audio is encoded in windows of ``window_s`` (whole chunks), each fed with ``context_s`` of the audio
before it, many windows per forward call. The 24 kHz model is causal, so the zero padding that
batches windows of unequal length only changes the padded tail, which is dropped.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from microturn import storage
from microturn.clock import CHUNK_SAMPLES, CODEC_RATE, HOP
from microturn.config import AudioCodecConfig
from microturn.devices import resolve_device
from microturn.format import MEMBERS
from microturn.media import spill
from microturn.records import StageError, TokenizeInput
from microturn.tokenizers.seeded import SeededState, cached_state, one_torch_thread, recipe_digest, untrained_tag

log = logging.getLogger(__name__)

STOCK_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
CHECKPOINT_RE = re.compile(r"^encodec_24khz-([0-9a-f]{8,64})\.th$")
CODEBOOK_SIZE = 1024
CALIBRATION_S = 16.0  # seconds of calibration signal: 1200 frames, enough for 128-dim statistics
KDE_BANDWIDTH = 0.1  # jitter of seeded codebook entries, in units of the residual covariance
BANDWIDTH_CODEBOOKS = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}


def num_codebooks(bandwidth_kbps: float) -> int:
    try:
        return BANDWIDTH_CODEBOOKS[float(bandwidth_kbps)]
    except KeyError:
        raise ValueError(f"EnCodec 24 kHz has no bandwidth {bandwidth_kbps} kbps") from None


# ---------------------------------------------------------------- building and loading the model


def _bare_model(seed: int) -> Any:
    """The EnCodec 24 kHz architecture with seeded weights (the global RNG is left untouched)."""
    import torch
    from encodec import EncodecModel

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # encodec uses the old weight_norm API
        torch.manual_seed(seed)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    return model.eval()


def _init_codebooks(model: Any, wave: np.ndarray, layers: int, seed: int) -> None:
    """Give ``layers`` RVQ codebooks seeded entries drawn from the data they will quantize.

    ``pretrained=False`` leaves every codebook at zero (EnCodec fills them by k-means on its first
    training batch), which maps everything to code 0. K-means needs many more calibration vectors than
    entries (1024), or the residuals that deeper layers see collapse to zero. Instead each layer draws
    its entries as a kernel density sample of its input residuals on the calibration signal: a random
    residual vector plus Gaussian jitter of ``KDE_BANDWIDTH`` times their covariance. Entries follow the
    data (a plain Gaussian draw leaves most entries far from the data and a few "hub" codes win almost
    every frame), and the jitter keeps the next layer's residuals non-zero. Layer k depends only on
    layers < k, so a lower bandwidth is a prefix of a higher one.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).view(1, 1, -1)
    with torch.inference_mode():
        emb = model.encoder(x)  # [1, D, T]
    _standardise_output(model, emb[0])
    with torch.inference_mode():
        emb = model.encoder(x)
    residual = emb[0].t().double()  # [T, D]
    dim = residual.shape[1]
    gen = torch.Generator().manual_seed(seed)
    for k in range(layers):
        cov = torch.cov(residual.t()) + 1e-12 * torch.eye(dim, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(cov)
        factor = evecs * evals.clamp_min(0).sqrt()  # cov = factor @ factor.T
        picks = torch.randint(0, residual.shape[0], (CODEBOOK_SIZE,), generator=gen)
        jitter = torch.randn(CODEBOOK_SIZE, dim, generator=gen, dtype=torch.float64) @ factor.t()
        entries = residual[picks] + KDE_BANDWIDTH * jitter
        layer = model.quantizer.vq.layers[k]
        book = layer._codebook
        with torch.no_grad():
            book.embed.copy_(entries.float())
            book.embed_avg.copy_(entries.float())
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
        with torch.inference_mode():
            idx = layer.encode(residual.t().float()[None])  # [1, T], the quantizer's own rule
            residual = residual - layer.decode(idx)[0].t().double()


def _standardise_output(model: Any, emb_dt: Any) -> None:
    """Rescale the encoder's last conv so its output has zero mean and unit variance per dimension
    on the calibration signal.

    A randomly initialised SEANet's output is a nearly constant vector with tiny variations; in
    that regime the quantizer's ``|x|^2 - 2 x.e + |e|^2`` loses most of its precision to cancellation,
    so the last bit of a float (thread count, kernel choice) decides many codes. Trained EnCodec
    outputs are well spread; this affine change gives the untrained codec the same property.
    """
    import torch

    last = model.encoder.model[-1].conv.conv  # SConv1d -> NormConv1d -> Conv1d (weight-normed)
    mean = emb_dt.double().mean(1)
    std = emb_dt.double().std(1).clamp_min(1e-12)
    with torch.no_grad():
        last.weight_g.div_(std.view(-1, 1, 1).float())
        last.bias.copy_(((last.bias.double() - mean) / std).float())


def _calibrated_state(seed: int, layers: int) -> dict[str, Any]:
    """State dict of the untrained codec, built: seeded weights, then ``layers`` calibrated codebooks."""
    from microturn.tokenizers.calibration import speech_like

    model = _bare_model(seed)
    with one_torch_thread():
        _init_codebooks(model, speech_like(CALIBRATION_S, seed=seed), layers, seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=4)
def _seeded_state(seed: int, layers: int, cache_dir: Optional[Path] = None) -> SeededState:
    """State dict of the untrained codec and its digest, kept per process and on disk in ``cache_dir``
    (None: the default, ``seeded.default_cache_dir``): building it costs seconds at every worker start."""
    from importlib.metadata import version

    from microturn.tokenizers import calibration

    key = {"seed": seed, "layers": layers, "encodec": version("encodec"),
           "recipe": recipe_digest(__file__, calibration.__file__)}
    return cached_state(f"encodec24k-K{layers}-seed{seed}", key, cache_dir, lambda: _calibrated_state(seed, layers))


def seeded_encodec(seed: int, layers: int = 32, cache_dir: Optional[Path] = None) -> Any:
    """An untrained EnCodec 24 kHz model whose first ``layers`` codebooks are initialised."""
    model = _bare_model(seed)
    model.load_state_dict(_seeded_state(seed, layers, cache_dir).tensors)
    return model.eval()


def save_encodec_checkpoint(model: Any, directory: Path) -> Path:
    """Write ``model``'s state dict as ``encodec_24khz-<sha8>.th`` (the name EnCodec's loader checks)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "encodec_24khz.th.tmp"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    final = directory / f"encodec_24khz-{storage.file_sha256(str(tmp))[:8]}.th"
    tmp.replace(final)
    return final


def _check_sha_prefix(path: Path) -> str:
    """sha256 of ``path``; when its name carries a sha prefix (``...-<hex>.th``) it must match."""
    digest = storage.file_sha256(str(path))
    m = CHECKPOINT_RE.match(path.name)
    if m and not digest.startswith(m.group(1)):
        raise StageError(
            "tokenize",
            "codec_checksum",
            f"{path.name}: sha256 starts with {digest[:8]}, the name promises {m.group(1)}",
            source=str(path),
        )
    return digest


def _load_state_file(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise StageError("tokenize", "codec_unreadable", f"{path}: {exc}", source=str(path)) from None
    if not isinstance(state, dict):
        raise StageError("tokenize", "codec_unreadable", f"{path}: not a state dict", source=str(path))
    return state


def _model_from_state(state: dict[str, Any], source: Path) -> Any:
    from encodec import EncodecModel

    model = EncodecModel._get_model([1.5, 3.0, 6.0, 12.0, 24.0], CODEC_RATE, 1, causal=True, model_norm="weight_norm")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise StageError("tokenize", "codec_state_mismatch", f"{source}: {exc}", source=str(source)) from None
    return model.eval()


def load_encodec(cfg: AudioCodecConfig, cache_dir: Optional[Path] = None) -> tuple[Any, str]:
    """(model on CPU, weights tag): tag is ``sha256:<16 hex>`` or ``untrained:<seed>@<8 hex>``;
    ``cache_dir`` holds seeded calibrations (``tokenizers.cache_dir``)."""
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise StageError("tokenize", "codec_missing", f"checkpoint not found: {path}", source=str(path))
        digest = _check_sha_prefix(path)
        return _model_from_state(_load_state_file(path), path), f"sha256:{digest[:16]}"
    if cfg.weights_dir is not None:
        folder = Path(cfg.weights_dir)
        if not folder.is_dir():
            raise StageError("tokenize", "codec_missing", f"weights_dir is not a folder: {folder}", source=str(folder))
        stock = folder / STOCK_CHECKPOINT
        if stock.is_file():
            from encodec import EncodecModel

            digest = _check_sha_prefix(stock)  # EnCodec checks it too; we also want the full digest
            model = EncodecModel.encodec_model_24khz(pretrained=True, repository=folder)
            return model.eval(), f"sha256:{digest[:16]}"
        found = sorted(p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name))
        if len(found) != 1:
            raise StageError(
                "tokenize",
                "codec_missing",
                f"{folder} holds {len(found)} encodec_24khz-<sha>.th files (need {STOCK_CHECKPOINT} or exactly one)",
                source=str(folder),
            )
        digest = _check_sha_prefix(found[0])
        return _model_from_state(_load_state_file(found[0]), found[0]), f"sha256:{digest[:16]}"
    log.warning(
        "NO ENCODEC WEIGHTS CONFIGURED: the audio codec runs with seeded, UNTRAINED weights (seed %d). "
        "Codes are deterministic but meaningless to a model trained on real EnCodec codes; set "
        "tokenizers.audio.weights_dir to a folder with %s.",
        cfg.seed,
        STOCK_CHECKPOINT,
    )
    layers = num_codebooks(cfg.bandwidth_kbps)
    model = seeded_encodec(cfg.seed, layers, cache_dir)  # strict load: the model's state is that state
    return model, untrained_tag(cfg.seed, _seeded_state(cfg.seed, layers, cache_dir).digest)


def fold_weight_norm(module: Any) -> Any:
    """Replace weight-norm reparametrisations by their plain weights (same values, computed once)."""
    import torch

    for sub in module.modules():
        if hasattr(sub, "weight_g") and hasattr(sub, "weight_v"):
            torch.nn.utils.remove_weight_norm(sub)
    return module


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class Piece:
    """One window of a stream: samples [seg_start, seg_end) go in, frames [keep_from, ...) come out."""

    seg_start: int  # samples
    seg_end: int
    out_frame: int  # first output frame of the window on the stream's frame grid
    keep_from: int  # frames of left context to drop from the segment's codes
    frames: int  # frames kept


def plan_windows(num_samples: int, window_samples: int, context_samples: int) -> list[Piece]:
    """Cover [0, num_samples) by windows of ``window_samples``, each with up to ``context_samples`` before it."""
    pieces = []
    for start in range(0, num_samples, window_samples):
        seg_start = max(0, start - context_samples)
        seg_end = min(num_samples, start + window_samples)
        pieces.append(Piece(seg_start, seg_end, start // HOP, (start - seg_start) // HOP, (seg_end - start) // HOP))
    return pieces


def _whole_chunks(seconds: float, minimum: int) -> int:
    """Seconds -> samples, rounded to whole chunks (at least ``minimum`` chunks)."""
    return max(minimum, int(round(seconds * CODEC_RATE / CHUNK_SAMPLES))) * CHUNK_SAMPLES


# Rows the fast encoder's LSTM takes at once on a CPU (per-row cost flattens out there: 31 ms per 10 s
# window at 12 rows against 82 ms at 2, one thread); the rest of the encoder keeps batch_windows rows.
LSTM_ROWS = 12


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------- the tokenizer


class AudioTokenizer:
    """EnCodec 24 kHz: float32 [streams, samples] <-> int16 [streams, K, samples // 320].

    The ``audio`` representation: ``codes.npy`` int16 [S, K, F] on the codec frame grid."""

    name = "audio"
    vocab_size = CODEBOOK_SIZE
    frame_rate = Fraction(CODEC_RATE, HOP)  # 75 codec frames per second: 15 per chunk
    # declared by format version 1 (corpora whose dataset.json lists no members hold exactly these)
    members = (MEMBERS["codes.npy"],)
    fill = {"codes.npy": 0}

    def __init__(self, model: Any, cfg: AudioCodecConfig, weights_tag: str) -> None:
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "tokenize")
        self.num_codebooks = num_codebooks(cfg.bandwidth_kbps)
        self.weights_tag = weights_tag
        self.window_samples = _whole_chunks(cfg.window_s, 1)
        self.context_samples = _whole_chunks(cfg.context_s, 0)
        model.set_target_bandwidth(float(cfg.bandwidth_kbps))
        fold_weight_norm(model)  # same weights, computed once (also speeds up decode)
        self.model = model.to(self.device).eval()
        self.encoder: Any = self.model.encoder
        if cfg.engine == "fast":
            from microturn.tokenizers.fast_encodec import FastSEANetEncoder

            self.encoder = FastSEANetEncoder(self.model.encoder, cfg.precision).to(self.device).eval()
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        bw = f"{self.cfg.bandwidth_kbps:g}kbps"
        parts = ["encodec24k", bw, f"K{self.num_codebooks}", f"V{self.vocab_size}"]
        if self.cfg.precision != "fp32":
            parts.append(self.cfg.precision)  # reduced precision changes a few codes
        parts.append(self.weights_tag)
        return "/".join(parts)

    # -- encode

    def encode(self, wave_24k: np.ndarray) -> np.ndarray:
        """float32 [streams, samples] (samples a multiple of 4800) -> int16 [streams, K, samples // 320]."""
        return self.encode_many([wave_24k])[0]

    def encode_many(self, waves_24k: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``encode`` of several sessions, their windows batched together (a tokenizer actor's concurrent
        calls: one forward pass may hold windows of several sessions). Each window's codes are the same
        whichever batch it lands in, so the sessions' codes do not depend on which came together."""
        waves = [self._checked(w) for w in waves_24k]
        outs = [np.zeros((w.shape[0], self.num_codebooks, w.shape[1] // HOP), dtype=np.int16) for w in waves]
        jobs = [(k, s, p) for k, w in enumerate(waves) for s in range(w.shape[0])
                for p in plan_windows(w.shape[1], self.window_samples, self.context_samples)]
        pending: Optional[tuple[list[list[Any]], list[Any]]] = None
        for group in _batches(list(_batches(jobs, self.cfg.batch_windows)), self._batches_per_call()):
            bufs = [self._window_buffer(batch, waves) for batch in group]
            # on a GPU the batch runs while the next one is cut and copied: its codes are read after that
            launched = (group, self._launch_many(bufs))
            if pending is not None:
                self._collect(*pending, outs)
            pending = launched
        if pending is not None:
            self._collect(*pending, outs)
        return outs

    def _batches_per_call(self) -> int:
        """Batches encoded in one call: on a CPU the fast encoder runs their convolutions batch by batch
        (small tiles stay in cache) and their LSTM as one (its weights read once per step for all rows;
        ``FastSEANetEncoder.forward_many``), ``LSTM_ROWS`` rows at least. On a GPU, one: its batches
        are already large, and each is launched while the previous one's codes are read."""
        if self.device != "cpu" or self.cfg.engine != "fast":
            return 1
        return max(1, -(-LSTM_ROWS // max(self.cfg.batch_windows, 2)))

    def _window_buffer(self, batch: list[Any], waves: list[np.ndarray]) -> np.ndarray:
        """float32 [rows, 1, length]: the batch's windows, zero-padded at the end (causal: dropped)."""
        fixed = self.device != "cpu"  # accelerators pick kernels by shape: give every call the same one
        length = self.window_samples + self.context_samples if fixed else max(p.seg_end - p.seg_start for _, _, p in batch)
        # oneDNN picks other convolution kernels for a batch of one, whose sums round differently and
        # flip a code now and then: a lone window runs beside a zero row, so every window's codes are
        # the same whichever batch it lands in (measured: batches of 2-8 agree bit for bit).
        rows = max(self.cfg.batch_windows if fixed else len(batch), 2)
        buf = np.zeros((rows, 1, length), dtype=np.float32)
        for i, (k, s, p) in enumerate(batch):
            buf[i, 0, : p.seg_end - p.seg_start] = waves[k][s, p.seg_start : p.seg_end]
            spill.release(waves[k][s, p.seg_start : p.seg_end])  # a spilled session's window goes back
        return buf

    def _collect(self, group: list[list[Any]], codes_on_device: list[Any], outs: list[np.ndarray]) -> None:
        for batch, batch_codes in zip(group, codes_on_device):
            codes = _codes_array(batch_codes)  # [rows, K, frames]
            for i, (k, s, p) in enumerate(batch):
                outs[k][s, :, p.out_frame : p.out_frame + p.frames] = codes[i, :, p.keep_from : p.keep_from + p.frames]

    def _checked(self, wave_24k: np.ndarray) -> np.ndarray:
        """float32 [streams, samples], a whole number of chunks, finite (checked a window at a time: a
        session-sized mask would be 0.17 GB per hour of stereo)."""
        wave = np.asarray(wave_24k, dtype=np.float32)
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2:
            raise StageError("tokenize", "bad_audio_shape", f"expected [streams, samples], got {wave.shape}")
        if wave.shape[1] % CHUNK_SAMPLES:
            raise StageError(
                "tokenize", "bad_audio_length", f"{wave.shape[1]} samples is not a multiple of {CHUNK_SAMPLES}"
            )
        step = self.window_samples
        if not all(_finite(wave[:, i : i + step]) for i in range(0, wave.shape[1], step)):
            raise StageError("tokenize", "non_finite_audio", "audio holds NaN or infinity")
        return wave

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, 1, L] (L a multiple of 320) -> int16 [B, K, L // 320]; one forward pass."""
        return _codes_array(self._launch_many([batch])[0])

    def _launch_many(self, batches: list[np.ndarray]) -> list[Any]:
        """The codes of each float32 [B, 1, L] as a [K, B, L // 320] tensor on the device, not yet waited
        for (on a GPU the work is queued; reading the tensor waits for it)."""
        import torch

        xs = [torch.from_numpy(b) for b in batches]
        if self.device.startswith("cuda"):
            xs = [x.pin_memory().to(self.device, non_blocking=True) for x in xs]
        with torch.inference_mode():
            if self.cfg.engine == "fast":  # the fast encoder handles its own precision
                embs = self.encoder.forward_many(xs)
            elif self.cfg.precision == "bf16":
                with torch.autocast(device_type=xs[0].device.type, dtype=torch.bfloat16):
                    embs = [self.encoder(x).float() for x in xs]
            else:
                embs = [self.encoder(x) for x in xs]
            if self.cfg.engine == "fast" and self.device == "cpu":  # EnCodec's codes, in cache-sized blocks
                from microturn.tokenizers.fast_encodec import rvq_encode

                return [rvq_encode(self.model.quantizer, e, self.model.frame_rate, self.model.bandwidth) for e in embs]
            return [self.model.quantizer.encode(e, self.model.frame_rate, self.model.bandwidth) for e in embs]  # [K, B, T]

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        return [({"codes.npy": codes}, {}) for codes in self.encode_many([inp.waves_24k for inp in batch])]

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "codebooks": self.num_codebooks,
                "dims": {"K": self.num_codebooks}}

    def window_meta(self) -> dict[str, Any]:
        return {"codebooks": self.num_codebooks}

    # -- decode

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int16 [streams, K, F] -> float32 [streams, F * 320] (for listening to what was encoded)."""
        import torch

        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[1] > self.model.quantizer.n_q:
            raise StageError("tokenize", "bad_codes_shape", f"expected [streams, K, frames], got {codes.shape}")
        streams, _, frames = codes.shape
        out = np.zeros((streams, frames * HOP), dtype=np.float32)
        win = self.window_samples // HOP
        ctx = self.context_samples // HOP
        for s in range(streams):
            for p in plan_windows(frames * HOP, win * HOP, ctx * HOP):
                f0, f1 = p.seg_start // HOP, p.seg_end // HOP
                c = torch.from_numpy(codes[s : s + 1, :, f0:f1].astype(np.int64)).to(self.device)
                with torch.inference_mode():
                    emb = self.model.quantizer.decode(c.transpose(0, 1))
                    wav = self.model.decoder(emb)[0, 0].float().cpu().numpy()
                keep = p.keep_from * HOP
                out[s, p.out_frame * HOP : (p.out_frame + p.frames) * HOP] = wav[keep : keep + p.frames * HOP]
        return out


def _codes_array(codes_KBT: Any) -> np.ndarray:
    """The quantizer's [K, B, T] codes as int16 [B, K, T] in memory (waits for a GPU's queued work)."""
    import torch

    return codes_KBT.transpose(0, 1).to(torch.int16).cpu().numpy()


def _finite(window: np.ndarray) -> bool:
    ok = bool(np.isfinite(window).all())
    spill.release(window)
    return ok


def load_audio_tokenizer(cfg: AudioCodecConfig, cache_dir: Optional[Path] = None) -> AudioTokenizer:
    model, tag = load_encodec(cfg, cache_dir)
    return AudioTokenizer(model, cfg, tag)
