"""whisperX, offline: ASR (CTranslate2 Whisper dir), forced alignment (local wav2vec2 CTC dir) and
diarization (local pyannote pipeline dir), all on in-memory 16 kHz waveforms.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` is set before whisperX is imported, models
load from configured directories only, and a missing directory is a ``StageError`` naming the path.
whisperX's aligner needs NLTK's ``punkt_tab`` data; ``ensure_punkt_tab`` provides the four files
(empty tables are a valid, abbreviation-free model) under a private NLTK_DATA folder.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microturn.clock import ASR_RATE
from microturn.media import spill
from microturn.records import StageError

log = logging.getLogger(__name__)

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def ensure_punkt_tab(nltk_data_dir: Optional[Path] = None) -> Path:
    """A folder holding ``tokenizers/punkt_tab/english/`` (existing files are kept), registered
    with NLTK. Default: a folder under the system temp dir, shared by the process."""
    root = Path(nltk_data_dir) if nltk_data_dir else Path(tempfile.gettempdir()) / "microturn-nltk-data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    for name in PUNKT_FILES:
        f = english / name
        if not f.exists():
            f.touch()
    os.environ["NLTK_DATA"] = str(root)
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def _require_dir(path: Optional[Path], what: str) -> Path:
    if path is None or not Path(path).exists():
        raise StageError("align", "model_missing", f"{what} not found at {path} (set it in the align config)")
    return Path(path)


@functools.lru_cache(maxsize=2)
def load_aligner(model_dir: str, language: str, device: str) -> tuple[Any, dict]:
    _offline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import whisperx

        try:
            return whisperx.load_align_model(language, device, model_name=model_dir, model_cache_only=True)
        except Exception as exc:  # whisperX wraps every failure in ValueError
            raise StageError("align", "model_unloadable", f"cannot load alignment model {model_dir}: {exc}") from exc


def align_segments(
    wave_16k: np.ndarray,
    segments: Sequence[tuple[str, float, float]],
    model_dir: Path,
    language: str,
    device: str,
    nltk_data_dir: Optional[Path] = None,
) -> list[tuple[str, Optional[float], Optional[float], Optional[float]]]:
    """Forced-align (text, start_s, end_s) segments; returns (word, start_s, end_s, score) per word.
    Words the aligner could not place come back with None times (the caller interpolates)."""
    model_dir = _require_dir(model_dir, "alignment model directory")
    ensure_punkt_tab(nltk_data_dir)
    model, meta = load_aligner(str(model_dir), language, device)
    import whisperx

    transcript = [{"text": t, "start": float(s), "end": float(e)} for t, s, e in segments if t.strip()]
    audio = np.ascontiguousarray(wave_16k, dtype=np.float32)  # a spilled float32 stream as it is: no copy
    words = []
    for run in _align_passes(transcript, ALIGN_PASS_S):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = whisperx.align(run, model, meta, audio, device)
        # whisperX aligns each segment on its own: the stream's pages these segments read can go back
        spill.release(audio[int(min(s["start"] for s in run) * ASR_RATE) : int(max(s["end"] for s in run) * ASR_RATE) + 1])
        for seg in result.get("segments", []):
            for w in seg.get("words", []):
                words.append((str(w.get("word", "")).strip(), w.get("start"), w.get("end"), w.get("score")))
    return [w for w in words if w[0]]


# Seconds of a stream whose segments go to whisperX's aligner at once (it aligns each segment on its own,
# so the words are those of one call): the pages of the stream they read go back after each.
ALIGN_PASS_S = 600.0


def _align_passes(transcript: list[dict[str, Any]], seconds: float) -> list[list[dict[str, Any]]]:
    """Consecutive segments in runs spanning at most ``seconds`` (a longer segment alone)."""
    runs: list[list[dict[str, Any]]] = []
    for seg in transcript:
        if runs and seg["end"] - runs[-1][0]["start"] <= seconds:
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


@functools.lru_cache(maxsize=2)
def load_whisper(model_dir: str, device: str, threads: int = 0) -> Any:
    """whisperX's CTranslate2 Whisper model (a faster-whisper ``WhisperModel``): int8 on CPU,
    float16 on CUDA. ``threads`` 0 follows torch's thread count, which a build task sets to its CPU
    share (CTranslate2's own default of 4 would oversubscribe a one-CPU Ray task)."""
    _offline()
    if not threads:
        import torch

        threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from whisperx.asr import WhisperModel

        compute = "float16" if device == "cuda" else "int8"
        try:
            return WhisperModel(model_dir, device=device, compute_type=compute, cpu_threads=threads, local_files_only=True)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError on a bad folder
            raise StageError("align", "model_unloadable", f"cannot load ASR model {model_dir}: {exc}") from exc


@functools.lru_cache(maxsize=1)
def load_asr(model_dir: str, device: str, language: Optional[str], threads: int = 0) -> Any:
    """whisperX's own pipeline (its pyannote VAD, then batched decoding without timestamps) over the
    model of ``load_whisper``; kept for comparison (benchmarks/asr.py), the build uses
    ``transcribe_regions``."""
    from microturn.align.vad import bundled_vad_path

    model = load_whisper(model_dir, device, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import whisperx
        from whisperx.vads.pyannote import Pyannote

        vad = Pyannote(device, model_fp=str(bundled_vad_path()), vad_onset=0.5, vad_offset=0.363)
        return whisperx.load_model(
            model_dir, device, language=language, vad_model=vad, model=model, local_files_only=True
        )


def transcribe(
    wave_16k: np.ndarray, model_dir: Path, device: str, language: Optional[str], batch_size: int, threads: int = 0
) -> tuple[list[tuple[str, float, float]], str]:
    """whisperX's own ``transcribe`` of a whole waveform: segments (text, start_s, end_s) and the language."""
    model_dir = _require_dir(model_dir, "ASR (CTranslate2 Whisper) model directory")
    try:
        model = load_asr(str(model_dir), device, language, threads)
    except StageError:
        raise
    except Exception as exc:
        raise StageError("align", "model_unloadable", f"cannot load ASR model {model_dir}: {exc}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.transcribe(np.ascontiguousarray(wave_16k, dtype=np.float32), batch_size=batch_size, language=language)
    segs = [(s["text"].strip(), float(s["start"]), float(s["end"])) for s in result.get("segments", [])]
    return [s for s in segs if s[0]], result.get("language") or language or "en"


# ---------------------------------------------------------------- ASR of speech regions, word timestamps

CHUNK_S = 30.0  # Whisper's window: one batch item
GAP_S = 0.2  # silence put between two regions joined into one window (keeps words from fusing)


@dataclasses.dataclass(frozen=True)
class AsrWord:
    text: str
    start_s: float  # on the input waveform's clock
    end_s: float
    probability: float
    region: int  # index of the speech region it came from


@dataclasses.dataclass(frozen=True)
class Compacted:
    """Speech regions cut out of a waveform and laid end to end (``GAP_S`` of silence between them),
    packed into windows of at most ``CHUNK_S``: only the regions are ever decoded."""

    wave: np.ndarray  # float32, ASR_RATE
    spans: tuple[tuple[float, float, float, int], ...]  # (compact start, source start, duration, region)
    clips: tuple[tuple[float, float], ...]  # windows (compact start, compact end), each <= CHUNK_S

    @functools.cached_property
    def _starts(self) -> list[float]:
        return [s[0] for s in self.spans]

    def to_source(self, t: float, side: str) -> tuple[float, int]:
        """A compact time back on the source clock. A time in a gap goes to the next region's start
        (``side="start"``) or the previous region's end (``side="end"``)."""
        i = max(bisect.bisect_right(self._starts, t) - 1, 0)
        c0, src, dur, region = self.spans[i]
        if t <= c0 + dur:
            return src + max(t - c0, 0.0), region
        if side == "start" and i + 1 < len(self.spans):
            return self.spans[i + 1][1], self.spans[i + 1][3]
        return src + dur, region


# Whisper windows transcribed per pass: only one pass's compacted speech is held (a multiple of the batch,
# about 16 min: 61 MB), and the stream's pages it read go back to the kernel after it.
PASS_WINDOWS = 32


def pack_regions(regions: Sequence[tuple[float, float]], num_samples: int, rate: int = ASR_RATE) -> list[tuple[int, int, int, int]]:
    """Where each piece of the speech ``regions`` (source seconds, sorted, disjoint) goes: (start, end)
    in source samples, its region, and the window it lands in. A region longer than a window is cut
    (rare: 30 s without a pause); a piece joins the window before it when it fits, ``GAP_S`` after it."""
    limit, gap = int(CHUNK_S * rate), int(GAP_S * rate)
    pieces: list[tuple[int, int, int, int]] = []
    window, window_start, pos = -1, 0, 0  # the current window, where it starts and ends (compact samples)
    for r, (start, end) in enumerate(regions):
        a, b = max(int(round(start * rate)), 0), min(int(round(end * rate)), num_samples)
        for x in range(a, b, limit):
            y = min(x + limit, b)
            if window >= 0 and pos + gap + (y - x) - window_start <= limit:
                pos += gap
            else:
                window, window_start = window + 1, pos
            pieces.append((x, y, r, window))
            pos += y - x
    return pieces


def compact_regions(
    wave_16k: np.ndarray, regions: Sequence[tuple[float, float]], rate: int = ASR_RATE
) -> Compacted:
    """Cut ``regions`` (source seconds, sorted, disjoint) out of ``wave_16k`` and pack them into windows."""
    return _compacted(wave_16k, pack_regions(regions, wave_16k.shape[0], rate), rate)


def _compacted(wave_16k: np.ndarray, pieces: Sequence[tuple[int, int, int, int]], rate: int) -> Compacted:
    """The pieces (``pack_regions``) laid end to end, ``GAP_S`` of silence between two of one window."""
    gap = int(GAP_S * rate)
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float, float, int]] = []
    clips: list[tuple[int, int]] = []
    pos, last_window = 0, None
    for a, b, r, window in pieces:
        if window == last_window:
            parts.append(np.zeros(gap, dtype=np.float32))
            pos += gap
            clips[-1] = (clips[-1][0], pos + b - a)
        else:
            clips.append((pos, pos + b - a))
        spans.append((pos / rate, a / rate, (b - a) / rate, r))
        parts.append(np.asarray(wave_16k[a:b], dtype=np.float32))
        pos += b - a
        last_window = window
    wave = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return Compacted(wave, tuple(spans), tuple((a / rate, b / rate) for a, b in clips))


def _passes(pieces: list[tuple[int, int, int, int]], windows: int) -> list[list[tuple[int, int, int, int]]]:
    """The pieces (in window order) in runs of ``windows`` whole windows: each run packs as it does
    among all of them."""
    return [list(run) for _, run in itertools.groupby(pieces, key=lambda piece: piece[3] // windows)]


def transcribe_regions(
    wave_16k: np.ndarray,
    regions: Sequence[tuple[float, float]],
    model_dir: Path,
    device: str,
    language: Optional[str],
    batch_size: int,
    beam_size: int = 5,
    threads: int = 0,
) -> tuple[list[AsrWord], Optional[str]]:
    """Whisper words, with Whisper's own word timestamps, of the speech ``regions`` of one stream.

    Only the regions are decoded (never what lies between them, e.g. another speaker's bleed), in
    batches of 30 s windows through the model whisperX loads. whisperX's pipeline decodes without
    timestamps, so the batches go through faster-whisper's batched pipeline over that same model
    with ``word_timestamps=True``. ``language`` None: detected from the regions (returned), in the
    first pass; the later ones are told it. Memory is bounded by a pass (``PASS_WINDOWS``), not by
    the stream: an hour of speech compacted at once was 0.23 GB, besides the stream's pages it read."""
    model_dir = _require_dir(model_dir, "ASR (CTranslate2 Whisper) model directory")
    pieces = pack_regions(regions, wave_16k.shape[0])
    if not pieces:
        return [], language
    model = load_whisper(str(model_dir), device, threads)
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(model)
    per_pass = batch_size * max(1, PASS_WINDOWS // batch_size)  # whole batches: each batch as in one pass
    words: list[AsrWord] = []
    for run in _passes(pieces, per_pass):
        packed = _compacted(wave_16k, run, ASR_RATE)
        spill.release(wave_16k[run[0][0] : run[-1][1]])  # a spilled stream's pages go back once copied
        clips = [{"start": a, "end": b} for a, b in packed.clips]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            segments, info = pipeline.transcribe(
                packed.wave,
                language=language,
                clip_timestamps=clips,
                word_timestamps=True,
                batch_size=batch_size,
                beam_size=beam_size,
            )
            segments = list(segments)
        language = language or info.language
        for seg in segments:
            for w in seg.words or ():
                text = w.word.strip()
                if not text:
                    continue
                start, region = packed.to_source(float(w.start), "start")
                end, _ = packed.to_source(float(w.end), "end")
                words.append(AsrWord(text, start, max(start, end), float(w.probability), region))
    return words, language


def diarize(wave_16k: np.ndarray, pipeline_dir: Path, device: str) -> list[tuple[str, float, float]]:
    """(speaker label, start_s, end_s) turns of a mixed track from a local pyannote pipeline."""
    pipeline_dir = _require_dir(pipeline_dir, "diarization pipeline directory")
    _offline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from whisperx.diarize import DiarizationPipeline

        try:
            pipe = DiarizationPipeline(model_name=str(pipeline_dir), device=device)
        except Exception as exc:
            raise StageError("align", "model_unloadable", f"cannot load diarization pipeline {pipeline_dir}: {exc}") from exc
        df = pipe(np.ascontiguousarray(wave_16k, dtype=np.float32))
    return [(str(r.speaker), float(r.start), float(r.end)) for r in df.itertuples()]


__all__ = [
    "ASR_RATE",
    "AsrWord",
    "align_segments",
    "compact_regions",
    "pack_regions",
    "diarize",
    "ensure_punkt_tab",
    "load_whisper",
    "transcribe",
    "transcribe_regions",
]
