"""The tokenize stage: an aligned session becomes codes, text streams and frame tokens on one grid."""

from __future__ import annotations

import numpy as np
import pytest

from microturn.clock import GRID
from microturn.config import FrameCodecConfig, TokenizerConfig
from microturn.records import AlignedSession, AudioStream, DecodedSession, StageError, VideoFrames, Word
from microturn.tokenizers.calibration import speech_like


@pytest.fixture(scope="module")
def toks(small_windows):
    from microturn.tokenizers import load_tokenizers

    cfg = TokenizerConfig(audio=small_windows, frames=FrameCodecConfig(image_size=32, downsample=4, hidden=16))
    return load_tokenizers(cfg)


def session(num_samples: int, lengths: tuple[int, ...], video: bool = True) -> AlignedSession:
    streams = tuple(
        AudioStream(f"spk{i}", f"file:///s{i}.wav", 0, speech_like(n / 24000, 50 + i), np.zeros(1, np.float32))
        for i, n in enumerate(lengths)
    )
    frames = None
    if video:
        rgb = np.random.default_rng(0).integers(0, 256, (12, 72, 128, 3), dtype=np.uint8)
        frames = VideoFrames("file:///v.mp4", rgb, np.arange(0, 24, 2, dtype=np.int32))  # chunks 0..22
    words = (Word("hello", 2400, 9600, 0), Word("yes", 4800, 8000, 1), Word("there", 12000, 20000, 0))
    decoded = DecodedSession("sess", num_samples, streams, frames)
    return AlignedSession(decoded, np.zeros((len(lengths), 1), np.uint8), words)


def test_a_session_is_tokenized_on_the_padded_chunk_grid(toks):
    num_samples = 2 * 24000 + 1000  # 2.04 s -> 11 chunks, the last mostly padding
    from microturn.pipeline.tokenize import tokenize_session

    out = tokenize_session(
        session(num_samples, (num_samples, 30000)), toks
    )
    chunks = GRID.num_chunks(num_samples)
    assert out.num_frames == chunks * 15 == 165
    assert out.valid_frames == GRID.valid_frames(num_samples) == 154
    assert out.codes.shape == (2, 8, 165) and out.codes.dtype == np.int16
    assert out.text.shape == (2, 165) and out.text.dtype == np.int32
    assert out.text[0, 6] == toks.text.epad_id and out.text[0, 7] == ord("h")  # 2400 samples: frame 7.5 -> 7
    assert out.text[1, 15] == ord("y")
    assert out.frame_tokens.shape == (6, 8, 8)  # frames of chunks >= 11 are past the audio: dropped
    assert out.frame_chunks.tolist() == [0, 2, 4, 6, 8, 10]
    assert out.fingerprints == toks.fingerprints() and set(out.fingerprints) == {"audio", "frames", "text"}
    assert out.aligned.quality["text_layout"]["words"] == 3
    # a stream that ends early is silence afterwards: same codes as encoding it padded by hand
    padded = np.zeros((1, 165 * 320), np.float32)
    padded[0, :30000] = speech_like(30000 / 24000, 51)
    assert np.array_equal(out.codes[1:2], toks.audio.encode(padded))


def test_a_session_without_video_has_no_frame_tokens(toks):
    from microturn.pipeline.tokenize import tokenize_session

    out = tokenize_session(session(4800, (4800,), video=False), toks)
    assert out.codes.shape == (1, 8, 15) and out.frame_tokens.shape == (0, 8, 8) and out.frame_chunks.size == 0


def test_a_session_without_audio_is_a_typed_error(toks):
    from microturn.pipeline.tokenize import tokenize_session

    with pytest.raises(StageError) as err:
        tokenize_session(session(4800, (), video=False), toks)
    assert err.value.stage == "tokenize" and err.value.reason == "no_audio_stream"
