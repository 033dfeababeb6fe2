"""The corpus as the trainer sees it: what dataset.json says (shards, tokenizers, sample counts), which
shards are held out, which shards each (rank, worker) reads in an epoch, and the raw samples of a shard.

* **Never unpickles.** Shards are read with ``microturn.format``'s tar reader (large sequential reads,
  headers parsed by slicing, member data handed out as views: no copy per member); only the members
  the trainer knows are kept (``TRAIN_MEMBERS``), so a stray ``.pyd`` is never even read into a sample.
  No webdataset decoders run (the default ones unpickle ``.pyd``); webdataset lists and splits shards.
* **Deterministic order from (seed, epoch).** Each epoch shuffles the shard list with
  ``default_rng([seed, epoch])`` and splits it with ``wds.split_by_node`` then ``wds.split_by_worker``;
  with fewer shards than readers the list is repeated, so every reader has data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Optional

import numpy as np
import webdataset as wds

from microturn import storage
from microturn.errors import FormatError, TrainDataError
from microturn.format import (DEFAULT_REPRESENTATION_MEMBERS, SHARDS_DIR, decode_npy, iter_sample_views,
                              member_table, member_table_of_dataset, read_dataset_json)
from microturn.process_env import environment
from microturn.tokenizers.dmel import dmel_member
from microturn.tokenizers.pixels import PixelsRepresentation
from microturn.train.config import TrainConfig

log = logging.getLogger(__name__)


# What the trainer can read: the format version 1 members (codes, text, frame tokens) plus dMel on the
# codec frame grid ([S, M, F]: the default hop, as microturn/tokenizers/dmel.py declares it) and pixel
# frames. Samples are decoded against this table; nothing outside it is kept from a shard.
TRAIN_MEMBERS = member_table((
    *DEFAULT_REPRESENTATION_MEMBERS,
    dmel_member("F"),
    *PixelsRepresentation.members,
))  # fmt: skip


def seeded_rng(*parts: int) -> np.random.Generator:
    """A generator fixed by integer parts (seed, epoch, a name's hash, ...): same parts, same draws."""
    return np.random.default_rng([p & 0xFFFFFFFF for p in parts])


def name_hash(name: str) -> int:
    """A stable hash of a sample key or shard name (Python's ``hash`` of a str changes per process)."""
    return zlib.crc32(name.encode("utf-8"))


# ---------------------------------------------------------------- dataset.json


@dataclass(frozen=True)
class CorpusInfo:
    """What the trainer needs to know about a built corpus, from its dataset.json (docs/format.md)."""

    root: str
    shard_uris: tuple[str, ...]  # sorted by name
    fingerprints: dict[str, str] = field(default_factory=dict)  # audio / frames / text
    vocab: dict[str, int] = field(default_factory=dict)  # audio / frames / text
    codebooks: Optional[int] = None  # audio codebooks per stream in the shards
    tokenizers: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset.json entries read (dims, patch)
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


def _shard_names(doc: dict[str, Any], source: str) -> list[str]:
    entries = _required(doc, "shards", list, source)
    if not entries:
        raise TrainDataError("no_shards", "dataset.json lists no shards (every session was quarantined?)", source=source)
    names = [_required({"shard": e}, "shard.name", str, source) for e in entries]
    bad = [n for n in names if "/" in n or n in (".", "..")]
    if bad:
        raise TrainDataError("bad_dataset_json", f"shard names must be plain file names, got {bad[:3]}", source=source)
    return names


def read_corpus(data_uri: str, needs: Collection[str] = ()) -> CorpusInfo:
    """Describe the built corpus under ``data_uri`` from its ``dataset.json``: the shards it lists
    (``shards[].name`` under ``shards/``), tokenizer fingerprints and vocab sizes
    (``tokenizers.<name>.{fingerprint,vocab_size}`` of the representations whose members ``needs`` names)
    and ``tokenizers.audio.codebooks`` when codes are read.
    A missing file or key raises ``TrainDataError``: a corpus is trained on only as its build described it.
    ``needs``: the members the model reads (``ExampleSpec.members``); a corpus whose member table lacks
    one is refused (``missing_member``) before anything else is read. Other members are never read.
    """
    root = data_uri.rstrip("/") if data_uri != "/" else data_uri
    source = storage.join(root, "dataset.json")
    try:
        doc = read_dataset_json(root)
    except FormatError as exc:
        reason = "no_corpus" if exc.code == "missing_dataset_json" else exc.code
        raise TrainDataError(reason, exc.message, source=source) from None
    read = _check_members(doc, needs, source)
    fingerprints = {n: _required(doc, f"tokenizers.{n}.fingerprint", str, source) for n in read}
    vocab = {n: _required(doc, f"tokenizers.{n}.vocab_size", int, source) for n in read}
    codebooks = _required(doc, "tokenizers.audio.codebooks", int, source) if "audio" in read else None
    entries = doc.get("tokenizers") if isinstance(doc.get("tokenizers"), dict) else {}
    names = _shard_names(doc, source)
    totals = doc.get("totals") if isinstance(doc.get("totals"), dict) else {}
    samples = totals.get("samples")
    # listed sample counts: the denominator of data.max_bad_fraction and what a damaged shard loses
    listed = {storage.join(root, SHARDS_DIR, n): e.get("samples") for n, e in zip(names, doc["shards"])}
    return CorpusInfo(
        root=root,
        shard_uris=tuple(storage.join(root, SHARDS_DIR, n) for n in sorted(names)),
        fingerprints=fingerprints,
        vocab=vocab,
        codebooks=codebooks,
        tokenizers={n: dict(entries[n]) for n in read},
        samples=samples if isinstance(samples, int) else None,
        shard_samples={u: n for u, n in listed.items() if isinstance(n, int) and not isinstance(n, bool) and n >= 0},
    )


def _check_members(doc: dict[str, Any], needs: Collection[str], source: str) -> tuple[str, ...]:
    """Refuse a corpus whose member table (dataset.json ``members``) lacks a member the model reads;
    the tokenizers entries those members name (whose fingerprints and vocab sizes the trainer checks).
    Without ``needs``: the format version 1 representations (audio, frames, text)."""
    try:
        held = member_table_of_dataset(doc)
    except FormatError as exc:
        raise TrainDataError("bad_dataset_json", exc.message, source=source) from None
    missing = [m for m in needs if m not in held]
    if missing:
        raise TrainDataError(
            "missing_member",
            f"the model reads {', '.join(missing)}, which this corpus does not hold (it holds {', '.join(held)}); "
            "train on a corpus built with the representations that write them (tokenizers.representations)",
            source=source,
        )
    if not needs:
        return ("audio", "frames", "text")
    return tuple(sorted({held[m].tokenizer for m in needs if held[m].tokenizer is not None}))


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


def sessions_of(root: str, shard_uris: Collection[str]) -> list[str]:
    """The session ids with a sample in ``shard_uris`` (from the corpus' index.parquet), sorted; [] when
    the corpus has no readable index (the split record then names shards only)."""
    import io

    uri = storage.join(root, "index.parquet")
    if not storage.exists(uri):
        return []
    try:
        table = storage.read_parquet(io.BytesIO(storage.read_bytes(uri)), columns=["shard", "session_id"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s is unreadable (%s): the run's split names shards only", uri, exc)
        return []
    names = {u.rsplit("/", 1)[-1] for u in shard_uris}
    rows = zip(table.column("shard").to_pylist(), table.column("session_id").to_pylist())
    return sorted({str(sid) for shard, sid in rows if shard in names})


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


# ---------------------------------------------------------------- shards of one reader


@contextlib.contextmanager
def _worker_env(rank: int, world: int, worker: int, num_workers: int) -> Iterator[None]:
    """webdataset's splitters read RANK/WORLD_SIZE/WORKER/NUM_WORKERS; pin them to our (logical) ids."""
    with environment({"RANK": str(rank), "WORLD_SIZE": str(world), "WORKER": str(worker),
                      "NUM_WORKERS": str(num_workers)}):
        yield


def shards_for(
    shard_uris: tuple[str, ...], *, seed: int, epoch: int, rank: int, world: int, worker: int, num_workers: int
) -> list[str]:
    """This reader's shards for ``epoch``: a seeded permutation split by node, then by worker."""
    order = seeded_rng(seed, epoch).permutation(len(shard_uris))
    readers = world * num_workers
    # fewer shards than readers: repeat the list so every reader has data (equal batches everywhere)
    reps = max(1, math.ceil(readers / len(shard_uris)))
    listed = [{"url": shard_uris[i]} for _ in range(reps) for i in order]
    with _worker_env(rank, world, worker, num_workers):
        mine = list(wds.split_by_worker(wds.split_by_node(listed)))
    return [s["url"] for s in mine]


# ---------------------------------------------------------------- raw samples

ShardErrorHook = Callable[[str, int, str, str], None]  # (shard uri, samples read before, reason, message)


def iter_raw_samples(uri: str, on_error: Optional[ShardErrorHook] = None) -> Iterator[dict[str, Any]]:
    """Samples of one shard as {member: read-only bytes view} (plus ``__key__``/``__url__``); only the
    format's members are kept, nothing is decoded. A damaged or unreadable shard ends early (the
    samples before the damage are kept: one bad file must not stop a training run) and is reported to
    ``on_error`` (logged when there is none)."""
    read = 0
    try:
        for key, members in iter_sample_views(uri, suffixes=tuple(TRAIN_MEMBERS)):
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


def frame_tokens_in(corpus: CorpusInfo, *, look_at: int = 64) -> Optional[int]:
    """Tokens per video frame (h * w) from the first readable ``frames.npy`` among the first ``look_at``
    samples. An audio-only sample still says its grid (frames ``[0, h, w]``); damaged samples are passed
    over (the loader skips and counts them later)."""
    seen = 0
    for uri in corpus.shard_uris:
        for raw in iter_raw_samples(uri):
            seen += 1
            frames = None
            if "frames.npy" in raw:
                # FormatError is a ValueError; the others: a crafted header numpy accepts (negative dims)
                with contextlib.suppress(ValueError, TypeError, OverflowError):
                    frames = decode_npy(raw["frames.npy"], where="frames.npy")
            if frames is not None and frames.ndim == 3 and frames.shape[1] * frames.shape[2] > 0:
                return int(frames.shape[1] * frames.shape[2])
            if seen >= look_at:
                return None
    if not seen:
        raise TrainDataError("no_samples", f"no samples in any shard of {corpus.root}")
    return None
