"""A trained model in a recorded conversation: one speaker's side replayed into a ``RealtimeSession``
chunk by chunk, the model's side generated in its place, then heard back the way Full-Duplex-Bench
hears a model: its audio decoded (dMel -> Griffin-Lim), its speech activity from our VAD on that audio,
its words from its own text stream (no ASR of the output).

The replay feeds the user exactly what a live user would have sent: each 200 ms chunk of the recorded
user's dMel bins and text tokens (or absent text when the run trained without user text). The model
never sees the recorded partner it replaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microturn.align.vad import binarize, energy_probability
from microturn.clock import FRAMES_PER_CHUNK, GRID
from microturn.evaluate.timeline import Side, TimedWord
from microturn.report import UserError

DEFAULT_ENERGY_THRESHOLD_DB = -35.0  # align's defaults: energy_threshold_db, min_speech_ms, min_silence_ms
MIN_SPEECH_MS, MIN_SILENCE_MS = 120, 150


@dataclass(frozen=True)
class UserTrack:
    """The recorded side that is replayed: dMel bins uint8 [M, F] and text tokens int32 [F] on the
    frame grid."""

    dmel_MF: np.ndarray
    text_F: np.ndarray

    @property
    def chunks(self) -> int:
        return -(-int(self.dmel_MF.shape[1]) // FRAMES_PER_CHUNK)


@dataclass(frozen=True)
class ModelTrack:
    """What the model produced in the replay: dMel bins uint8 [M, F], text tokens int64 [F], and the
    wall time of each micro-turn in milliseconds."""

    dmel_MF: np.ndarray
    text_F: np.ndarray
    step_ms: tuple[float, ...]


def replay(session: Any, user: UserTrack, *, text_pad: int, text_absent: Optional[int] = None) -> ModelTrack:
    """Run ``session`` (a ``microturn.train.realtime.RealtimeSession``) over every chunk of ``user``.

    A last partial chunk is completed with silence (dMel bin 0) and ``text_pad``. ``text_absent``: the
    token the model reads as "no user text" (its text vocabulary size), for a run trained without the
    user's text; None feeds the recorded text."""
    from microturn.train.realtime import UserChunk

    J, F = FRAMES_PER_CHUNK, int(user.dmel_MF.shape[1])
    tail = user.chunks * J - F
    dmel_MF = np.pad(user.dmel_MF, ((0, 0), (0, tail)))
    text_F = np.pad(user.text_F, (0, tail), constant_values=text_pad)
    if text_absent is not None:
        text_F = np.full_like(text_F, text_absent)
    audio, text = [], []
    for c in range(user.chunks):
        reply = session.turn(UserChunk(audio_XJ=dmel_MF[:, c * J : (c + 1) * J], text_J=text_F[c * J : (c + 1) * J]))
        audio.append(reply.audio_XJ)
        text.append(reply.text_J)
    return ModelTrack(np.concatenate(audio, axis=1)[:, :F].astype(np.uint8),
                      np.concatenate(text)[:F].astype(np.int64), tuple(session.step_ms))  # fmt: skip


def step_summary(step_ms: tuple[float, ...] | list[float]) -> dict[str, float]:
    """p50, p99 and max of the micro-turn wall times (ms); zeros when there were none."""
    if not step_ms:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    a = np.asarray(step_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}  # fmt: skip


def trained_sessions(run_dir: str | Path) -> set[str]:
    """The session ids the run trained on (RUN_DIR/split.json); a run without the record is refused:
    nothing could tell its held-out sessions from the ones it learned."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no split.json (trained before runs recorded their split): cannot tell "
                        "which sessions it did not train on")  # fmt: skip
    split = json.loads(path.read_text(encoding="utf-8"))
    return {str(s) for s in split.get("train_sessions", [])}


@dataclass(frozen=True)
class Replayer:
    """A trained dMel run ready to stand in for a recorded speaker: its model and config, the sessions it
    trained on (refused), and the corpus' dMel and text tokenizers to hear it back with."""

    model: Any
    cfg: Any  # TrainConfig
    trained_on: frozenset[str]
    dmel: Any
    tok: Any
    temperature: float = 1.0
    seed: int = 0

    def answer(self, user: UserTrack, user_wave: np.ndarray) -> tuple[ModelTrack, Side, np.ndarray]:
        """A fresh conversation: the model's track replayed against ``user``, its side as heard (next to
        ``user_wave``, the user's decoded audio) and its decoded wave."""
        from microturn.train.realtime import RealtimeSession

        session = RealtimeSession(self.model, temperature=self.temperature, seed=self.seed,
                                  max_context_chunks=self.cfg.data.window_chunks)  # fmt: skip
        track = replay(session, user, text_pad=self.tok.pad_id,
                       text_absent=None if self.cfg.data.user_text else self.cfg.model.text_vocab)  # fmt: skip
        side, wave = model_side(track, self.dmel, self.tok, user_wave)
        return track, side, wave


def open_replayer(run_dir: str | Path, dataset_uri: Optional[str], *, temperature: float = 1.0, seed: int = 0,
                  threads: int = 1) -> Replayer:  # fmt: skip
    """Load a run for replay (``eval --run``, ``converse``): a dMel run with its split record, and the
    tokenizers of the corpus at ``dataset_uri``."""
    import torch

    from microturn.report.render import load_codecs
    from microturn.train.realtime import load_run

    torch.set_num_threads(threads)  # one micro-turn is many small matmuls: more threads only contend
    model, cfg = load_run(run_dir)
    if cfg.model.audio != "dmel":
        raise UserError(f"{run_dir} is a model.audio: {cfg.model.audio} run: replay hears the model through its "
                        "decoded dMel, so it needs a model.audio: dmel run")  # fmt: skip
    trained_on = frozenset(trained_sessions(run_dir))
    toks = load_codecs(dataset_uri)
    return Replayer(model, cfg, trained_on, toks.get_or_build("dmel"), toks.get_or_build("text").tokenizer,
                    temperature, seed)  # fmt: skip


# ---------------------------------------------------------------- hearing the model back


def words_from_text(text_F: np.ndarray, tok: Any) -> tuple[TimedWord, ...]:
    """The words a text stream spells (the inverse of ``tokenizers.text.layout_text``): each maximal run
    of real tokens is one word, starting at its first token's frame and ending after its last. Special
    tokens (PAD, EPAD, BOS, EOS) separate words; a run that decodes to nothing but spaces is dropped."""
    special = {tok.pad_id, tok.epad_id, tok.bos_id, tok.eos_id}
    real = np.array([int(t) not in special and 0 <= int(t) < tok.vocab_size for t in text_F], dtype=bool)
    words = []
    for start, end in _true_runs(real):
        text = tok.decode(int(t) for t in text_F[start:end]).strip()
        if text:
            words.append(TimedWord(text, _seconds(start), _seconds(end)))
    return tuple(words)


def activity_from_wave(wave_24k: np.ndarray, num_frames: int, *, threshold_db: float = DEFAULT_ENERGY_THRESHOLD_DB,
                       min_speech_ms: int = MIN_SPEECH_MS, min_silence_ms: int = MIN_SILENCE_MS) -> np.ndarray:  # fmt: skip
    """bool [num_frames]: our energy VAD (align.vad, the same hysteresis and run cleaning as the build)
    on decoded model audio. Griffin-Lim decodes dMel's silence bin to digital zero, so the detector's
    absolute floor (-70 dBFS) keeps silence silent even when the model hardly speaks."""
    prob = energy_probability(np.asarray(wave_24k, dtype=np.float32), num_frames, threshold_db)
    return binarize(prob, min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms) != 0


def model_side(track: ModelTrack, dmel: Any, tok: Any, user_wave: np.ndarray, speaker: str = "model"
               ) -> tuple[Side, np.ndarray]:  # fmt: skip
    """(the model's side, its decoded wave float32 [F * hop]). Activity as the build finds it on
    one-speaker-per-microphone sessions: our energy VAD on each channel, then cross-talk attribution
    (``align.crosstalk.attribute_activity``) between the user's audio and the model's, since a model
    trained on such channels also reproduces the partner's bleed in its own. Applied to the two
    speakers' decoded dMel of a held-out synthetic session, this recipe agreed with the corpus'
    activity on 99.4% and 99.6% of their frames. Words come from the model's text stream."""
    from microturn.align.crosstalk import attribute_activity

    wave = dmel.decode(np.ascontiguousarray(track.dmel_MF[None]))[0]
    frames = int(track.dmel_MF.shape[1])
    vad = np.stack([activity_from_wave(user_wave, frames), activity_from_wave(wave, frames)]).astype(np.uint8)
    own = attribute_activity(vad, [np.asarray(user_wave, dtype=np.float32), wave], MIN_SPEECH_MS, MIN_SILENCE_MS)
    return Side(own[1] != 0, words_from_text(track.text_F, tok), speaker), wave


def _true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def _seconds(frame: int) -> float:
    return float(GRID.frames_to_seconds(int(frame)))
