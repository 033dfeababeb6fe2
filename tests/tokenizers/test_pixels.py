"""Pixel frames: the picked video frames stored as decoded, one per chunk, windowed with their chunks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydantic import ValidationError

from microturn.clock import GRID
from microturn.config import (BuildConfig, ChunkConfig, ConfigError, DecodeConfig, PixelsConfig, TokenizerConfig,
                               load_config)
from microturn.errors import StageError
from microturn.format import decode_sample, member_table
from microturn.pipeline.chunk import make_samples
from microturn.pipeline.tokenize import tokenize_input, tokenize_session
from microturn.records import AudioStream, DecodedMedia, SessionHeader, StreamSource, Timeline, VideoFrames, Word
from microturn.tokenizers import REPRESENTATIONS, TokenizerSet
from microturn.tokenizers.pixels import PixelsRepresentation
from microturn.tokenizers.representation import check_tiles
from microturn.tokenizers.text import ByteTokenizer, TextRepresentation

SIZE, PATCH = 80, 40
FRAME_CHUNKS = (0, 1, 2, 4, 5, 6, 8, 12)  # chunk 3 and 7 have no frame; 12 lies past the audio (dropped)


@pytest.fixture(scope="module")
def rep() -> PixelsRepresentation:
    return PixelsRepresentation(PixelsConfig())


def marked_frames(chunks: tuple[int, ...], size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3]: frame i is its chunk's number in red over a seeded texture, so a frame
    found in a window says which chunk it came from."""
    rgb = np.random.default_rng(0).integers(0, 256, (len(chunks), size, size, 3), dtype=np.uint8)
    rgb[..., 0] = np.asarray(chunks, dtype=np.uint8)[:, None, None]
    return rgb


def session(frames: np.ndarray, chunks: tuple[int, ...], num_chunks: int = 9):
    num_samples = num_chunks * GRID.chunk_samples - 700  # the last chunk partly padding
    streams = tuple(AudioStream(f"spk{i}", f"file:///s{i}.wav", 0, np.zeros(num_samples, np.float32),
                                np.zeros(1, np.float32)) for i in range(2))
    video = VideoFrames("file:///v.mp4", frames, np.asarray(chunks, dtype=np.int32)) if len(chunks) else None
    media = DecodedMedia("sess", num_samples, streams, video)
    activity = np.zeros((2, GRID.valid_frames(num_samples)), np.uint8)
    return media, Timeline(activity, (Word("hi", 0, 4800, 0),))


def header() -> SessionHeader:
    return SessionHeader("sess", "en", tuple(StreamSource(f"file:///s{i}.wav", 0, f"spk{i}", 0) for i in range(2)),
                         StreamSource("file:///v.mp4", -1, "", 0), None)


def test_member_fingerprint_and_description(rep):
    (spec,) = rep.members
    assert (spec.suffix, spec.dtype, spec.dims, spec.order, spec.tokenizer) == ("pixels.npy", "uint8",
                                                                               ("N", "Y", "X", "C"), 55, "pixels")
    assert rep.fingerprint == "pixels/80x80/rgb8/p40" and rep.vocab_size == 256 and rep.fill == {}
    assert rep.describe() == {"fingerprint": rep.fingerprint, "vocab_size": 256, "patch": 40,
                              "dims": {"Y": 80, "X": 80, "C": 3}}
    assert check_tiles(rep) == 1 and rep.window_meta() == {}
    built = REPRESENTATIONS["pixels"](TokenizerConfig(pixels=PixelsConfig(size=120, patch=40)))
    assert isinstance(built, PixelsRepresentation) and built.fingerprint == "pixels/120x120/rgb8/p40"


def test_tokenize_stage_keeps_the_frames_as_decoded(rep):
    toks = TokenizerSet({"pixels": rep, "text": TextRepresentation(ByteTokenizer())})
    frames = marked_frames(FRAME_CHUNKS)
    out = tokenize_session(tokenize_input(*session(frames, FRAME_CHUNKS)), toks)
    assert np.array_equal(out.arrays["pixels.npy"], frames[:-1])  # the frame of chunk 12 is past the audio
    assert out.arrays["frame_chunks.npy"].tolist() == list(FRAME_CHUNKS[:-1])
    assert out.fingerprints["pixels"] == "pixels/80x80/rgb8/p40" and "pixels.npy" not in out.fill
    assert np.array_equal(rep.decode(out.arrays["pixels.npy"]), frames[:-1])
    table = member_table(toks.member_specs())
    assert list(table) == ["meta.json", "activity.npy", "text.npy", "words.json", "pixels.npy", "frame_chunks.npy",
                           "events.json"]


def test_a_session_without_video_has_no_pixel_frames(rep):
    (arrays, _), = rep.tokenize([tokenize_input(*session(np.zeros((0, 1, 1, 3), np.uint8), ()))])
    assert arrays["pixels.npy"].shape == (0, 80, 80, 3) and arrays["pixels.npy"].dtype == np.uint8


def test_each_window_keeps_its_frames_with_their_chunks(rep):
    toks = TokenizerSet({"pixels": rep, "text": TextRepresentation(ByteTokenizer())})
    frames = marked_frames(FRAME_CHUNKS)
    media, timeline = session(frames, FRAME_CHUNKS)
    tokens = tokenize_session(tokenize_input(media, timeline), toks)
    samples = list(make_samples(header(), timeline, tokens, [], ChunkConfig(window_chunks=3, hop_chunks=3)))
    table = member_table(toks.member_specs())
    known = {k: v for entry in toks.describe().values() for k, v in entry.get("dims", {}).items()}
    assert [s.key for s in samples] == ["sess-000000", "sess-000001", "sess-000002"]
    for window, sample in enumerate(samples):
        decoded = decode_sample(sample.members, sample.key, table=table, known=known)
        # what a plain reader (webdataset's numpy decoder) does with the member: np.load, no pickles
        plain = np.load(io.BytesIO(sample.members["pixels.npy"]), allow_pickle=False)
        local = decoded.arrays["frame_chunks.npy"]
        assert np.array_equal(plain, decoded.arrays["pixels.npy"]) and plain.shape[1:] == (80, 80, 3)
        assert np.array_equal(plain[:, 0, 0, 0], local + 3 * window)  # every frame sits at its own chunk
        assert sample.index_row["num_video_frames"] == len(local)
    assert [len(np.load(io.BytesIO(s.members["pixels.npy"]))) for s in samples] == [3, 2, 2]


def test_patches_cut_as_the_docs_say_reassemble_the_frame():
    x = marked_frames((0, 1, 2))
    n, y, w, c = x.shape
    patches = x.reshape(n, y // PATCH, PATCH, w // PATCH, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    assert patches.shape == (3, 2, 2, 40, 40, 3)
    assert np.array_equal(patches[1, 1, 0], x[1, 40:80, 0:40])  # patch (row 1, column 0) of frame 1
    back = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, y, w, c)
    assert np.array_equal(back, x)


def test_frames_of_another_size_are_a_typed_error(rep):
    inp = tokenize_input(*session(marked_frames((0, 1), size=64), (0, 1)))
    with pytest.raises(StageError) as err:
        rep.tokenize([inp])
    assert err.value.stage == "tokenize" and err.value.reason == "bad_pixel_frames" and "64" in str(err.value)
    with pytest.raises(StageError, match="bad_pixel_frames|uint8"):
        rep.decode(np.zeros((1, 80, 80, 3), np.float32))


def test_a_size_that_is_not_whole_patches_is_refused():
    with pytest.raises(ValidationError, match="not a multiple of pixels.patch"):
        PixelsConfig(size=100, patch=40)
    assert PixelsConfig(size=120, patch=40).size == 120


def test_pixels_need_the_decode_size_to_equal_theirs():
    pixels = TokenizerConfig(representations=("pixels", "text"))
    with pytest.raises(ValidationError, match="set them equal"):
        BuildConfig(tokenizers=pixels)  # decode's default is 64x64
    with pytest.raises(ValidationError, match="set them equal"):
        BuildConfig(tokenizers=pixels, decode=DecodeConfig(frame_width=80, frame_height=64))
    ok = BuildConfig(tokenizers=pixels, decode=DecodeConfig(frame_width=80, frame_height=80))
    assert ok.tokenizers.pixels.size == 80
    assert BuildConfig().decode.frame_width == 64  # without pixels the decode size is free
    with pytest.raises(ConfigError, match="set them equal"):
        load_config(None, ["tokenizers.representations=[pixels, text]"])
