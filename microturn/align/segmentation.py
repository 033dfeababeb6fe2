"""The speech segmentation model bundled in the whisperX wheel, run by our own code from its weights.

The model is pyannote's PyanNet (SincNet front end, four bidirectional LSTM layers, two linear layers, a
sigmoid per speaker, 3 speakers). Why not pyannote's ``Model`` and ``Inference``: importing
``pyannote.audio`` pulls in Lightning, torchmetrics, torchvision and transformers, measured at 3.6 s and
360 MB in every worker, for a network of 1.5 M parameters.

The checkpoint is a Lightning pickle, so only pyannote reads it, once per machine: its tensors (the
SincNet filters already computed from their learned cut-offs) go into the seeded-state cache
(``tokenizers/seeded.py``: loaded with ``weights_only=True``, digest checked). Every later worker loads
the cache and never imports pyannote.

Sliding windows and their overlap-add follow pyannote's ``Inference`` for this model: 5 s windows every
1 s, the last one zero-padded, speech = max over the speakers per frame, Hamming-weighted average of the
windows covering a frame, cut to the audio. A test compares both on real speech.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microturn.clock import ASR_RATE

log = logging.getLogger(__name__)

WINDOW_S = 5  # the checkpoint's training chunks
STEP_S = 1  # windows every second (a fifth of a window), as the VAD used through pyannote did
BATCH = 8  # windows per forward pass (pyannote's batch; the last, padded window runs alone)
# SincNet then three max-pools: (kernel, stride) of each layer, for the frame step and receptive field
_LAYERS = ((251, 10), (3, 3), (5, 1), (3, 3), (5, 1), (3, 3))
FRAME_STEP = int(np.prod([s for _, s in _LAYERS]))  # 270 samples (16.875 ms) between output frames
_RECEPTIVE = 1 + sum((k - 1) * int(np.prod([s for _, s in _LAYERS[:i]])) for i, (k, _) in enumerate(_LAYERS))
_LSTM = dict(input_size=60, hidden_size=128, num_layers=4, bidirectional=True, batch_first=True)


class SegmentationUnavailable(RuntimeError):
    """The bundled checkpoint is missing or could not be read."""


@dataclass(frozen=True)
class SpeechScores:
    """Speech probability per output frame of the model, with each frame's centre in seconds."""

    times_s: np.ndarray  # float64 [frames]
    scores: np.ndarray  # float32 [frames]


class Segmenter:
    """Speech probability of a 16 kHz wave from the bundled segmentation model (CPU or GPU)."""

    window_s = WINDOW_S
    step_s = STEP_S
    frame_step_samples = FRAME_STEP

    def __init__(self, state: dict[str, Any], device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.state = {k: v.to(self.device) for k, v in state.items() if not k.startswith("lstm.")}
        self.lstm = torch.nn.LSTM(**_LSTM).to(self.device).eval()
        self.lstm.load_state_dict({k[len("lstm.") :]: v for k, v in state.items() if k.startswith("lstm.")})

    def frames(self, chunks: Any) -> Any:
        """float32 [B, 1, 80000] -> speech probability [B, frames] (max over the speakers)."""
        import torch
        import torch.nn.functional as F

        s = self.state
        # On a CPU the front end goes window by window: a batch's SincNet output (80 channels x 7,975
        # frames each, 20 MB for 8 windows) leaves the cache between its six memory-bound steps; one
        # window's does not (measured: 31 against 57 ms per 8 windows, the same scores bit for bit).
        # The LSTM still takes the whole batch. A GPU takes the batch in one go.
        pieces = chunks.split(1) if self.device.type == "cpu" else (chunks,)
        x = torch.cat([self._front(piece) for piece in pieces])
        x, _ = self.lstm(x.transpose(1, 2))
        for i in range(2):
            x = F.leaky_relu(F.linear(x, s[f"linear.{i}.weight"], s[f"linear.{i}.bias"]))
        return torch.sigmoid(F.linear(x, s["classifier.weight"], s["classifier.bias"])).amax(dim=-1)

    def _front(self, chunks: Any) -> Any:
        """SincNet and the three conv blocks: float32 [B, 1, 80000] -> [B, 60, frames]."""
        import torch
        import torch.nn.functional as F

        s = self.state
        x = F.instance_norm(chunks, weight=s["wav_norm.weight"], bias=s["wav_norm.bias"], eps=1e-5)
        x = torch.abs(F.conv1d(x, s["sinc.filters"], stride=_LAYERS[0][1]))
        for i in range(3):
            if i:
                x = F.conv1d(x, s[f"conv.{i}.weight"], s[f"conv.{i}.bias"])
            x = F.max_pool1d(x, 3, stride=3)
            x = F.leaky_relu(F.instance_norm(x, weight=s[f"norm.{i}.weight"], bias=s[f"norm.{i}.bias"], eps=1e-5))
        return x

    def __call__(self, wave_16k: np.ndarray) -> SpeechScores:
        """Windows over ``wave_16k`` (float32), their frames averaged where they overlap."""
        import torch

        window, step = WINDOW_S * ASR_RATE, STEP_S * ASR_RATE
        n = wave_16k.shape[0]
        full = (n - window) // step + 1 if n >= window else 0
        has_last = n < window or (n - window) % step > 0
        wave = torch.from_numpy(np.ascontiguousarray(wave_16k, dtype=np.float32))
        scores = []
        with torch.inference_mode(), _full_fp32(self.device):
            chunks = wave.unfold(0, window, step)[:, None, :] if full else wave.new_zeros((0, 1, window))
            for b in range(0, full, BATCH):
                scores.append(self.frames(chunks[b : b + BATCH].to(self.device)).float().cpu().numpy())
            if has_last:
                last = torch.nn.functional.pad(wave[full * step :], (0, window - (n - full * step)))
                scores.append(self.frames(last[None, None].to(self.device)).float().cpu().numpy())
        return _overlap_add(np.concatenate(scores), n, has_last)


def _full_fp32(device: Any) -> Any:
    """On CUDA, cuDNN's convolutions and LSTM in full fp32 and deterministic. By default they may use
    TF32 (10-bit mantissas): on an H200 the speech scores then differed from the CPU's by up to 0.12,
    enough to move speech boundaries with the device a session happened to run on."""
    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)


def _overlap_add(chunk_scores: np.ndarray, num_samples: int, cut: bool) -> SpeechScores:
    """[chunks, frames per chunk] -> one score per frame: the Hamming-weighted mean of the chunks
    covering it (the arithmetic of pyannote's ``Inference.aggregate``: float32 sums of float64
    products, so that the figures are theirs); ``cut``: only the frames the audio reaches."""
    num_chunks, per_chunk = chunk_scores.shape
    step_s = FRAME_STEP / ASR_RATE
    num_frames = int(np.rint((WINDOW_S + (num_chunks - 1) * STEP_S) / step_s)) + 1
    total = np.zeros(num_frames, dtype=np.float32)
    weight = np.zeros(num_frames, dtype=np.float32)
    hamming = np.hamming(per_chunk)
    for k in range(num_chunks):
        first = int(np.rint(k * STEP_S / step_s))
        total[first : first + per_chunk] += chunk_scores[k].astype(np.float64) * hamming
        weight[first : first + per_chunk] += hamming
    average = total / np.maximum(weight, np.float32(1e-12))
    if cut:  # frames that start within the audio (pyannote's "loose" crop)
        average = average[: int(np.floor(num_samples / ASR_RATE / step_s)) + 1]
    times = np.arange(average.shape[0]) * step_s + (_RECEPTIVE / ASR_RATE) / 2
    return SpeechScores(times, average.astype(np.float32))


def bundled_checkpoint() -> Path:
    """The segmentation checkpoint inside the whisperX wheel."""
    import importlib.util

    spec = importlib.util.find_spec("whisperx")
    if spec is None or spec.origin is None:
        raise SegmentationUnavailable("whisperx is not installed")
    return Path(spec.origin).parent / "assets" / "pytorch_model.bin"


@functools.lru_cache(maxsize=2)
def load_segmenter(checkpoint: Optional[str] = None, device: str = "cpu") -> Segmenter:
    """The cached segmenter: its tensors from the seeded-state cache, or read once through pyannote."""
    from microturn.tokenizers.seeded import cached_state, recipe_digest

    path = Path(checkpoint) if checkpoint else bundled_checkpoint()
    if not path.is_file():
        raise SegmentationUnavailable(f"segmentation model not found at {path}")
    stat = path.stat()
    key = {"checkpoint": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "recipe": recipe_digest(__file__)}
    try:
        state = cached_state("segmentation", key, None, lambda: _tensors_from_checkpoint(path)).tensors
    except SegmentationUnavailable:
        raise
    except Exception as exc:  # version skew inside pyannote/lightning: the caller falls back, loudly
        raise SegmentationUnavailable(f"cannot load the segmentation model {path}: {type(exc).__name__}: {exc}") from exc
    return Segmenter(state, device)


def _tensors_from_checkpoint(path: Path) -> dict[str, Any]:
    """The network's tensors, named for ``Segmenter``, read through pyannote (its checkpoint is a
    Lightning pickle that only pyannote's classes can read)."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchcodec complains about missing system FFmpeg: unused
        from pyannote.audio import Model

        # The bundled checkpoint predates this Lightning: it is upgraded in memory, and Lightning says so
        # at INFO. Nothing for the user to do, so keep that line out.
        logging.getLogger("lightning.pytorch.utilities.migration.utils").setLevel(logging.WARNING)
        model = Model.from_pretrained(str(path))
    if model is None:
        raise SegmentationUnavailable(f"pyannote could not load {path}")
    _check_architecture(model)
    sd = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        filters = model.sincnet.conv1d[0].filterbank.filters().detach().clone().float().contiguous()
    state = {"wav_norm.weight": sd["sincnet.wav_norm1d.weight"], "wav_norm.bias": sd["sincnet.wav_norm1d.bias"],
             "sinc.filters": filters}
    for i in range(3):
        state[f"norm.{i}.weight"], state[f"norm.{i}.bias"] = sd[f"sincnet.norm1d.{i}.weight"], sd[f"sincnet.norm1d.{i}.bias"]
    for i in (1, 2):
        state[f"conv.{i}.weight"], state[f"conv.{i}.bias"] = sd[f"sincnet.conv1d.{i}.weight"], sd[f"sincnet.conv1d.{i}.bias"]
    for i in range(2):
        state[f"linear.{i}.weight"], state[f"linear.{i}.bias"] = sd[f"linear.{i}.weight"], sd[f"linear.{i}.bias"]
    state["classifier.weight"], state["classifier.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    state.update({k: v for k, v in sd.items() if k.startswith("lstm.")})
    return state


def _check_architecture(model: Any) -> None:
    """Refuse a checkpoint whose network is not the one ``Segmenter`` runs (another pyannote model)."""
    hp = dict(model.hparams)
    expected = {"sincnet": {"stride": 10, "sample_rate": ASR_RATE},
                "lstm": {"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True},
                "linear": {"hidden_size": 128, "num_layers": 2}}
    for block, values in expected.items():
        got = dict(hp.get(block) or {})
        if any(got.get(k) != v for k, v in values.items()):
            raise SegmentationUnavailable(f"unsupported segmentation architecture: {block} = {got}")
    if float(model.specifications.duration) != WINDOW_S or len(model.specifications.classes) != 3:
        raise SegmentationUnavailable("unsupported segmentation model: expected 5 s windows and 3 speakers")
