"""whisperX alignment runs for real, offline, on a tiny random-weight wav2vec2 CTC model built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import burst, write_wav
from microturn.clock import GRID
from microturn.config import AlignConfig, DecodeConfig
from microturn.manifest import SessionSpec
from microturn.pipeline.align import align_session
from microturn.pipeline.decode import decode_session
from microturn.records import StageError

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz'")


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = tmp_path_factory.mktemp("tiny-wav2vec2")
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).eval().save_pretrained(out)
    return out


def _session(tmp: Path, transcript: dict) -> SessionSpec:
    a = write_wav(tmp / "a.wav", burst(16000, 4.0, [(0.5, 1.5), (2.0, 3.2)]), 16000)
    b = write_wav(tmp / "b.wav", burst(16000, 4.0, [(1.4, 2.2)], freq=330), 16000)
    (tmp / "t.json").write_text(json.dumps(transcript))
    return SessionSpec.model_validate(
        {
            "session_id": "wx",
            "audio": [{"uri": str(a), "speaker": "A"}, {"uri": str(b), "speaker": "B"}],
            "transcript": {"uri": str(tmp / "t.json"), "format": "json"},
            "language": "en",
        }
    )


TRANSCRIPT = {
    "words": [
        {"speaker": "A", "word": "hello", "start": 0.5, "end": 0.9},
        {"speaker": "A", "word": "there", "start": 1.0, "end": 1.5},
        {"speaker": "B", "word": "yeah", "start": 1.4, "end": 2.2},
        {"speaker": "A", "word": "so", "start": 2.0, "end": 2.3},
        {"speaker": "A", "word": "anyway", "start": 2.4, "end": 3.2},
    ]
}


def test_whisperx_alignment_offline_on_tiny_model(tmp_path: Path, tiny_wav2vec2: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _session(tmp_path, TRANSCRIPT)
    decoded = decode_session(spec, DecodeConfig())
    cfg = AlignConfig(vad="energy", align_model_dir=tiny_wav2vec2, nltk_data_dir=tmp_path / "nltk", device="cpu")
    _, aligned = align_session(decoded, spec, cfg)
    assert "words:aligned" in aligned.flags
    assert (tmp_path / "nltk" / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").exists()
    by_stream = {k: [w for w in aligned.words if w.stream == k] for k in (0, 1)}
    assert [w.text for w in by_stream[0]] == ["hello", "there", "so", "anyway"]
    assert [w.text for w in by_stream[1]] == ["yeah"]
    for words in by_stream.values():
        for w in words:
            assert 0 <= w.start_sample <= w.end_sample <= decoded.num_samples
            assert w.timing in ("aligned", "interpolated")
        starts = [w.start_sample for w in words]
        assert starts == sorted(starts)
        for prev, nxt in zip(words, words[1:]):
            assert prev.end_sample <= nxt.start_sample + 1  # no word starts before the previous ended
    # words stay inside the utterance the transcript gave them (random weights place them anywhere in it)
    assert all(0.5 * 24000 - 1 <= w.start_sample and w.end_sample <= 1.5 * 24000 + 1 for w in by_stream[0][:2])


def test_alignment_in_passes_gives_the_words_of_one_call(tmp_path: Path, tiny_wav2vec2: Path, monkeypatch) -> None:
    from microturn.align import whisperx_words

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(16000 * 12) * 0.1).astype(np.float32)
    segments = [("hello there", 0.5, 2.0), ("so anyway", 2.5, 4.0), ("yeah right", 6.0, 7.5), ("okay then", 9.0, 11.5)]

    def words(seconds: float) -> list:
        monkeypatch.setattr(whisperx_words, "ALIGN_PASS_S", seconds)
        return whisperx_words.align_segments(wave, segments, tiny_wav2vec2, "en", "cpu", tmp_path / "nltk")

    one = words(600.0)
    assert [w[0] for w in one] == ["hello", "there", "so", "anyway", "yeah", "right", "okay", "then"]
    assert words(3.6) == one and words(0.1) == one  # a run of two segments then one each; each alone


def test_missing_alignment_model_names_the_path(tmp_path: Path) -> None:
    spec = _session(tmp_path, TRANSCRIPT)
    decoded = decode_session(spec, DecodeConfig())
    missing = tmp_path / "no-such-model"
    with pytest.raises(StageError) as err:
        align_session(decoded, spec, AlignConfig(vad="energy", align_model_dir=missing))
    assert err.value.reason == "model_missing" and str(missing) in err.value.message


def test_missing_asr_model_names_the_path(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.5)]), 16000)
    spec = SessionSpec.model_validate({"session_id": "asr", "audio": [{"uri": str(a), "speaker": "A"}]})
    decoded = decode_session(spec, DecodeConfig())
    with pytest.raises(StageError) as err:
        align_session(decoded, spec, AlignConfig(vad="energy", asr_model_dir=tmp_path / "whisper-ct2"))
    assert err.value.reason == "model_missing" and "whisper-ct2" in err.value.message


def test_missing_diarization_pipeline_names_the_path(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "m.wav", burst(16000, 2.0, [(0.5, 1.5)]), 16000)
    spec = SessionSpec.model_validate({"session_id": "mix", "audio": [{"uri": str(a)}]})
    decoded = decode_session(spec, DecodeConfig())
    with pytest.raises(StageError) as err:
        align_session(decoded, spec, AlignConfig(vad="energy", diarization_dir=tmp_path / "pyannote-pipe"))
    assert err.value.reason == "model_missing" and "pyannote-pipe" in err.value.message
    assert np.isfinite(decoded.streams[0].wave_16k).all()


@pytest.mark.slow
def test_asr_words_are_forced_aligned_when_an_alignment_model_is_set(tmp_path, tiny_wav2vec2, whisper_base, monkeypatch):
    """Real ASR (Whisper base) then whisperX alignment (tiny random wav2vec2) of each stream's regions."""
    from tests.media_helpers import shared

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wav = shared("dialogue", "stereo_diarization.wav")
    spec = SessionSpec.model_validate(
        {"session_id": "asr-al", "language": "en",
         "audio": [{"uri": str(wav), "channel": i, "speaker": s} for i, s in enumerate("AB")]}
    )
    decoded = decode_session(spec, DecodeConfig())
    cfg = AlignConfig(asr_model_dir=whisper_base, align_model_dir=tiny_wav2vec2, nltk_data_dir=tmp_path / "nltk",
                      device="cpu", asr_threads=2)
    _, aligned = align_session(decoded, spec, cfg)
    assert "words:asr_aligned" in aligned.flags
    texts = [w.text.lower().strip(".,") for w in aligned.words if w.stream == 1]
    assert texts[-3:] == ["seems", "extremely", "distant"]  # Whisper's words, the aligner's times
    for w in aligned.words:
        assert w.timing in ("aligned", "interpolated")
        assert 0 <= w.start_sample <= w.end_sample <= decoded.num_samples
        # inside the speech sent to ASR: the stream's activity widened by the 200 ms context
        frames = aligned.activity[w.stream]
        on = np.flatnonzero(frames)
        assert GRID.frame_to_sample(int(on[0])) - 0.25 * 24000 <= w.start_sample
        assert w.end_sample <= GRID.frame_to_sample(int(on[-1]) + 1) + 0.25 * 24000
