"""One decoded sample -> training examples, laid out straight into preallocated batch arrays.

* **Built on the format's decoder.** A sample is decoded once by ``microturn.format.decode_sample``
  (members, dtypes as docs/format.md says, never cast; shapes against the grid meta.json gives; arrays
  are views, nothing copied); this module adds only what the model needs on top: enough codebooks,
  token ranges, the video grid the model was built for, the tokenizers it was trained with.
* **A bad sample is a counted outcome.** Anything that is not a sample of docs/format.md raises
  ``SampleError`` (the stream skips and counts it); data from other tokenizers raises
  ``TrainDataError("fingerprint_mismatch")`` (fatal: not damage, a wrong corpus).
* **Roles.** The loader, not the corpus, decides which speaker stream is the model and which the user.
* **Deterministic crops.** A window is cropped at a chunk-aligned offset drawn from
  ``(seed, epoch, key, role)``: same inputs, same examples, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from microturn.clock import FRAMES_PER_CHUNK
from microturn.errors import FormatError, SampleError
from microturn.format import DecodedSample, decode_sample
from microturn.train.corpus import check_fingerprints, name_hash, seeded_rng

# meta.json of one window is a few KiB; a much larger one is not ours, and parsing it costs time and memory
MAX_META_BYTES = 1 << 20


def example_members(video: bool) -> tuple[str, ...]:
    """The members the model reads: EnCodec codes and text, and the frame-codec tokens with video (a
    corpus must hold them; its other members, dMel or pixels, are not read yet)."""
    return ("meta.json", "codes.npy", "text.npy", *(("frames.npy", "frame_chunks.npy") if video else ()))


@dataclass(frozen=True)
class ExampleSpec:
    """Shapes of one training example."""

    window_chunks: int
    codebooks: int
    audio_vocab: int
    text_vocab: int
    frame_vocab: int
    frame_tokens: int  # h * w
    video: bool
    user_text: bool

    @property
    def members(self) -> tuple[str, ...]:
        """The members an example is built from (the rest of a sample is not decoded)."""
        return example_members(self.video)

    @property
    def frames(self) -> int:
        return self.window_chunks * FRAMES_PER_CHUNK


@dataclass(frozen=True)
class _Parsed:
    """What the model reads of one sample, checked (shared by its two role assignments); arrays are views."""

    codes_SKF: np.ndarray
    text_SF: np.ndarray
    frames_NP: Optional[np.ndarray]  # [N, h*w]; None without video (or without frames)
    chunks_N: Optional[np.ndarray]  # window-relative chunk of each frame
    valid_frames: int


def _reason(exc: FormatError) -> str:
    """The reason a format error is counted under (docs/training.md): what meta.json says wrongly (its
    JSON, or the grid it gives: num_frames, valid_frames) is ``bad_meta``; the rest keep the format's code."""
    if exc.code == "bad_grid" or (exc.code == "bad_json" and exc.where.endswith(".meta.json")):
        return "bad_meta"
    return exc.code


def _decode(raw: dict[str, Any], where: str, members: tuple[str, ...]) -> DecodedSample:
    size = len(raw.get("meta.json", b""))
    if size > MAX_META_BYTES:
        raise SampleError("bad_meta", f"meta.json is {size} bytes (at most {MAX_META_BYTES})", source=where)
    try:
        return decode_sample(raw, raw.get("__key__", ""), only=members)
    except FormatError as exc:
        raise SampleError(_reason(exc), exc.message, source=where) from None


def _check_tokens(arr: np.ndarray, vocab: int, name: str, where: str) -> None:
    # stored tokens lie in [0, vocab) (vocab itself is our absent token, never stored); one pass: negatives
    # read as unsigned are huge
    if arr.size and int(arr.view(np.dtype(f"u{arr.dtype.itemsize}")).max()) >= vocab:
        raise SampleError("token_out_of_range", f"{name} tokens span [{arr.min()}, {arr.max()}], vocab is {vocab}",
                          source=where)  # fmt: skip


def _checked(sample: DecodedSample, spec: ExampleSpec, expected_fp: dict[str, Optional[str]], where: str) -> _Parsed:
    """The model's checks on top of the format's (the one place that reads ``DecodedSample``)."""
    check_fingerprints(expected_fp, sample.meta["fingerprints"], where)
    codes_SKF, text_SF = sample.arrays["codes.npy"], sample.arrays["text.npy"]
    S, K, F = codes_SKF.shape
    if S == 0 or F == 0:
        raise SampleError("bad_shape", f"codes {codes_SKF.shape} hold no stream or no frame", source=where)
    if K < spec.codebooks:
        raise SampleError("too_few_codebooks", f"sample has {K} codebooks, model wants {spec.codebooks}", source=where)
    _check_tokens(codes_SKF[:, : spec.codebooks], spec.audio_vocab, "codes", where)
    _check_tokens(text_SF, spec.text_vocab, "text", where)
    frames_NP = chunks_N = None
    frames_NHW = sample.arrays.get("frames.npy")
    # no frames (an audio-only session: [0, h, w]) leaves every chunk with the "no frame" token
    if spec.video and frames_NHW is not None and len(frames_NHW):
        N, h, w = frames_NHW.shape
        if h * w != spec.frame_tokens:
            raise SampleError("bad_shape", f"frames {frames_NHW.shape} hold {h * w} tokens each, model expects "
                                           f"{spec.frame_tokens}", source=where)  # fmt: skip
        frames_NP, chunks_N = frames_NHW.reshape(N, spec.frame_tokens), sample.arrays["frame_chunks.npy"]
        _check_tokens(frames_NP, spec.frame_vocab, "frames", where)
    return _Parsed(codes_SKF, text_SF, frames_NP, chunks_N, int(sample.meta["valid_frames"]))


def _parse(raw: dict[str, Any], spec: ExampleSpec, expected_fp: dict[str, Optional[str]], where: str) -> _Parsed:
    """Decode and check a sample once per read: both role assignments share the result (or the error)."""
    parsed = raw.get("__parsed__")
    if parsed is not None:
        return parsed
    failed = raw.get("__error__")
    if failed is not None:
        raise failed
    try:
        parsed = _checked(_decode(raw, where, spec.members), spec, expected_fp, where)
    except SampleError as exc:
        raw["__error__"] = exc
        raise
    raw["__parsed__"] = parsed
    return parsed


def token_dtype(vocab: int) -> np.dtype:
    """The smallest signed dtype holding tokens ``0..vocab`` (``vocab`` itself is the absent token)."""
    return np.dtype(np.int16) if vocab < np.iinfo(np.int16).max else np.dtype(np.int32)


class BatchBuilder:
    """Lays samples out for a role straight into preallocated batch arrays (no per-example arrays, no
    stack). Shapes (B = batch size, F = window_chunks * 15, C = window_chunks, K = codebooks,
    P = frame_tokens); the absent/pad value of every stream is its vocab size (an extra embedding row):
      model_codes, user_codes [B, K, F]; model_text, user_text [B, F]; frames [B, C, P];
      valid bool [B, F] (real audio; the loss ignores the rest).
    Token arrays are int16 when the vocab (plus the absent token) fits, else int32: codes are then
    copied as they are stored, and half the bytes go to the device, where the model widens them.
    """

    def __init__(self, spec: ExampleSpec, batch_size: int):
        self.spec = spec
        self.size = batch_size
        self.count = 0
        self._arrays = self._allocate()

    def _allocate(self) -> dict[str, np.ndarray]:
        # uninitialised: ``add`` writes every element of its row (data, then the absent token after it)
        sp, B = self.spec, self.size
        K, F, C, P = sp.codebooks, sp.frames, sp.window_chunks, sp.frame_tokens
        audio, text, frames = (token_dtype(v) for v in (sp.audio_vocab, sp.text_vocab, sp.frame_vocab))
        return {
            "model_codes": np.empty((B, K, F), dtype=audio),
            "user_codes": np.empty((B, K, F), dtype=audio),
            "model_text": np.empty((B, F), dtype=text),
            "user_text": np.empty((B, F), dtype=text),
            "frames": np.empty((B, C, P), dtype=frames),
            "valid": np.empty((B, F), dtype=bool),
        }

    def add(
        self, raw: dict[str, Any], role: int, *, seed: int, epoch: int, expected_fp: dict[str, Optional[str]]
    ) -> bool:
        """Lay out ``raw`` with stream ``role`` as the model into the next row; True when the batch is full.

        The crop is a chunk-aligned window inside the real audio at an offset fixed by
        (seed, epoch, key, role); frames past the real audio carry the absent token on every stream.
        """
        key = raw.get("__key__", "?")
        p = _parse(raw, self.spec, expected_fp, f"{raw.get('__url__', '?')}:{key}")
        role %= p.codes_SKF.shape[0]  # a single-stream (mixed) sample: the model is its one stream under either role
        valid_chunks = -(-p.valid_frames // FRAMES_PER_CHUNK)
        start_chunk = 0
        if valid_chunks > self.spec.window_chunks:
            draw = seeded_rng(seed, epoch, name_hash(key), role)
            start_chunk = int(draw.integers(0, valid_chunks - self.spec.window_chunks + 1))
        self._lay_out_audio(p, role, start_chunk * FRAMES_PER_CHUNK)
        self._lay_out_frames(p, start_chunk)
        self.count += 1
        return self.count == self.size

    def _lay_out_audio(self, p: _Parsed, role: int, f0: int) -> None:
        """Row ``count``: codes and text of both roles from frame ``f0``, the absent token after them."""
        sp, b, a = self.spec, self.count, self._arrays
        S, _, F_have = p.codes_SKF.shape
        F, K = sp.frames, sp.codebooks
        n = max(0, min(p.valid_frames, F_have, f0 + F) - f0)  # real frames copied; the rest is absent
        valid, model_codes, model_text = a["valid"][b], a["model_codes"][b], a["model_text"][b]
        user_codes, user_text = a["user_codes"][b], a["user_text"][b]
        valid[:n] = True
        model_codes[:, :n] = p.codes_SKF[role, :K, f0 : f0 + n]
        model_text[:n] = p.text_SF[role, f0 : f0 + n]
        user, m = (role + 1) % S, n if S > 1 else 0  # one stream: the user is absent throughout
        user_codes[:, :m] = p.codes_SKF[user, :K, f0 : f0 + m]
        u = m if sp.user_text else 0
        user_text[:u] = p.text_SF[user, f0 : f0 + u]
        if n < F:
            valid[n:] = False
            model_codes[:, n:] = sp.audio_vocab
            model_text[n:] = sp.text_vocab
        if m < F:
            user_codes[:, m:] = sp.audio_vocab
        if u < F:
            user_text[u:] = sp.text_vocab

    def _lay_out_frames(self, p: _Parsed, start_chunk: int) -> None:
        """Row ``count``: the video tokens of each chunk of the window; chunks without a frame hold the
        absent token."""
        frames_CP = self._arrays["frames"][self.count]
        frames_CP.fill(self.spec.frame_vocab)
        if p.frames_NP is None or p.chunks_N is None or not len(p.frames_NP):
            return
        rel_N = p.chunks_N.astype(np.int64) - start_chunk
        # one frame per chunk: with several, the first one of the chunk wins (reversed assignment)
        idx = np.nonzero((rel_N >= 0) & (rel_N < self.spec.window_chunks))[0][::-1]
        frames_CP[rel_N[idx]] = p.frames_NP[idx]

    def take(self) -> dict[str, np.ndarray]:
        """The filled rows as a batch (token ranges were checked per sample); the builder starts afresh."""
        out = {k: v[: self.count] for k, v in self._arrays.items()}
        self._arrays, self.count = self._allocate(), 0
        return out


def build_example(
    raw: dict[str, Any], role: int, spec: ExampleSpec, *, seed: int, epoch: int, expected_fp: dict[str, Optional[str]]
) -> dict[str, np.ndarray]:
    """One sample laid out for ``role`` (the stream index that plays the model): the arrays of
    ``BatchBuilder`` without the batch dimension."""
    builder = BatchBuilder(spec, 1)
    builder.add(raw, role, seed=seed, epoch=epoch, expected_fp=expected_fp)
    return {k: v[0] for k, v in builder.take().items()}
