"""Training loader: corpus shards -> batches of interleavable examples, deterministic and resumable.

What it guarantees, and how:

* **Never unpickles.** Tar members are read as bytes with webdataset's tar iterators; ``.npy`` members
  are decoded here with ``np.load(allow_pickle=False)``, JSON with ``json.loads``. No webdataset
  decoders run (the default ones unpickle ``.pyd``).
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
import io
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

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
_NUM_RE = re.compile(r"V(\d+)")


class TrainDataError(ValueError):
    """The corpus cannot be trained on as configured (``reason`` is a short machine-readable code)."""

    def __init__(self, reason: str, message: str, *, source: Optional[str] = None):
        super().__init__(f"[train] {reason}: {message}" + (f" ({source})" if source else ""))
        self.reason = reason
        self.message = message
        self.source = source


# ---------------------------------------------------------------- corpus description


@dataclass(frozen=True)
class CorpusInfo:
    """What the trainer needs to know about a built corpus (from dataset.json, else from the shards)."""

    root: str
    shard_uris: tuple[str, ...]  # sorted by name
    fingerprints: dict[str, str] = field(default_factory=dict)  # audio / frames / text
    vocab: dict[str, int] = field(default_factory=dict)  # audio / frames / text, when recorded
    samples: Optional[int] = None


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def _shard_uri(root: str, entry: Any) -> Optional[str]:
    name = entry if isinstance(entry, str) else _first(entry, "uri", "path", "name", "file")
    if not isinstance(name, str):
        return None
    if "://" in name or os.path.isabs(name):
        return name
    if "/" not in name:
        name = f"shards/{name}"
    return storage.join(root, *name.split("/"))


def read_corpus(data_uri: str) -> CorpusInfo:
    """Describe the corpus under ``data_uri``: its shards, tokenizer fingerprints and vocab sizes.

    Reads ``dataset.json`` when present (fingerprints under ``fingerprints`` or ``tokenizers.<name>``,
    vocab sizes under ``vocab``/``vocab_sizes`` or ``tokenizers.<name>.vocab_size``); shards are those it
    lists, or every ``shards/*.tar`` when it lists none.
    """
    root = data_uri.rstrip("/") if data_uri != "/" else data_uri
    info: dict[str, Any] = {}
    ds_uri = storage.join(root, "dataset.json")
    if storage.exists(ds_uri):
        try:
            info = json.loads(storage.read_bytes(ds_uri))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TrainDataError("bad_dataset_json", f"dataset.json is not valid JSON: {exc}", source=ds_uri) from None
    fingerprints: dict[str, str] = {}
    vocab: dict[str, int] = {}
    tok = info.get("tokenizers") if isinstance(info.get("tokenizers"), dict) else {}
    fps = info.get("fingerprints") if isinstance(info.get("fingerprints"), dict) else {}
    vocabs = _first(info, "vocab", "vocab_sizes") or {}
    for name, aliases in (("audio", ("audio", "codec")), ("frames", ("frames", "frame", "video")), ("text", ("text",))):
        fp = _first(fps, *aliases) or _first(_first(tok, *aliases) or {}, "fingerprint")
        if isinstance(fp, str):
            fingerprints[name] = fp
        v = _first(vocabs, *aliases) or _first(_first(tok, *aliases) or {}, "vocab_size", "vocab", "codebook_size")
        if isinstance(v, int) and v > 0:
            vocab[name] = v
    # the text tokenizer's fingerprint names its vocabulary ("bytes/utf8/V260")
    if "text" not in vocab and (m := _NUM_RE.search(fingerprints.get("text", ""))):
        vocab["text"] = int(m.group(1))
    entries = info.get("shards") or []
    uris = [u for u in (_shard_uri(root, e) for e in entries) if u]
    if not uris:
        shard_dir = storage.join(root, "shards")
        uris = [storage.join(shard_dir, n) for n in storage.listdir(shard_dir) if n.endswith(".tar")]
    if not uris:
        raise TrainDataError("no_shards", f"no shards found under {root} (dataset.json lists none, shards/ is empty)")
    totals = info.get("totals") if isinstance(info.get("totals"), dict) else {}
    samples = _first(totals, "samples") if totals else None
    return CorpusInfo(
        root=root,
        shard_uris=tuple(sorted(uris, key=lambda u: u.rsplit("/", 1)[-1])),
        fingerprints=fingerprints,
        vocab=vocab,
        samples=samples if isinstance(samples, int) else None,
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


_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def load_npy(data: bytes, name: str = "array") -> np.ndarray:
    """Decode a ``.npy`` member without ever unpickling (object arrays are refused).

    The first array with a given header goes through ``np.load(allow_pickle=False)``; its layout
    (dtype, shape, order, data offset) is cached by header bytes, so later arrays with the same header
    (most of a corpus) are read with one ``np.frombuffer``: the header parse (``ast.literal_eval``)
    was the largest cost per sample. The result is read-only.
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise TrainDataError("bad_npy", f"{name}: not a .npy array")
    header_end = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    header = bytes(data[:header_end])
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise TrainDataError("bad_npy", f"{name}: {exc}") from None
        if len(_NPY_LAYOUTS) < 4096:
            _NPY_LAYOUTS[header] = (arr.dtype, arr.shape, bool(arr.flags.f_contiguous and arr.ndim > 1), header_end)
        return arr
    dtype, shape, fortran, offset = layout
    count = math.prod(shape)
    if len(data) < offset + count * dtype.itemsize:
        raise TrainDataError("bad_npy", f"{name}: truncated array")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")


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


def build_example(
    raw: dict[str, Any], role: int, spec: ExampleSpec, *, seed: int, epoch: int, expected_fp: dict[str, Optional[str]]
) -> dict[str, np.ndarray]:
    """Decode one sample and lay it out for ``role`` (the stream index that plays the model).

    Output arrays (F = window_chunks * 15, C = window_chunks, K = codebooks, P = frame_tokens); the
    absent/pad value of every stream is its vocab size (an extra embedding row in the model):
      model_codes, user_codes int32 [K, F]; model_text, user_text int32 [F]; frames int32 [C, P];
      valid bool [F] (real audio; the loss ignores the rest).
    """
    key = raw.get("__key__", "?")
    url = raw.get("__url__", "?")
    where = f"{url}:{key}"
    missing = [m for m in ("meta.json", "codes.npy", "text.npy") if m not in raw]
    if missing:
        raise TrainDataError("missing_member", f"sample lacks {', '.join(missing)}", source=where)
    meta = json.loads(raw["meta.json"])
    check_fingerprints(expected_fp, meta.get("fingerprints", {}), where)
    codes_SKF = load_npy(raw["codes.npy"], "codes.npy")
    text_SF = load_npy(raw["text.npy"], "text.npy")
    if codes_SKF.ndim != 3 or text_SF.ndim != 2 or codes_SKF.shape[0] != text_SF.shape[0]:
        raise TrainDataError("bad_shape", f"codes {codes_SKF.shape} / text {text_SF.shape} disagree", source=where)
    S, K_have, F_have = codes_SKF.shape
    if K_have < spec.codebooks:
        raise TrainDataError("too_few_codebooks", f"sample has {K_have} codebooks, model wants {spec.codebooks}", source=where)
    valid_frames = min(int(meta.get("valid_frames", F_have)), F_have)

    # crop: a chunk-aligned window inside the real audio, at an offset fixed by (seed, epoch, key, role)
    C, F = spec.window_chunks, spec.frames
    valid_chunks = math.ceil(valid_frames / FRAMES_PER_CHUNK)
    start_chunk = 0
    if valid_chunks > C:
        start_chunk = int(_rng(seed, epoch, _key_hash(key), role).integers(0, valid_chunks - C + 1))
    f0 = start_chunk * FRAMES_PER_CHUNK
    f1 = min(f0 + F, F_have)
    n = max(0, f1 - f0)
    valid = np.zeros(F, dtype=bool)
    valid[: max(0, min(valid_frames - f0, F))] = True

    user = (role + 1) % S if S > 1 else None
    model_codes = np.full((spec.codebooks, F), spec.audio_vocab, dtype=np.int32)
    user_codes = np.full((spec.codebooks, F), spec.audio_vocab, dtype=np.int32)
    model_text = np.full(F, spec.text_vocab, dtype=np.int32)
    user_text = np.full(F, spec.text_vocab, dtype=np.int32)
    model_codes[:, :n] = codes_SKF[role, : spec.codebooks, f0:f1]
    model_text[:n] = text_SF[role, f0:f1]
    if user is not None:
        user_codes[:, :n] = codes_SKF[user, : spec.codebooks, f0:f1]
        if spec.user_text:
            user_text[:n] = text_SF[user, f0:f1]
    # padding frames carry the absent token on every stream (codes may hold anything there)
    model_codes[:, ~valid] = spec.audio_vocab
    user_codes[:, ~valid] = spec.audio_vocab
    model_text[~valid] = spec.text_vocab
    user_text[~valid] = spec.text_vocab
    _check_range(model_codes, spec.audio_vocab, "codes", where)
    _check_range(user_codes, spec.audio_vocab, "codes", where)
    _check_range(model_text, spec.text_vocab, "text", where)
    _check_range(user_text, spec.text_vocab, "text", where)

    frames = np.full((C, spec.frame_tokens), spec.frame_vocab, dtype=np.int32)
    if spec.video and "frames.npy" in raw and "frame_chunks.npy" in raw:
        frames_N = load_npy(raw["frames.npy"], "frames.npy")
        chunks_N = load_npy(raw["frame_chunks.npy"], "frame_chunks.npy")
        if len(frames_N):
            flat = frames_N.reshape(len(frames_N), -1)
            if flat.shape[1] != spec.frame_tokens:
                raise TrainDataError(
                    "bad_shape", f"frames hold {flat.shape[1]} tokens, model expects {spec.frame_tokens}", source=where
                )
            rel = chunks_N.astype(np.int64) - start_chunk
            keep = (rel >= 0) & (rel < C)
            # one frame per chunk: with several, the first one of the chunk wins (reversed assignment)
            idx = np.nonzero(keep)[0][::-1]
            frames[rel[idx]] = flat[idx]
            _check_range(frames, spec.frame_vocab, "frames", where)
    return {
        "model_codes": model_codes,
        "user_codes": user_codes,
        "model_text": model_text,
        "user_text": user_text,
        "frames": frames,
        "valid": valid,
    }


def _check_range(arr: np.ndarray, vocab: int, name: str, where: str) -> None:
    # the value == vocab is our absent token; anything else outside [0, vocab) is bad data
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > vocab):
        raise TrainDataError(
            "token_out_of_range", f"{name} tokens span [{arr.min()}, {arr.max()}], vocab is {vocab}", source=where
        )


def collate(examples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    return {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}


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


def _log_and_continue(exn: Exception) -> bool:
    # webdataset's warn_and_continue sleeps 0.5 s per error; a broken shard is logged and skipped
    log.warning("skipping the rest of a shard after a read error: %s", exn)
    return True


def iter_raw_samples(uri: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard as {member: bytes} (plus ``__key__``/``__url__``); nothing decoded."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    wanted = set(_MEMBERS)

    def select(fname: str) -> bool:
        return fname.split(".", 1)[-1] in wanted

    with storage.open_input(uri) as fh:
        stream = tar_file_expander([{"url": uri, "stream": fh}], handler=_log_and_continue, select_files=select)
        yield from group_by_keys(stream, handler=_log_and_continue)


def _shard_items(
    uri: str, *, roles: str, seed: int, epoch: int, buffer: int
) -> Iterator[tuple[dict[str, Any], int]]:
    """(raw sample, role) pairs of one shard, role-expanded and shuffled with a buffer seeded per shard."""
    rng = _rng(seed, epoch, _key_hash(uri.rsplit("/", 1)[-1]), 7)

    def expanded() -> Iterator[tuple[dict[str, Any], int]]:
        for raw in iter_raw_samples(uri):
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
    for item in expanded():
        if len(buf) < buffer:
            buf.append(item)
            continue
        j = int(rng.integers(0, buffer))
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)):
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

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (physical + self.worker_offset) % num_workers
        return self.batches(worker, num_workers)

    def batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        pos = self.start.get(worker, Position())
        pending: list[dict[str, np.ndarray]] = []
        epoch = pos.epoch
        first = True
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
                    shards[si], roles=self.roles, seed=self.seed, epoch=epoch, buffer=self.shuffle_buffer
                )
                for taken, (raw, role) in enumerate(items, start=1):
                    if taken <= skip:
                        continue  # resuming: bytes are read, nothing is decoded
                    produced += 1
                    pending.append(
                        build_example(raw, role, self.spec, seed=self.seed, epoch=epoch, expected_fp=self.expected_fp)
                    )
                    if len(pending) == self.batch_size:
                        batch = collate(pending)
                        batch["_worker"] = worker
                        batch["_position"] = (epoch, si, taken)
                        pending = []
                        yield batch
                produced += skip
            first = False
            if produced == 0:
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
    ):
        self.shard_uris = tuple(shard_uris)
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
