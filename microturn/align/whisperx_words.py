"""whisperX, offline: ASR (CTranslate2 Whisper dir), forced alignment (local wav2vec2 CTC dir) and
diarization (local pyannote pipeline dir), all on in-memory 16 kHz waveforms.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` is set before whisperX is imported, models
load from configured directories only, and a missing directory is a ``StageError`` naming the path.
whisperX's aligner needs NLTK's ``punkt_tab`` data; ``ensure_punkt_tab`` provides the four files
(empty tables are a valid, abbreviation-free model) under a private NLTK_DATA folder.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from microturn.clock import ASR_RATE
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


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    if not transcript:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = whisperx.align(transcript, model, meta, np.ascontiguousarray(wave_16k, dtype=np.float32), device)
    words = []
    for seg in result.get("segments", []):
        for w in seg.get("words", []):
            words.append((str(w.get("word", "")).strip(), w.get("start"), w.get("end"), w.get("score")))
    return [w for w in words if w[0]]


@functools.lru_cache(maxsize=1)
def load_asr(model_dir: str, device: str, language: Optional[str], batch_size: int) -> Any:
    _offline()
    from microturn.align.vad import bundled_vad_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import whisperx
        from whisperx.vads.pyannote import Pyannote

        vad = Pyannote(device, model_fp=str(bundled_vad_path()), vad_onset=0.5, vad_offset=0.363)
        compute = "float16" if device == "cuda" else "int8"
        return whisperx.load_model(
            model_dir, device, compute_type=compute, language=language, vad_model=vad, local_files_only=True
        )


def transcribe(
    wave_16k: np.ndarray, model_dir: Path, device: str, language: Optional[str], batch_size: int
) -> tuple[list[tuple[str, float, float]], str]:
    """Whisper segments (text, start_s, end_s) and the language used."""
    model_dir = _require_dir(model_dir, "ASR (CTranslate2 Whisper) model directory")
    try:
        model = load_asr(str(model_dir), device, language, batch_size)
    except StageError:
        raise
    except Exception as exc:
        raise StageError("align", "model_unloadable", f"cannot load ASR model {model_dir}: {exc}") from exc
    result = model.transcribe(np.ascontiguousarray(wave_16k, dtype=np.float32), batch_size=batch_size, language=language)
    segs = [(s["text"].strip(), float(s["start"]), float(s["end"])) for s in result.get("segments", [])]
    return [s for s in segs if s[0]], result.get("language") or language or "en"


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


__all__ = ["ASR_RATE", "align_segments", "diarize", "ensure_punkt_tab", "resolve_device", "transcribe"]
