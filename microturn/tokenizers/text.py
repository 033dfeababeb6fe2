"""Text tokenizers and the per-speaker text stream on the codec frame grid.

Two tokenizers share one small interface (``encode``/``decode``, ``vocab_size`` and four special
ids): a byte-level one (UTF-8 bytes 0..255, then PAD, EPAD, BOS, EOS) that needs no files, and a
Hugging Face ``tokenizer.json`` read through the ``tokenizers`` library (imported only when used).
The special ids of the Hugging Face tokenizer are appended after its vocabulary, so they can never
collide with a real token.

``text_stream`` lays a speaker's words on the frame grid, Moshi style ("inner monologue"): a word's
tokens start at the frame of its start time, PAD fills frames without text, and EPAD sits in the
frame just before a word's first token (it tells a model "a word starts next"). Words that collide
on the grid (a word's tokens run past the start of the next word, or two words start in the same
frame) follow one rule, see ``layout_text``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Sequence

import numpy as np

from microturn.clock import GRID
from microturn.format import MEMBERS
from microturn.records import StageError, TokenizeInput, Word

NUM_BYTES = 256


class TextTokenizer(Protocol):
    name: str
    vocab_size: int
    pad_id: int
    epad_id: int
    bos_id: int
    eos_id: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; PAD=256, EPAD=257, BOS=258, EOS=259 (vocab 260)."""

    name = "bytes"

    def __init__(self) -> None:
        self.pad_id = NUM_BYTES
        self.epad_id = NUM_BYTES + 1
        self.bos_id = NUM_BYTES + 2
        self.eos_id = NUM_BYTES + 3
        self.vocab_size = NUM_BYTES + 4
        self.fingerprint = f"bytes/utf8/V{self.vocab_size}"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # Special ids carry no text; a word cut on the grid may end inside a UTF-8 sequence.
        data = bytes(int(i) for i in ids if 0 <= int(i) < NUM_BYTES)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A local Hugging Face ``tokenizer.json``; PAD, EPAD, BOS, EOS appended after its vocabulary."""

    name = "hf"

    def __init__(self, tokenizer_json: Path) -> None:
        path = Path(tokenizer_json)
        if not path.is_file():
            raise StageError("tokenize", "text_tokenizer_missing", f"tokenizer.json not found: {path}")
        try:
            from tokenizers import Tokenizer  # Hugging Face's library, not this package
        except ImportError as exc:  # pragma: no cover - the environment ships it with whisperx
            raise StageError("tokenize", "text_tokenizer_unavailable", f"cannot import tokenizers: {exc}") from None
        blob = path.read_bytes()
        try:
            self._tok: Any = Tokenizer.from_str(blob.decode("utf-8"))
        except Exception as exc:  # the library raises a bare Exception on a bad file
            raise StageError("tokenize", "text_tokenizer_invalid", f"{path}: {exc}") from None
        base = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.pad_id, self.epad_id, self.bos_id, self.eos_id = base, base + 1, base + 2, base + 3
        self.vocab_size = base + 4
        digest = hashlib.sha256(blob).hexdigest()[:16]
        self.space_prefix = _byte_level_without_prefix_space(blob)
        # the prefix changes every token of a word: it is part of what the fingerprint names
        self.fingerprint = f"hf/V{self.vocab_size}/sha256:{digest}" + ("/space" if self.space_prefix else "")

    def encode(self, text: str) -> list[int]:
        """Tokens of one word (or a text). Byte-level BPE vocabularies (GPT-2, Whisper) learned words
        with their leading space (``" hello"`` is one Whisper token, ``"hello"`` two): such a
        tokenizer gets the space, so words are tokenized as the model that owns the vocabulary
        sees them mid-sentence, and decoding a stream gives spaced text."""
        if self.space_prefix and text and not text[0].isspace():
            text = " " + text
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        base = self.pad_id
        return str(self._tok.decode([int(i) for i in ids if 0 <= int(i) < base]))


def _byte_level_without_prefix_space(blob: bytes) -> bool:
    """Whether a tokenizer.json pre-tokenizes with ByteLevel and does not add the prefix space itself."""
    import json

    try:
        pre = json.loads(blob).get("pre_tokenizer") or {}
    except (ValueError, AttributeError, RecursionError):
        return False
    parts = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    if not isinstance(parts, list):
        return False
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space", True) for p in parts)


def load_text_tokenizer(kind: str = "bytes", tokenizer_json: Optional[Path] = None) -> TextTokenizer:
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "hf":
        if tokenizer_json is None:
            raise StageError("tokenize", "text_tokenizer_missing", "text.kind=hf needs text.tokenizer_json")
        return HFTokenizer(tokenizer_json)
    raise StageError("tokenize", "text_tokenizer_unknown", f"unknown text tokenizer kind {kind!r}")


@dataclass(frozen=True)
class TextLayout:
    """One speaker's text stream and what the collision rule had to do to build it."""

    tokens: np.ndarray  # int32 [num_frames]
    words: int  # words of this stream laid out
    shifted: int  # words whose first token moved right of their start frame
    truncated: int  # words that lost tokens (cut at the next word or at the end of the grid)
    dropped: int  # words with no token on the grid (they start at or after num_frames)


def layout_text(words: Sequence[Word], stream: int, num_frames: int, tok: TextTokenizer) -> TextLayout:
    """Lay out the words of ``stream`` on a grid of ``num_frames`` codec frames.

    The rule, word by word in time order (ties keep input order):
    - a word wants its first token at ``s`` = the frame of its start sample (floor) and its EPAD at
      ``s - 1``; a word at frame 0 has no EPAD;
    - if the previous word still occupies those frames, the EPAD goes to the first free frame and the
      tokens right after it (``shifted``): a word always keeps at least its first token, so no word
      disappears from inside the grid;
    - a word's tokens stop where the next word's EPAD wants to be (its start frame - 1) or at the end
      of the grid; the rest are cut (``truncated``). Cutting, not shifting, keeps later words on time:
      words are usually much longer in frames (75/s) than in tokens, so this only bites for very
      dense speech or long tokenizations;
    - a word starting at or after ``num_frames`` is ``dropped`` (counted).
    Empty words (no tokens) are skipped.
    """
    out = np.full(num_frames, tok.pad_id, dtype=np.int32)
    mine = [w for w in words if w.stream == stream]
    mine.sort(key=lambda w: w.start_sample)  # stable: equal starts keep input order
    starts = [GRID.sample_to_frame(max(0, w.start_sample), "floor") for w in mine]
    free = 0  # first frame not yet written
    shifted = truncated = dropped = laid = 0
    for i, word in enumerate(mine):
        ids = tok.encode(word.text)
        if not ids:
            continue
        start = starts[i]
        if start >= num_frames or free >= num_frames:
            dropped += 1
            continue
        first = start
        if start > 0 or free > 0:
            epad = max(start - 1, free)
            if epad + 1 >= num_frames:  # no room for EPAD and a token
                dropped += 1
                continue
            out[epad] = tok.epad_id
            first = epad + 1
        if first != start:
            shifted += 1
        limit = num_frames
        if i + 1 < len(mine):
            limit = min(limit, starts[i + 1] - 1)
        end = max(first + 1, min(first + len(ids), limit))  # keep at least the first token
        out[first:end] = ids[: end - first]
        if end - first < len(ids):
            truncated += 1
        free = end
        laid += 1
    return TextLayout(tokens=out, words=laid, shifted=shifted, truncated=truncated, dropped=dropped)


def text_stream(words: Sequence[Word], stream: int, num_frames: int, tok: TextTokenizer) -> np.ndarray:
    """int32 [num_frames]: the text stream of one speaker (see ``layout_text`` for the rule)."""
    return layout_text(words, stream, num_frames, tok).tokens


class TextRepresentation:
    """The ``text`` representation: ``text.npy`` int32 [S, F], each speaker's words laid out on the codec
    frame grid by ``layout_text``; what the layout had to do is reported per session."""

    name = "text"
    frame_rate = GRID.frame_rate  # one token slot per codec frame
    # declared by format version 1 (corpora whose dataset.json lists no members hold exactly these)
    members = (MEMBERS["text.npy"],)

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer.fingerprint
        self.vocab_size = tokenizer.vocab_size
        self.pad_id = tokenizer.pad_id
        self.fill = {"text.npy": tokenizer.pad_id}

    def tokenize(self, batch: Sequence[TokenizeInput]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        return [self._session_text(inp) for inp in batch]

    def _session_text(self, inp: TokenizeInput) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        num_frames = GRID.padded_samples(inp.num_samples) // GRID.hop
        layouts = [layout_text(inp.words, s, num_frames, self.tokenizer) for s in range(inp.waves_24k.shape[0])]
        tokens = np.stack([lay.tokens for lay in layouts]).astype(np.int32)
        report = {key: sum(getattr(lay, key) for lay in layouts) for key in ("words", "shifted", "truncated", "dropped")}
        return {"text.npy": tokens}, report

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size}

    def window_meta(self) -> dict[str, Any]:
        return {}
