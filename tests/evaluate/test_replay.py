"""Hearing a model back (microturn/evaluate/replay.py): its words read off its own text stream, its
speech activity from our VAD on its decoded audio, and the replay loop of micro-turns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from microturn.clock import CODEC_RATE, FRAMES_PER_CHUNK, GRID, HOP
from microturn.evaluate.replay import (ModelTrack, UserTrack, activity_from_wave, replay, step_summary,
                                       trained_sessions, words_from_text)
from microturn.records import Word
from microturn.report import UserError
from microturn.tokenizers.text import ByteTokenizer, layout_text


def word(text: str, start_s: float, end_s: float) -> Word:
    return Word(text, int(start_s * CODEC_RATE), int(end_s * CODEC_RATE), 0)


def test_words_read_off_a_text_stream_are_the_words_laid_on_it() -> None:
    tok = ByteTokenizer()
    words = [word("hello", 0.0, 0.4), word("there", 0.5, 0.9), word("mm", 2.0, 2.2), word("okay", 3.1, 3.5)]
    stream = layout_text(words, 0, GRID.seconds_to_frames(4), tok).tokens
    got = words_from_text(stream, tok)
    assert [w.text for w in got] == ["hello", "there", "mm", "okay"]
    # a word starts at its first token's frame: the frame of its start time (nothing collided here)
    assert [round(w.start_s, 3) for w in got] == [round(float(GRID.frames_to_seconds(GRID.sample_to_frame(w.start_sample))), 3)
                                                  for w in words]  # fmt: skip
    assert all(w.end_s > w.start_s for w in got)


def test_a_stream_of_padding_says_nothing_and_spaces_are_not_words() -> None:
    tok = ByteTokenizer()
    assert words_from_text(np.full(100, tok.pad_id), tok) == ()
    spaces = np.full(10, tok.pad_id)
    spaces[3:5] = ord(" ")
    assert words_from_text(spaces, tok) == ()


def bursts(on_s: list[tuple[float, float]], seconds: float) -> np.ndarray:
    """A 200 Hz tone switched on in the given spans, digital silence elsewhere (Griffin-Lim's silence)."""
    t = np.arange(int(seconds * CODEC_RATE)) / CODEC_RATE
    wave = np.zeros_like(t, dtype=np.float32)
    for a, b in on_s:
        sel = (t >= a) & (t < b)
        wave[sel] = 0.3 * np.sin(2 * np.pi * 200 * t[sel])
    return wave


def test_model_activity_follows_its_audio_and_silence_stays_silent() -> None:
    frames = GRID.seconds_to_frames(6)
    assert not activity_from_wave(np.zeros(frames * HOP, np.float32), frames).any()
    act = activity_from_wave(bursts([(1.0, 2.0), (3.5, 5.0)], 6.0), frames)
    on = lambda s: bool(act[GRID.seconds_to_frames(s)])  # noqa: E731
    assert on(1.5) and on(4.2) and not on(0.5) and not on(2.7) and not on(5.6)


def test_micro_turn_times_summarise_as_percentiles() -> None:
    assert step_summary([]) == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    s = step_summary([10.0] * 99 + [500.0])
    assert s["p50"] == 10.0 and s["max"] == 500.0 and 10.0 < s["p99"] <= 500.0


def test_a_run_without_its_split_record_cannot_be_evaluated(tmp_path) -> None:
    with pytest.raises(UserError, match="split.json"):
        trained_sessions(tmp_path)
    (tmp_path / "split.json").write_text(json.dumps({"train_sessions": ["a", "b"]}))
    assert trained_sessions(tmp_path) == {"a", "b"}


class EchoSession:
    """Stands in for the model in the replay loop's bookkeeping test only: answers each chunk with the
    user's own bins (the real model is exercised in tests/evaluate/test_model_eval.py)."""

    def __init__(self) -> None:
        self.step_ms: list[float] = []
        self.seen: list[np.ndarray] = []

    def turn(self, user):
        from microturn.train.realtime import ModelChunk

        self.seen.append(np.array(user.text_J))
        self.step_ms.append(1.0)
        return ModelChunk(audio_XJ=np.array(user.audio_XJ), text_J=np.array(user.text_J, dtype=np.int64))


def test_the_replay_feeds_every_chunk_pads_the_last_and_trims_the_answer() -> None:
    frames = 2 * FRAMES_PER_CHUNK + 4  # a partial last chunk
    rng = np.random.default_rng(0)
    user = UserTrack(rng.integers(0, 16, (80, frames), dtype=np.uint8), rng.integers(0, 256, frames).astype(np.int32))
    session = EchoSession()
    track = replay(session, user, text_pad=256)
    assert isinstance(track, ModelTrack) and len(track.step_ms) == 3 == len(session.seen)
    assert track.dmel_MF.shape == (80, frames) and track.text_F.shape == (frames,)
    np.testing.assert_array_equal(track.dmel_MF, user.dmel_MF)
    assert (session.seen[-1][4:] == 256).all()  # the tail past the recording is PAD
    absent = EchoSession()
    replay(absent, user, text_pad=256, text_absent=260)
    assert all((t == 260).all() for t in absent.seen)  # a run trained without user text reads none


def speechy(spans: list[tuple[float, float]], seconds: float, f0: float, seed: int) -> np.ndarray:
    """Harmonic bursts with a syllable-rate loudness contour: enough like a voice for the VAD and dMel."""
    t = np.arange(int(seconds * CODEC_RATE)) / CODEC_RATE
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    gate = np.zeros_like(t)
    for a, b in spans:
        gate[(t >= a) & (t < b)] = 1.0
    noise = np.random.default_rng(seed).normal(0, 1e-4, t.shape)
    return (0.1 * voice * gate + noise).astype(np.float32)


def test_the_partners_bleed_in_the_models_channel_is_not_the_model_speaking() -> None:
    """A model trained on one-microphone-per-speaker audio reproduces the partner's bleed: the user's
    voice 20 dB down in its own channel. Attribution across the two channels, as the build does, keeps
    only the model's own speech."""
    from microturn.config import DMelConfig
    from microturn.evaluate.replay import model_side
    from microturn.tokenizers.dmel import DMelTokenizer

    seconds = 8.0
    user = speechy([(0.5, 3.0), (5.0, 7.5)], seconds, 140.0, 0)
    own = speechy([(3.3, 4.7)], seconds, 210.0, 1)
    bleed = np.concatenate([np.zeros(240, np.float32), 0.1 * user[:-240]])  # 10 ms later, 20 dB down
    dmel, tok = DMelTokenizer(DMelConfig()), ByteTokenizer()
    frames = GRID.seconds_to_frames(seconds)
    track = ModelTrack(dmel.encode((own + bleed)[None])[0], np.full(frames, tok.pad_id), ())
    user_wave = dmel.decode(dmel.encode(user[None]))[0]
    side, _ = model_side(track, dmel, tok, user_wave)
    at = lambda s: bool(side.activity[GRID.seconds_to_frames(s)])  # noqa: E731
    assert at(4.0)  # its own turn
    assert not at(1.5) and not at(6.0)  # only the user's voice, heard through the room
