"""Training loader: corpus shards -> batches of interleavable examples, deterministic and resumable.

What it guarantees, and how:

* **Never unpickles.** Shards are read with ``microturn.format``'s tar reader (large sequential reads,
  headers parsed by slicing, member data handed out as views: no copy per member); only the members the
  model uses are kept. ``.npy`` members go through ``format.decode_npy`` (header parsed once per distinct
  header, object dtypes refused, data viewed with ``np.frombuffer``), JSON through ``json.loads``.
  No webdataset decoders run (the default ones unpickle ``.pyd``); webdataset lists and splits shards.
* **Fast.** Samples are laid out straight into preallocated batch arrays (``BatchBuilder``).
* **A bad sample is skipped and counted, never fatal by itself.** Every member the model reads is
  checked when a sample is parsed (dtype as docs/format.md says, never cast; shapes; token ranges; a
  bounded meta.json). A sample that fails, and the rest of a shard after tar damage, is skipped and
  recorded by reason (``BadSamples``); the run fails only once the distinct bad samples exceed
  ``data.max_bad_fraction`` of the samples dataset.json lists (``too_many_bad_samples``, with counts).
* **Deterministic order from (seed, epoch).** Each epoch shuffles the shard list with
  ``default_rng([seed, epoch])``, splits it with ``wds.split_by_node`` then ``wds.split_by_worker``,
  shuffles examples inside each shard with a seeded buffer, and crops windows at offsets drawn from
  ``(seed, epoch, key, role)``. Same inputs, same batches, on any machine.
* **Equal batches on every rank.** The stream of each (rank, worker) is endless: it walks epoch after
  epoch (the shard list is repeated when there are fewer shards than readers). Training counts steps,
  not epochs, so a rank with fewer shards simply starts its next epoch sooner: no DDP hang.
* **Small resumable state.** Every batch carries the position of the worker that made it (epoch, shard
  index in that worker's list, examples already taken from that shard). ``TrainLoader.state_dict()``
  keeps the last position of each worker and the batch count; a restarted loader re-reads only the
  current shard of each worker up to that position (bytes only, nothing decoded) and continues
  exactly. The seeded shuffle buffer restarts at every shard boundary, which is what makes this cheap.
* **Roles.** The loader, not the corpus, decides which speaker stream is the model and which the user;
  ``roles: both`` yields each window twice, once per assignment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.utils.data
import webdataset as wds

from microturn import storage
from microturn.clock import FRAMES_PER_CHUNK
from microturn.train.config import TrainConfig

log = logging.getLogger(__name__)

# tar members the loader reads; the rest (words.json, events.json, ...) are skipped by name
_MEMBERS = ("meta.json", "codes.npy", "text.npy", "frames.npy", "frame_chunks.npy")


class TrainDataError(ValueError):
    """The corpus cannot be trained on as configured (``reason`` is a short machine-readable code)."""

    def __init__(self, reason: str, message: Optional[str] = None, *, source: Optional[str] = None):
        if message is None:
            # rebuilt from its text alone: torch's DataLoader re-raises a worker's error as ``type(text)``
            found = re.findall(r"\[train\] (\w+): ", reason)  # the last one raised (the others are context)
            super().__init__(reason)
            self.reason, self.message, self.source = (found[-1] if found else "worker_error"), reason, None
            return
        super().__init__(f"[train] {reason}: {message}" + (f" ({source})" if source else ""))
        self.reason = reason
        self.message = message
        self.source = source


class SampleError(TrainDataError):
    """One sample (or the rest of one shard) cannot be read: it is skipped and counted, not fatal."""


# meta.json of one window is a few KiB; a much larger one is not ours, and parsing it costs time and memory
MAX_META_BYTES = 1 << 20


class BadSamples:
    """Distinct samples that failed to parse: ``id -> (reason, count)``, where ``id`` is
    ``"<shard file>:<key>"`` for one sample (count 1) or ``"<shard file>:@<n>"`` for the unreadable rest of
    a shard after its first ``n`` samples (count: the samples dataset.json lists for it that were not
    read). Entries added since the last ``drain()`` are kept apart, to be sent on (worker -> loader ->
    rank 0) without resending the whole table."""

    def __init__(self, entries: Optional[dict[str, Any]] = None):
        self.entries: dict[str, tuple[str, int]] = {}
        self.total = 0  # samples, summed over entries (checked after every batch: kept, not recomputed)
        self._new: list[list[Any]] = []
        for ident, (reason, count) in (entries or {}).items():
            self.add(str(ident), str(reason), int(count))

    def add(self, ident: str, reason: str, count: int = 1) -> bool:
        """Record a bad sample; False when it was already known (seen in an earlier epoch)."""
        if ident in self.entries:
            return False
        self.entries[ident] = (reason, count)
        self.total += count
        self._new.append([ident, reason, count])
        return True

    def merge(self, items: list[list[Any]]) -> None:
        for ident, reason, count in items:
            self.add(ident, reason, count)

    def drain(self) -> list[list[Any]]:
        new, self._new = self._new, []
        return new

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason, count in self.entries.values():
            out[reason] = out.get(reason, 0) + count
        return dict(sorted(out.items()))

    def state_dict(self) -> dict[str, list[Any]]:
        return {ident: [reason, count] for ident, (reason, count) in sorted(self.entries.items())}

    def check(self, limit: int, *, expected: int, fraction: float) -> None:
        """Raise ``too_many_bad_samples`` (with the counts by reason) once the total exceeds ``limit``."""
        total = self.total
        if total <= limit:
            return
        examples = ", ".join(sorted(self.entries)[:5])
        raise TrainDataError(
            "too_many_bad_samples",
            f"{total} bad samples {self.by_reason()} of {expected} listed in dataset.json, above "
            f"data.max_bad_fraction={fraction} ({limit} allowed); first: {examples}",
        )


def bad_sample_limit(fraction: float, expected: int) -> int:
    """How many bad samples of ``expected`` are tolerated (exactly ``fraction`` of them is still fine)."""
    return int(math.floor(fraction * expected + 1e-9))


# ---------------------------------------------------------------- corpus description


@dataclass(frozen=True)
class CorpusInfo:
    """What the trainer needs to know about a built corpus, from its dataset.json (docs/format.md)."""

    root: str
    shard_uris: tuple[str, ...]  # sorted by name
    fingerprints: dict[str, str] = field(default_factory=dict)  # audio / frames / text
    vocab: dict[str, int] = field(default_factory=dict)  # audio / frames / text
    codebooks: Optional[int] = None  # audio codebooks per stream in the shards
    samples: Optional[int] = None
    shard_samples: dict[str, int] = field(default_factory=dict)  # uri -> samples dataset.json lists


def _required(doc: dict[str, Any], path: str, kind: type, source: str) -> Any:
    """``doc["a"]["b"]`` for ``path="a.b"``, of type ``kind``; a clear error names the missing key."""
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value <= 0):
        want = "a positive integer" if kind is int else kind.__name__
        raise TrainDataError("bad_dataset_json", f"dataset.json needs {path} ({want}), found {value!r}", source=source)
    return value


def read_corpus(data_uri: str) -> CorpusInfo:
    """Describe the built corpus under ``data_uri`` from its ``dataset.json``: the shards it lists
    (``shards[].name`` under ``shards/``), tokenizer fingerprints and vocab sizes
    (``tokenizers.{audio,frames,text}.{fingerprint,vocab_size}``) and ``tokenizers.audio.codebooks``.
    A missing file or key raises ``TrainDataError``: a corpus is trained on only as its build described it.
    """
    from microturn.format import SHARDS_DIR, FormatError, read_dataset_json

    root = data_uri.rstrip("/") if data_uri != "/" else data_uri
    source = storage.join(root, "dataset.json")
    try:
        doc = read_dataset_json(root)
    except FormatError as exc:
        reason = "no_corpus" if exc.code == "missing_dataset_json" else exc.code
        raise TrainDataError(reason, exc.message, source=source) from None
    fingerprints = {n: _required(doc, f"tokenizers.{n}.fingerprint", str, source) for n in ("audio", "frames", "text")}
    vocab = {n: _required(doc, f"tokenizers.{n}.vocab_size", int, source) for n in ("audio", "frames", "text")}
    codebooks = _required(doc, "tokenizers.audio.codebooks", int, source)
    entries = _required(doc, "shards", list, source)
    if not entries:
        raise TrainDataError("no_shards", "dataset.json lists no shards (every session was quarantined?)", source=source)
    names = [_required({"shard": e}, "shard.name", str, source) for e in entries]
    bad = [n for n in names if "/" in n or n in (".", "..")]
    if bad:
        raise TrainDataError("bad_dataset_json", f"shard names must be plain file names, got {bad[:3]}", source=source)
    totals = doc.get("totals") if isinstance(doc.get("totals"), dict) else {}
    samples = totals.get("samples")
    # listed sample counts: the denominator of data.max_bad_fraction and what a damaged shard loses
    listed = {storage.join(root, SHARDS_DIR, n): e.get("samples") for n, e in zip(names, entries)}
    return CorpusInfo(
        root=root,
        shard_uris=tuple(storage.join(root, SHARDS_DIR, n) for n in sorted(names)),
        fingerprints=fingerprints,
        vocab=vocab,
        codebooks=codebooks,
        samples=samples if isinstance(samples, int) else None,
        shard_samples={u: n for u, n in listed.items() if isinstance(n, int) and not isinstance(n, bool) and n >= 0},
    )


def split_train_eval(corpus: CorpusInfo, cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Train and held-out shard lists: the last ``eval_shards`` shards (by name) are held out.

    With a single shard nothing can be held out; eval is then disabled (empty list) with a warning.
    """
    shards = corpus.shard_uris
    n_eval = cfg.data.eval_shards
    if n_eval == 0:
        return shards, ()
    if n_eval >= len(shards):
        log.warning("corpus has %d shard(s): cannot hold out %d for eval; eval disabled", len(shards), n_eval)
        return shards, ()
    return shards[:-n_eval], shards[-n_eval:]


def check_fingerprints(expected: dict[str, Optional[str]], found: dict[str, Any], source: str) -> None:
    """Refuse data tokenized by other tokenizers than the model was configured (or first trained) with."""
    for name, want in expected.items():
        if want is None:
            continue
        got = found.get(name) if isinstance(found, dict) else None
        if got != want:
            raise TrainDataError(
                "fingerprint_mismatch",
                f"{name} tokenizer fingerprint {got!r} differs from the model's {want!r}; "
                "train on a corpus built with the same tokenizers (or start a new run)",
                source=source,
            )


# ---------------------------------------------------------------- one example


def load_npy(data: bytes | memoryview, name: str = "array") -> np.ndarray:
    """A read-only view of a ``.npy`` member (``microturn.format.decode_npy``: never unpickles)."""
    from microturn.format import FormatError, decode_npy

    try:
        return decode_npy(data, where=name)
    except FormatError as exc:
        raise SampleError("bad_npy", exc.message, source=name) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a crafted header numpy accepts (negative dims)
        raise SampleError("bad_npy", f"cannot read .npy: {exc}", source=name) from None


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
    def frames(self) -> int:
        return self.window_chunks * FRAMES_PER_CHUNK


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([p & 0xFFFFFFFF for p in parts])


def _key_hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


@dataclass(frozen=True)
class _Parsed:
    """A sample's members decoded once (shared by its two role assignments); arrays are views."""

    meta: dict[str, Any]
    codes_SKF: np.ndarray
    text_SF: np.ndarray
    frames_N: Optional[np.ndarray]  # [N, h*w]
    chunks_N: Optional[np.ndarray]
    valid_frames: int


def _parse(raw: dict[str, Any], spec: ExampleSpec, expected_fp: dict[str, Optional[str]], where: str) -> _Parsed:
    """Decode and check the members the model reads, once per sample read (both roles share it).

    Raises ``SampleError`` (skipped and counted) for anything that is not a sample of docs/format.md,
    and ``TrainDataError("fingerprint_mismatch")`` (fatal: data from other tokenizers, not damage)."""
    parsed = raw.get("__parsed__")
    if parsed is not None:
        return parsed
    failed = raw.get("__error__")
    if failed is not None:
        raise failed
    try:
        parsed = _parse_checked(raw, spec, expected_fp, where)
    except SampleError as exc:
        raw["__error__"] = exc
        raise
    raw["__parsed__"] = parsed
    return parsed


def _array(raw: dict[str, Any], member: str, where: str) -> np.ndarray:
    """A member array with exactly the dtype and rank of docs/format.md (checked, never cast)."""
    from microturn.format import MEMBERS

    spec = MEMBERS[member]
    arr = load_npy(raw[member], f"{where}.{member}")
    if arr.dtype != np.dtype(spec.dtype):
        raise SampleError("bad_dtype", f"{member} has dtype {arr.dtype}, expected {spec.dtype}", source=where)
    if arr.ndim != len(spec.dims):
        raise SampleError("bad_shape", f"{member} has shape {arr.shape}, expected [{', '.join(spec.dims)}]",
                          source=where)  # fmt: skip
    return arr


def _check_tokens(arr: np.ndarray, vocab: int, name: str, where: str) -> None:
    # stored tokens lie in [0, vocab) (vocab itself is our absent token, never stored); one pass: negatives
    # read as unsigned are huge
    if arr.size and int(arr.view(np.dtype(f"u{arr.dtype.itemsize}")).max()) >= vocab:
        raise SampleError("token_out_of_range", f"{name} tokens span [{arr.min()}, {arr.max()}], vocab is {vocab}",
                          source=where)  # fmt: skip


def _parse_checked(
    raw: dict[str, Any], spec: ExampleSpec, expected_fp: dict[str, Optional[str]], where: str
) -> _Parsed:
    needed = ("meta.json", "codes.npy", "text.npy") + (("frames.npy", "frame_chunks.npy") if spec.video else ())
    missing = [m for m in needed if m not in raw]
    if missing:
        raise SampleError("missing_member", f"sample lacks {', '.join(missing)}", source=where)
    if len(raw["meta.json"]) > MAX_META_BYTES:
        raise SampleError("bad_meta", f"meta.json is {len(raw['meta.json'])} bytes (at most {MAX_META_BYTES})",
                          source=where)  # fmt: skip
    try:
        meta = json.loads(bytes(raw["meta.json"]))
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError; RecursionError: deep nesting
        raise SampleError("bad_meta", f"meta.json is not valid JSON: {type(exc).__name__}: {exc}"[:300],
                          source=where) from None  # fmt: skip
    if not isinstance(meta, dict):
        raise SampleError("bad_meta", "meta.json is not an object", source=where)
    fingerprints = meta.get("fingerprints", {})
    check_fingerprints(expected_fp, fingerprints if isinstance(fingerprints, dict) else {}, where)
    codes_SKF = _array(raw, "codes.npy", where)  # views: nothing copied yet
    text_SF = _array(raw, "text.npy", where)
    S, K, F = codes_SKF.shape
    if S == 0 or F == 0:
        raise SampleError("bad_shape", f"codes {codes_SKF.shape} hold no stream or no frame", source=where)
    if text_SF.shape != (S, F):
        raise SampleError("bad_shape", f"codes {codes_SKF.shape} / text {text_SF.shape} disagree", source=where)
    if K < spec.codebooks:
        raise SampleError("too_few_codebooks", f"sample has {K} codebooks, model wants {spec.codebooks}", source=where)
    valid_frames = meta.get("valid_frames", F)
    if not isinstance(valid_frames, int) or isinstance(valid_frames, bool) or not 0 < valid_frames <= F:
        raise SampleError("bad_meta", f"valid_frames is {valid_frames!r}, expected 1..{F}", source=where)
    _check_tokens(codes_SKF[:, : spec.codebooks], spec.audio_vocab, "codes", where)
    _check_tokens(text_SF, spec.text_vocab, "text", where)
    frames_N = chunks_N = None
    if spec.video:
        frames = _array(raw, "frames.npy", where)
        chunks = _array(raw, "frame_chunks.npy", where)
        if chunks.shape != frames.shape[:1]:
            raise SampleError("bad_shape", f"frames {frames.shape} / frame_chunks {chunks.shape} disagree",
                              source=where)  # fmt: skip
        # no frames (an audio-only session: [0, h, w]) leaves every chunk with the "no frame" token
        if len(frames):
            if frames.shape[1] * frames.shape[2] != spec.frame_tokens:
                raise SampleError("bad_shape", f"frames {frames.shape} hold {frames.shape[1] * frames.shape[2]} "
                                               f"tokens each, model expects {spec.frame_tokens}", source=where)
            frames_N, chunks_N = frames.reshape(len(frames), spec.frame_tokens), chunks
            _check_tokens(frames_N, spec.frame_vocab, "frames", where)
    return _Parsed(meta, codes_SKF, text_SF, frames_N, chunks_N, valid_frames)


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
        sp, b, a = self.spec, self.count, self._arrays
        key = raw.get("__key__", "?")
        where = f"{raw.get('__url__', '?')}:{key}"
        p = _parse(raw, sp, expected_fp, where)
        S, _, F_have = p.codes_SKF.shape
        C, F, K = sp.window_chunks, sp.frames, sp.codebooks
        role %= S  # a single-stream (mixed) sample: the model is its one stream under either role
        valid_chunks = -(-p.valid_frames // FRAMES_PER_CHUNK)
        start_chunk = 0
        if valid_chunks > C:
            start_chunk = int(_rng(seed, epoch, _key_hash(key), role).integers(0, valid_chunks - C + 1))
        f0 = start_chunk * FRAMES_PER_CHUNK
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
        frames = a["frames"][b]
        frames.fill(sp.frame_vocab)
        if p.frames_N is not None and len(p.frames_N):
            rel = p.chunks_N.astype(np.int64) - start_chunk
            # one frame per chunk: with several, the first one of the chunk wins (reversed assignment)
            idx = np.nonzero((rel >= 0) & (rel < C))[0][::-1]
            frames[rel[idx]] = p.frames_N[idx]
        self.count += 1
        return self.count == self.size

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


# ---------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Position:
    """Where a (rank, logical worker) stream stands: ``item`` examples already taken from its
    ``shard``-th shard of ``epoch``."""

    epoch: int = 0
    shard: int = 0
    item: int = 0


@contextlib.contextmanager
def _worker_env(rank: int, world: int, worker: int, num_workers: int) -> Iterator[None]:
    """webdataset's splitters read RANK/WORLD_SIZE/WORKER/NUM_WORKERS; pin them to our (logical) ids."""
    names = ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS")
    old = {n: os.environ.get(n) for n in names}
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), WORKER=str(worker), NUM_WORKERS=str(num_workers))
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def shards_for(
    shard_uris: tuple[str, ...], *, seed: int, epoch: int, rank: int, world: int, worker: int, num_workers: int
) -> list[str]:
    """This reader's shards for ``epoch``: a seeded permutation split by node, then by worker."""
    order = _rng(seed, epoch).permutation(len(shard_uris))
    readers = world * num_workers
    # fewer shards than readers: repeat the list so every reader has data (equal batches everywhere)
    reps = max(1, math.ceil(readers / len(shard_uris)))
    listed = [{"url": shard_uris[i]} for _ in range(reps) for i in order]
    with _worker_env(rank, world, worker, num_workers):
        mine = list(wds.split_by_worker(wds.split_by_node(listed)))
    return [s["url"] for s in mine]


ShardErrorHook = Callable[[str, int, str, str], None]  # (shard uri, samples read before, reason, message)


def iter_raw_samples(uri: str, on_error: Optional[ShardErrorHook] = None) -> Iterator[dict[str, Any]]:
    """Samples of one shard as {member: read-only bytes view} (plus ``__key__``/``__url__``); only the
    members the loader uses are kept, nothing is decoded. A damaged or unreadable shard ends early (the
    samples before the damage are kept: one bad file must not stop a training run) and is reported to
    ``on_error`` (logged when there is none)."""
    from microturn.format import FormatError, iter_sample_views

    read = 0
    try:
        for key, members in iter_sample_views(uri, suffixes=_MEMBERS):
            members["__key__"] = key
            members["__url__"] = uri
            read += 1
            yield members
    except (FormatError, OSError) as exc:
        reason = exc.code if isinstance(exc, FormatError) else "unreadable_shard"
        if on_error is None:
            log.warning("skipping the rest of shard %s after a read error: %s", uri, exc)
        else:
            on_error(uri, read, reason, str(exc))


def _shard_items(
    uri: str, *, roles: str, seed: int, epoch: int, buffer: int, on_error: Optional[ShardErrorHook] = None
) -> Iterator[tuple[dict[str, Any], int]]:
    """(raw sample, role) pairs of one shard, role-expanded and shuffled with a buffer seeded per shard."""
    rng = _rng(seed, epoch, _key_hash(uri.rsplit("/", 1)[-1]), 7)

    def expanded() -> Iterator[tuple[dict[str, Any], int]]:
        for raw in iter_raw_samples(uri, on_error):
            if roles == "both":
                yield raw, 0
                yield raw, 1
            elif roles == "random":
                yield raw, int(_rng(seed, epoch, _key_hash(raw["__key__"]), 11).integers(0, 2))
            else:
                yield raw, 0

    if buffer <= 1:
        yield from expanded()
        return
    buf: list[tuple[dict[str, Any], int]] = []
    draws: list[int] = []  # slots drawn in blocks: one generator call per scalar costs microseconds
    for item in expanded():
        if len(buf) < buffer:
            buf.append(item)
            continue
        if not draws:
            draws = rng.integers(0, buffer, size=1024).tolist()[::-1]
        j = draws.pop()
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


class ExampleStream:
    """An endless, deterministic stream of batches for one rank (an ``IterableDataset`` when iterated by
    a torch DataLoader; ``worker_offset`` rotates worker ids so a resumed loader continues in order)."""

    def __init__(
        self,
        shard_uris: tuple[str, ...],
        spec: ExampleSpec,
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
        roles: str,
        shuffle_buffer: int,
        expected_fp: dict[str, Optional[str]],
        start: Optional[dict[int, Position]] = None,
        worker_offset: int = 0,
        shard_samples: Optional[Mapping[str, int]] = None,
        max_bad_fraction: float = 0.0,
    ):
        if not shard_uris:
            raise TrainDataError("no_shards", "the loader was given no shards")
        self.shard_uris = tuple(shard_uris)
        self.spec = spec
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.roles = roles
        self.shuffle_buffer = shuffle_buffer
        self.expected_fp = dict(expected_fp)
        self.start = dict(start or {})
        self.worker_offset = worker_offset
        self.shard_samples = dict(shard_samples or {})
        self.max_bad_fraction = max_bad_fraction
        # listed samples of these shards: the denominator of the bad-sample limit
        self.expected = sum(self.shard_samples.get(u, 0) for u in set(self.shard_uris))
        self.bad_limit = bad_sample_limit(max_bad_fraction, self.expected)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (physical + self.worker_offset) % num_workers
        return self.batches(worker, num_workers)

    def _record(self, bad: BadSamples, ident: str, reason: str, count: int, message: str) -> None:
        """Count a bad sample (once per run of this reader; logged the first time) and enforce the limit."""
        if bad.add(ident, reason, count):
            log.warning("skipping %s (%d sample(s)): %s", ident, count, message)
        bad.check(self.bad_limit, expected=self.expected, fraction=self.max_bad_fraction)

    def batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        pos = self.start.get(worker, Position())
        builder = BatchBuilder(self.spec, self.batch_size)
        bad = BadSamples()  # what this reader found bad; sent on with the next batch it yields
        epoch = pos.epoch
        first = True

        def shard_error(uri: str, read: int, reason: str, message: str) -> None:
            # the rest of the shard is lost: the samples dataset.json lists for it that were not read
            lost = max(1, self.shard_samples.get(uri, 0) - read)
            self._record(bad, f"{uri.rsplit('/', 1)[-1]}:@{read}", reason, lost, message)

        while True:
            shards = shards_for(
                self.shard_uris, seed=self.seed, epoch=epoch, rank=self.rank, world=self.world,
                worker=worker, num_workers=num_workers,
            )  # fmt: skip
            produced = 0
            for si in range(pos.shard if first else 0, len(shards)):
                skip = pos.item if first and si == pos.shard else 0
                first = False
                items = _shard_items(
                    shards[si], roles=self.roles, seed=self.seed, epoch=epoch, buffer=self.shuffle_buffer,
                    on_error=shard_error,
                )  # fmt: skip
                for taken, (raw, role) in enumerate(items, start=1):
                    if taken <= skip:
                        continue  # resuming: bytes are read, nothing is decoded
                    produced += 1
                    try:
                        full = builder.add(raw, role, seed=self.seed, epoch=epoch, expected_fp=self.expected_fp)
                    except SampleError as exc:  # nothing of it was laid out: skip it, count it
                        name = f"{shards[si].rsplit('/', 1)[-1]}:{raw.get('__key__', '?')}"
                        self._record(bad, name, exc.reason, 1, str(exc))
                        continue
                    if full:
                        batch: dict[str, Any] = {k: torch.from_numpy(v) for k, v in builder.take().items()}
                        batch["_worker"] = worker
                        batch["_position"] = (epoch, si, taken)
                        batch["_bad"] = bad.drain()
                        yield batch
                produced += skip
            first = False
            if produced == 0 and not bad.entries:
                raise TrainDataError(
                    "no_samples", f"epoch {epoch} of rank {self.rank} worker {worker} found no samples in {shards}"
                )
            epoch += 1


class TrainLoader:
    """Pinned, multi-process batches for one rank, with ``state_dict``/``load_state_dict`` for resume.

    Iterating yields dicts of CPU tensors (pinned when asked): model_codes [B, K, F], user_codes
    [B, K, F], model_text [B, F], user_text [B, F], frames [B, C, P], valid [B, F].
    """

    def __init__(
        self,
        shard_uris: tuple[str, ...],
        spec: ExampleSpec,
        cfg: TrainConfig,
        *,
        rank: int = 0,
        world: int = 1,
        expected_fp: Optional[dict[str, Optional[str]]] = None,
        state: Optional[dict[str, Any]] = None,
        num_workers: Optional[int] = None,
        pin_memory: Optional[bool] = None,
        shard_samples: Optional[Mapping[str, int]] = None,
    ):
        self.shard_uris = tuple(shard_uris)
        # samples dataset.json lists per shard (``CorpusInfo.shard_samples``); without them no bad sample
        # is tolerated, since its fraction cannot be known
        self.shard_samples = dict(shard_samples or {})
        self.expected = sum(self.shard_samples.get(u, 0) for u in set(self.shard_uris))
        self.bad_limit = bad_sample_limit(cfg.data.max_bad_fraction, self.expected)
        self.bad = BadSamples()
        self.spec = spec
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.expected_fp = dict(expected_fp or {})
        self.num_workers = cfg.data.num_workers if num_workers is None else num_workers
        self.pin_memory = cfg.data.pin_memory if pin_memory is None else pin_memory
        self.batches_seen = 0
        self.positions: dict[int, Position] = {}
        if state:
            self.load_state_dict(state)
        self._iter: Optional[Iterator[dict[str, Any]]] = None

    # state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_seen": self.batches_seen,
            "num_workers": self.num_workers,
            "rank": self.rank,
            "world": self.world,
            "positions": {str(w): [p.epoch, p.shard, p.item] for w, p in sorted(self.positions.items())},
            "bad": self.bad.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("num_workers", self.num_workers)) != self.num_workers or int(state.get("world", 1)) != self.world:
            raise TrainDataError(
                "resume_layout_changed",
                f"checkpoint was written with world={state.get('world')} num_workers={state.get('num_workers')}; "
                f"now world={self.world} num_workers={self.num_workers}: the data position cannot be mapped exactly",
            )
        self.batches_seen = int(state.get("batches_seen", 0))
        self.positions = {int(w): Position(*map(int, p)) for w, p in state.get("positions", {}).items()}
        self.bad = BadSamples(state.get("bad"))
        self._iter = None

    # iteration --------------------------------------------------------
    def _make_iter(self) -> Iterator[dict[str, Any]]:
        d = self.cfg.data
        workers = max(1, self.num_workers)
        stream = ExampleStream(
            self.shard_uris,
            self.spec,
            batch_size=d.batch_size,
            seed=self.cfg.run.seed,
            rank=self.rank,
            world=self.world,
            roles=d.roles,
            shuffle_buffer=d.shuffle_buffer,
            expected_fp=self.expected_fp,
            start=self.positions,
            worker_offset=self.batches_seen % workers,
            shard_samples=self.shard_samples,
            max_bad_fraction=d.max_bad_fraction,
        )
        if self.num_workers == 0:
            it = stream.batches(0, 1)
            if self.pin_memory:
                return (_pin(b) for b in it)
            return it
        iterable = _TorchIterable(stream)
        dl = torch.utils.data.DataLoader(
            iterable,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=d.prefetch_factor,
            persistent_workers=False,
            in_order=True,
        )
        return iter(dl)

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iter is None:
            self._iter = self._make_iter()
        batch = next(self._iter)
        worker = int(batch.pop("_worker"))
        self.positions[worker] = Position(*(int(x) for x in batch.pop("_position")))
        # every reader enforces the limit on what it saw; here it holds for all this rank's readers together
        self.bad.merge(batch.pop("_bad"))
        self.bad.check(self.bad_limit, expected=self.expected, fraction=self.cfg.data.max_bad_fraction)
        self.batches_seen += 1
        return batch

    def close(self) -> None:
        self._iter = None


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return batch
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class _TorchIterable(torch.utils.data.IterableDataset):
    """Hands the stream to a DataLoader; each worker process iterates its own copy."""

    def __init__(self, stream: ExampleStream):
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.stream)
