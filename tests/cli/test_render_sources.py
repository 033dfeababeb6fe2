"""`render` decodes what a sample holds: a corpus of codes and frame-codec tokens only (no dMel, no
pixels) is rendered from the codes and the frame codec, and says so."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from tests.factories import random_tokenized_session, write_corpus

TOKENIZERS = {
    "audio": {"fingerprint": "untrained:0", "vocab_size": 1024, "codebooks": 8},
    "frames": {"fingerprint": "untrained:0", "vocab_size": 1000},
    "text": {"fingerprint": "bytes:v1", "vocab_size": 260},
}


@pytest.fixture(scope="module")
def codes_corpus(tmp_path_factory) -> Path:
    tok = random_tokenized_session("s0", 24000 * 4, seed=2)
    return write_corpus(tmp_path_factory.mktemp("codes_only"), tok, TOKENIZERS)


def test_a_sample_without_dmel_or_pixels_is_rendered_from_codes_and_frame_tokens(cli, codes_corpus, tmp_path):
    code, out, err = cli("render", codes_corpus, "s0-000000", "--out", tmp_path, "--threads", "1")
    assert code == 0, err
    assert "audio decoded from codes (audio codec); video frames: frame-codec tokens (decoded)" in out
    with wave.open(str(tmp_path / "s0-000000.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 24000, 4 * 24000)


def test_show_and_inspect_name_only_the_representations_present(cli, codes_corpus):
    code, out, _ = cli("show", codes_corpus, "s0-000000")
    assert code == 0 and "representations: audio (codes.npy)  text (text.npy)  frames (frames.npy)" in out
    assert "dmel" not in out
    code, out, _ = cli("inspect", codes_corpus)
    assert code == 0 and "representations: audio (codes.npy), text (text.npy), frames (frames.npy)" in out
