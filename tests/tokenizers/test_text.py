"""Text tokenizers and the Moshi-style text stream on the codec frame grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microturn.clock import HOP
from microturn.records import StageError, Word
from microturn.tokenizers.text import ByteTokenizer, HFTokenizer, layout_text, load_text_tokenizer, text_stream

BYTES = ByteTokenizer()
PAD, EPAD = BYTES.pad_id, BYTES.epad_id


def word(text: str, start_frame: int, stream: int = 0, end_frame: int | None = None) -> Word:
    end = (end_frame if end_frame is not None else start_frame + 20) * HOP
    return Word(text=text, start_sample=start_frame * HOP, end_sample=end, stream=stream)


def test_byte_tokenizer_round_trips_utf8_and_keeps_specials_apart():
    text = "héllo, wörld ✓"
    ids = BYTES.encode(text)
    assert BYTES.decode(ids) == text
    assert max(ids) < 256
    specials = {BYTES.pad_id, BYTES.epad_id, BYTES.bos_id, BYTES.eos_id}
    assert len(specials) == 4 and min(specials) >= 256 and BYTES.vocab_size == 260
    assert BYTES.decode(ids + [PAD, EPAD]) == text
    assert BYTES.fingerprint == "bytes/utf8/V260"


def test_a_word_starts_at_its_frame_with_epad_just_before():
    stream = text_stream([word("hi", 0), word("you", 30)], stream=0, num_frames=45, tok=BYTES)
    assert stream.dtype == np.int32 and stream.shape == (45,)
    assert list(stream[:3]) == [ord("h"), ord("i"), PAD]
    assert stream[29] == EPAD and list(stream[30:33]) == [ord("y"), ord("o"), ord("u")]
    assert (stream[33:] == PAD).all() and (stream[2:29] == PAD).all()


def test_words_of_other_streams_are_ignored():
    words = [word("a", 5, stream=0), word("b", 10, stream=1)]
    s0 = text_stream(words, 0, 30, BYTES)
    s1 = text_stream(words, 1, 30, BYTES)
    assert s0[5] == ord("a") and s0[10] == PAD
    assert s1[10] == ord("b") and s1[5] == PAD


def test_colliding_words_are_shifted_then_truncated_and_counted():
    # "abcdef" at frame 10 wants frames 10..15; "xy" starts at 13 -> "abc" fits (EPAD at 12)
    lay = layout_text([word("abcdef", 10), word("xy", 13), word("z", 13)], 0, 30, BYTES)
    s = lay.tokens
    assert list(s[9:13]) == [EPAD, ord("a"), ord("b"), EPAD]
    assert s[13] == ord("x")  # cut at the third word's EPAD, which has to shift: "z" starts at 13 too
    assert s[14] == EPAD and s[15] == ord("z")
    assert lay.truncated == 2 and lay.shifted == 1 and lay.dropped == 0 and lay.words == 3


def test_words_past_the_grid_are_dropped_and_the_grid_end_truncates():
    lay = layout_text([word("hello", 27), word("late", 40)], 0, 30, BYTES)
    assert list(lay.tokens[26:30]) == [EPAD, ord("h"), ord("e"), ord("l")]
    assert lay.truncated == 1 and lay.dropped == 1


def test_hf_tokenizer_json_loads_lazily_and_appends_specials(tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    hf = load_text_tokenizer("hf", path)
    assert isinstance(hf, HFTokenizer)
    assert hf.encode("hello world") == [1, 2]
    assert (hf.pad_id, hf.epad_id, hf.bos_id, hf.eos_id, hf.vocab_size) == (3, 4, 5, 6, 7)
    assert hf.fingerprint.startswith("hf/V7/sha256:")
    assert text_stream([word("hello", 2)], 0, 6, hf).tolist() == [3, 4, 1, 3, 3, 3]


def test_bad_text_tokenizer_settings_are_typed_errors(tmp_path: Path):
    with pytest.raises(StageError) as err:
        load_text_tokenizer("hf", None)
    assert err.value.reason == "text_tokenizer_missing"
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(StageError) as err:
        load_text_tokenizer("hf", bad)
    assert err.value.reason == "text_tokenizer_invalid"


def test_importing_microturn_tokenizers_does_not_import_torch():
    code = "import sys, microturn.tokenizers, microturn.pipeline.tokenize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
