"""The tokenize stage: waves, frames and words become every configured representation's members on one grid."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from microturn.clock import GRID
from microturn.config import FrameCodecConfig, TokenizerConfig
from microturn.format import member_table
from microturn.pipeline.tokenize import tokenize_input, tokenize_session
from microturn.records import AudioStream, DecodedMedia, StageError, Timeline, VideoFrames, Word
from microturn.tokenizers import REPRESENTATIONS, TokenizerSet, load_tokenizers
from microturn.tokenizers.calibration import speech_like
from microturn.tokenizers.representation import check_tiles


@pytest.fixture(scope="module")
def toks(small_windows):
    cfg = TokenizerConfig(audio=small_windows, frames=FrameCodecConfig(image_size=32, downsample=4, hidden=16))
    return load_tokenizers(cfg)


def session(num_samples: int, lengths: tuple[int, ...], video: bool = True):
    streams = tuple(
        AudioStream(f"spk{i}", f"file:///s{i}.wav", 0, speech_like(n / 24000, 50 + i), np.zeros(1, np.float32))
        for i, n in enumerate(lengths)
    )
    frames = None
    if video:
        rgb = np.random.default_rng(0).integers(0, 256, (12, 72, 128, 3), dtype=np.uint8)
        frames = VideoFrames("file:///v.mp4", rgb, np.arange(0, 24, 2, dtype=np.int32))  # chunks 0..22
    words = (Word("hello", 2400, 9600, 0), Word("yes", 4800, 8000, 1), Word("there", 12000, 20000, 0))
    media = DecodedMedia("sess", num_samples, streams, frames)
    return media, Timeline(np.zeros((len(lengths), 1), np.uint8), words)


def test_a_session_is_tokenized_on_the_padded_chunk_grid(toks):
    num_samples = 2 * 24000 + 1000  # 2.04 s -> 11 chunks, the last mostly padding
    out = tokenize_session(tokenize_input(*session(num_samples, (num_samples, 30000))), toks)
    codes, text = out.arrays["codes.npy"], out.arrays["text.npy"]
    chunks = GRID.num_chunks(num_samples)
    assert out.num_frames == chunks * 15 == 165
    assert out.valid_frames == GRID.valid_frames(num_samples) == 154
    assert codes.shape == (2, 8, 165) and codes.dtype == np.int16
    assert text.shape == (2, 165) and text.dtype == np.int32
    assert text[0, 6] == toks.text.tokenizer.epad_id and text[0, 7] == ord("h")  # 2400 samples: frame 7.5 -> 7
    assert text[1, 15] == ord("y")
    assert out.arrays["frames.npy"].shape == (6, 8, 8)  # frames of chunks >= 11 are past the audio: dropped
    assert out.arrays["frame_chunks.npy"].tolist() == [0, 2, 4, 6, 8, 10]
    assert out.fingerprints == toks.fingerprints() and set(out.fingerprints) == {"audio", "frames", "text"}
    assert out.reports["text"]["words"] == 3 and out.window_meta == {"codebooks": 8}
    assert out.fill == {"codes.npy": 0, "text.npy": toks.text.pad_id}
    # a stream that ends early is silence afterwards: same codes as encoding it padded by hand
    padded = np.zeros((1, 165 * 320), np.float32)
    padded[0, :30000] = speech_like(30000 / 24000, 51)
    assert np.array_equal(codes[1:2], toks.audio.encode(padded))


def test_a_session_without_video_has_no_frame_tokens(toks):
    out = tokenize_session(tokenize_input(*session(4800, (4800,), video=False)), toks)
    assert out.arrays["codes.npy"].shape == (1, 8, 15)
    assert out.arrays["frames.npy"].shape == (0, 8, 8) and out.arrays["frame_chunks.npy"].size == 0


def test_a_session_without_audio_is_a_typed_error():
    with pytest.raises(StageError) as err:
        tokenize_input(*session(4800, (), video=False))
    assert err.value.stage == "tokenize" and err.value.reason == "no_audio_stream"


def test_only_the_configured_representations_run_and_write_members(toks):
    text_only = TokenizerSet({"text": toks.text})
    out = tokenize_session(tokenize_input(*session(4800, (4800, 4800))), text_only)
    assert set(out.arrays) == {"text.npy", "frame_chunks.npy"} and set(out.fingerprints) == {"text"}
    table = member_table(out.members)
    assert list(table) == ["meta.json", "activity.npy", "text.npy", "words.json", "frame_chunks.npy", "events.json"]


def test_the_member_table_follows_the_representations_in_tar_order(toks):
    table = member_table(toks.member_specs())
    assert list(table) == ["meta.json", "codes.npy", "activity.npy", "text.npy", "words.json", "frames.npy",
                           "frame_chunks.npy", "events.json"]
    assert table["codes.npy"].tokenizer == "audio" and table["frames.npy"].dims == ("N", "H", "W")


def test_every_registered_representation_tiles_the_200ms_chunk(toks):
    assert set(REPRESENTATIONS) == {"audio", "frames", "text", "dmel", "pixels"}
    assert {rep.name: check_tiles(rep) for rep in toks} == {"audio": 15, "frames": 1, "text": 15}


def test_a_rate_that_does_not_tile_a_chunk_is_refused(toks):
    class Mimi:  # 12.5 Hz: 2.5 steps per 200 ms
        name, frame_rate = "mimi", Fraction(25, 2)

    with pytest.raises(ValueError, match="mimi.*2.5|mimi.*5/2"):
        check_tiles(Mimi())
    with pytest.raises(ValueError, match="mimi"):
        TokenizerSet({"mimi": Mimi()})


def test_an_unknown_representation_in_the_config_is_refused():
    with pytest.raises(ValueError, match="unknown representation"):
        TokenizerConfig(representations=("audio", "mimi"))


def test_a_representation_on_its_own_time_axis_is_windowed_by_chunk(toks):
    """dMel at hop 160 (30 steps per chunk, not the codec grid) declares a T axis: each window holds
    its chunks' steps, padded past the end with its fill."""
    from microturn.config import ChunkConfig, DMelConfig
    from microturn.format import decode_sample
    from microturn.pipeline.chunk import make_samples
    from microturn.tokenizers.dmel import DMelTokenizer

    dmel = DMelTokenizer(DMelConfig(hop_samples=160, mel_channels=20))
    assert dmel.members[0].dims == ("S", "M", "T") and check_tiles(dmel) == 30
    media, timeline = session(3 * 24000 + 1000, (3 * 24000 + 1000,), video=False)  # 16 chunks, last mostly padding
    out = tokenize_session(tokenize_input(media, timeline), TokenizerSet({"dmel": dmel, "text": toks.text}))
    whole = out.arrays["dmel.npy"]
    assert whole.shape == (1, 20, 16 * 30)
    samples = list(make_samples(media.header(), timeline, out, [], ChunkConfig(window_chunks=10, hop_chunks=10)))
    first, last = (decode_sample(s.members, table=member_table(out.members)) for s in samples)
    assert np.array_equal(first.arrays["dmel.npy"], whole[:, :, :300])
    assert np.array_equal(last.arrays["dmel.npy"][:, :, :180], whole[:, :, 300:])
    assert not last.arrays["dmel.npy"][:, :, 180:].any()  # padded with bin 0 (silence)
