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
from microturn.format.members import FRAME_INDEX
from microturn.train.config import ModelConfig
from microturn.train.corpus import TRAIN_MEMBERS, check_fingerprints, name_hash, seeded_rng

# meta.json of one window is a few KiB; a much larger one is not ours, and parsing it costs time and memory
MAX_META_BYTES = 1 << 20


def example_members(model: ModelConfig) -> tuple[str, ...]:
    """The members the model variant reads (a corpus must hold them; its other members are never read):
    text, EnCodec codes or dMel bins, and frame-codec tokens or pixel frames (with their chunk index)."""
    return _members(model.audio, model.video)


def _members(audio: str, video: str) -> tuple[str, ...]:
    frames = {"tokens": ("frames.npy", FRAME_INDEX), "pixels": ("pixels.npy", FRAME_INDEX), "none": ()}[video]
    return ("meta.json", "codes.npy" if audio == "codes" else "dmel.npy", "text.npy", *frames)


@dataclass(frozen=True)
class ExampleSpec:
    """Shapes of one training example. Sizes a variant does not read are 0 (codebooks and audio_vocab
    without codes, dmel_* without dMel, frame_* without frame tokens, pixel_size without pixels)."""

    window_chunks: int
    text_vocab: int
    user_text: bool
    audio: str = "codes"  # "codes" | "dmel" (ModelConfig.audio)
    video: str = "tokens"  # "tokens" | "pixels" | "none" (ModelConfig.video)
    codebooks: int = 0
    audio_vocab: int = 0
    frame_vocab: int = 0
    frame_tokens: int = 0  # h * w
    dmel_channels: int = 0  # M
    dmel_bins: int = 0  # B (bin B is the absent value)
    pixel_size: int = 0  # frames are pixel_size x pixel_size x 3

    @classmethod
    def of(cls, model: ModelConfig, *, window_chunks: int, user_text: bool) -> "ExampleSpec":
        """The spec of a resolved model config (sizes from dataset.json filled in)."""
        wanted = {"codes": ("codebooks", "audio_vocab"), "dmel": ("dmel_channels", "dmel_bins")}[model.audio]
        wanted += {"tokens": ("frame_vocab", "frame_tokens"), "pixels": ("pixel_size",), "none": ()}[model.video]
        missing = [n for n in ("text_vocab", *wanted) if getattr(model, n) is None]
        if missing:
            raise ValueError(f"model.{', model.'.join(missing)} must be resolved (from dataset.json) first")
        return cls(window_chunks=window_chunks, text_vocab=int(model.text_vocab or 0), user_text=user_text,
                   audio=model.audio, video=model.video, **{n: int(getattr(model, n)) for n in wanted})  # fmt: skip

    @property
    def members(self) -> tuple[str, ...]:
        """The members an example is built from (the rest of a sample is not decoded)."""
        return _members(self.audio, self.video)

    @property
    def frames(self) -> int:
        return self.window_chunks * FRAMES_PER_CHUNK


@dataclass(frozen=True)
class _Parsed:
    """What the model reads of one sample, checked (shared by its two role assignments); arrays are views."""

    audio_SXF: np.ndarray  # codes [S, K, F] (the first K the model reads) or dMel bins [S, M, F]
    text_SF: np.ndarray
    video_N: Optional[np.ndarray]  # frame tokens [N, h*w] or pixels [N, Y, X, 3]; None without video frames
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
        return decode_sample(raw, raw.get("__key__", ""), table=TRAIN_MEMBERS, only=members)
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
    text_SF = sample.arrays["text.npy"]
    audio_SXF = _checked_audio(sample, spec, where)
    _check_tokens(text_SF, spec.text_vocab, "text", where)
    video_N = chunks_N = None
    video = sample.arrays.get("frames.npy" if spec.video == "tokens" else "pixels.npy")
    # no frames (an audio-only session: [0, ...]) leaves every chunk with the "no frame" input
    if spec.video != "none" and video is not None and len(video):
        video_N, chunks_N = _checked_video(video, spec, where), sample.arrays[FRAME_INDEX]
    return _Parsed(audio_SXF, text_SF, video_N, chunks_N, int(sample.meta["valid_frames"]))


def _checked_audio(sample: DecodedSample, spec: ExampleSpec, where: str) -> np.ndarray:
    """Codes [S, K, F] (the model's first K codebooks) or dMel bins [S, M, F], shapes and ranges checked."""
    name = "codes" if spec.audio == "codes" else "dmel"
    audio_SXF = sample.arrays[f"{name}.npy"]
    S, X, F = audio_SXF.shape
    if S == 0 or F == 0:
        raise SampleError("bad_shape", f"{name} {audio_SXF.shape} hold no stream or no frame", source=where)
    if name == "codes":
        if X < spec.codebooks:
            raise SampleError("too_few_codebooks", f"sample has {X} codebooks, model wants {spec.codebooks}",
                              source=where)  # fmt: skip
        audio_SXF = audio_SXF[:, : spec.codebooks]
    elif X != spec.dmel_channels:
        raise SampleError("bad_shape", f"dmel has {X} mel channels, model expects {spec.dmel_channels}", source=where)
    _check_tokens(audio_SXF, spec.audio_vocab if name == "codes" else spec.dmel_bins, name, where)
    return audio_SXF


def _checked_video(video: np.ndarray, spec: ExampleSpec, where: str) -> np.ndarray:
    """Frame tokens [N, h, w] -> [N, h*w] (ranges checked), or pixels [N, Y, X, 3] of the model's size."""
    if spec.video == "tokens":
        N, h, w = video.shape
        if h * w != spec.frame_tokens:
            raise SampleError("bad_shape", f"frames {video.shape} hold {h * w} tokens each, model expects "
                                           f"{spec.frame_tokens}", source=where)  # fmt: skip
        frames_NP = video.reshape(N, spec.frame_tokens)
        _check_tokens(frames_NP, spec.frame_vocab, "frames", where)
        return frames_NP
    if video.ndim != 4 or video.shape[1:] != (spec.pixel_size, spec.pixel_size, 3):
        raise SampleError("bad_shape", f"pixels {video.shape}, model expects [N, {spec.pixel_size}, "
                                       f"{spec.pixel_size}, 3]", source=where)  # fmt: skip
    return video


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
    stack). Shapes (B = batch size, F = window_chunks * 15, C = window_chunks, K = codebooks, M = mel
    channels, P = frame_tokens, Y = X = pixel_size); the absent/pad value of every token stream is its
    vocab size (an extra embedding row), of dMel the bin count:
      codes: model_codes, user_codes [B, K, F];  dmel: model_dmel, user_dmel uint8 [B, M, F];
      model_text, user_text [B, F]; valid bool [B, F] (real audio; the loss ignores the rest);
      video tokens: frames [B, C, P];  pixels: pixels uint8 [B, C, Y, X, 3], has_frame bool [B, C].
    Token arrays are int16 when the vocab (plus the absent token) fits, else int32: codes are then
    copied as they are stored, and half the bytes go to the device, where the model widens them.
    """

    def __init__(self, spec: ExampleSpec, batch_size: int):
        self.spec = spec
        self.size = batch_size
        self.count = 0
        self.audio_key = "codes" if spec.audio == "codes" else "dmel"
        self.absent_audio = spec.audio_vocab if spec.audio == "codes" else spec.dmel_bins
        self._arrays = self._allocate()

    def _allocate(self) -> dict[str, np.ndarray]:
        # uninitialised: ``add`` writes every element of its row (data, then the absent token after it)
        sp, B = self.spec, self.size
        F, C = sp.frames, sp.window_chunks
        text = token_dtype(sp.text_vocab)
        if sp.audio == "codes":
            audio_shape, audio = (B, sp.codebooks, F), token_dtype(sp.audio_vocab)
        else:
            audio_shape, audio = (B, sp.dmel_channels, F), np.dtype(np.uint8)
        out = {
            f"model_{self.audio_key}": np.empty(audio_shape, dtype=audio),
            f"user_{self.audio_key}": np.empty(audio_shape, dtype=audio),
            "model_text": np.empty((B, F), dtype=text),
            "user_text": np.empty((B, F), dtype=text),
            "valid": np.empty((B, F), dtype=bool),
        }
        if sp.video == "tokens":
            out["frames"] = np.empty((B, C, sp.frame_tokens), dtype=token_dtype(sp.frame_vocab))
        elif sp.video == "pixels":
            out["pixels"] = np.empty((B, C, sp.pixel_size, sp.pixel_size, 3), dtype=np.uint8)
            out["has_frame"] = np.empty((B, C), dtype=bool)
        return out

    def add(
        self, raw: dict[str, Any], role: int, *, seed: int, epoch: int, expected_fp: dict[str, Optional[str]]
    ) -> bool:
        """Lay out ``raw`` with stream ``role`` as the model into the next row; True when the batch is full.

        The crop is a chunk-aligned window inside the real audio at an offset fixed by
        (seed, epoch, key, role); frames past the real audio carry the absent token on every stream.
        """
        key = raw.get("__key__", "?")
        p = _parse(raw, self.spec, expected_fp, f"{raw.get('__url__', '?')}:{key}")
        role %= p.audio_SXF.shape[0]  # a single-stream (mixed) sample: the model is its one stream under either role
        valid_chunks = -(-p.valid_frames // FRAMES_PER_CHUNK)
        start_chunk = 0
        if valid_chunks > self.spec.window_chunks:
            draw = seeded_rng(seed, epoch, name_hash(key), role)
            start_chunk = int(draw.integers(0, valid_chunks - self.spec.window_chunks + 1))
        self._lay_out_audio(p, role, start_chunk * FRAMES_PER_CHUNK)
        if self.spec.video != "none":
            self._lay_out_frames(p, start_chunk)
        self.count += 1
        return self.count == self.size

    def _lay_out_audio(self, p: _Parsed, role: int, f0: int) -> None:
        """Row ``count``: audio and text of both roles from frame ``f0``, the absent value after them."""
        sp, b, a, absent = self.spec, self.count, self._arrays, self.absent_audio
        S, _, F_have = p.audio_SXF.shape
        F = sp.frames
        n = max(0, min(p.valid_frames, F_have, f0 + F) - f0)  # real frames copied; the rest is absent
        valid, model_audio, model_text = a["valid"][b], a[f"model_{self.audio_key}"][b], a["model_text"][b]
        user_audio, user_text = a[f"user_{self.audio_key}"][b], a["user_text"][b]
        valid[:n] = True
        model_audio[:, :n] = p.audio_SXF[role, :, f0 : f0 + n]
        model_text[:n] = p.text_SF[role, f0 : f0 + n]
        user, m = (role + 1) % S, n if S > 1 else 0  # one stream: the user is absent throughout
        user_audio[:, :m] = p.audio_SXF[user, :, f0 : f0 + m]
        u = m if sp.user_text else 0
        user_text[:u] = p.text_SF[user, f0 : f0 + u]
        if n < F:
            valid[n:] = False
            model_audio[:, n:] = absent
            model_text[n:] = sp.text_vocab
        if m < F:
            user_audio[:, m:] = absent
        if u < F:
            user_text[u:] = sp.text_vocab

    def _lay_out_frames(self, p: _Parsed, start_chunk: int) -> None:
        """Row ``count``: the video of each chunk of the window; chunks without a frame hold the absent
        token (frame tokens) or zeros with ``has_frame`` False (pixels)."""
        b, C = self.count, self.spec.window_chunks
        pixels = self.spec.video == "pixels"
        video_C = self._arrays["pixels" if pixels else "frames"][b]
        has_C = self._arrays["has_frame"][b] if pixels else np.zeros(C, dtype=bool)
        has_C.fill(False)
        if p.video_N is not None and p.chunks_N is not None and len(p.video_N):
            rel_N = p.chunks_N.astype(np.int64) - start_chunk
            # one frame per chunk: with several, the first one of the chunk wins (reversed assignment)
            idx = np.nonzero((rel_N >= 0) & (rel_N < C))[0][::-1]
            video_C[rel_N[idx]] = p.video_N[idx]
            has_C[rel_N[idx]] = True
        video_C[~has_C] = 0 if pixels else self.spec.frame_vocab

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
