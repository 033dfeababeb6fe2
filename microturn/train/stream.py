"""The stream of one (rank, worker) reader: shards -> shuffled, role-expanded examples -> batches,
endless, deterministic, with its resume position and the bad samples it met.

* **Equal batches on every rank.** The stream walks epoch after epoch (``corpus.shards_for`` repeats
  the shard list when there are fewer shards than readers). Training counts steps, not epochs, so a
  rank with fewer shards simply starts its next epoch sooner: no DDP hang.
* **Small resumable position.** Every batch carries the position of the reader that made it (epoch,
  shard index in that reader's list, examples already taken from that shard). A restarted reader
  re-reads only its current shard up to that position (bytes only, nothing decoded) and continues
  exactly: the seeded shuffle buffer restarts at every shard boundary, which is what makes this cheap.
* **A bad sample is skipped and counted, never fatal by itself.** A sample that fails, and the rest of
  a shard after tar damage, is recorded by reason (``BadSamples``); the run fails only once the
  distinct bad samples exceed ``data.max_bad_fraction`` of the samples dataset.json lists
  (``too_many_bad_samples``, with counts).
* **Roles.** ``roles: both`` yields each window twice, once per assignment of the speaker streams.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.utils.data

from microturn.errors import SampleError, TrainDataError
from microturn.train.corpus import ShardErrorHook, iter_raw_samples, name_hash, seeded_rng, shards_for
from microturn.train.examples import BatchBuilder, ExampleSpec

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Position:
    """Where a (rank, logical worker) stream stands: ``item`` examples already taken from its
    ``shard``-th shard of ``epoch``."""

    epoch: int = 0
    shard: int = 0
    item: int = 0


def _role_expanded(uri: str, roles: str, seed: int, epoch: int, on_error: Optional[ShardErrorHook]
                   ) -> Iterator[tuple[dict[str, Any], int]]:  # fmt: skip
    """(raw sample, role) pairs of one shard in stored order: both roles, or one (first, or drawn)."""
    for raw in iter_raw_samples(uri, on_error):
        if roles == "both":
            yield raw, 0
            yield raw, 1
        elif roles == "random":
            yield raw, int(seeded_rng(seed, epoch, name_hash(raw["__key__"]), 11).integers(0, 2))
        else:
            yield raw, 0


def _shard_items(
    uri: str, *, roles: str, seed: int, epoch: int, buffer: int, on_error: Optional[ShardErrorHook] = None
) -> Iterator[tuple[dict[str, Any], int]]:
    """(raw sample, role) pairs of one shard, role-expanded and shuffled with a buffer seeded per shard."""
    rng = seeded_rng(seed, epoch, name_hash(uri.rsplit("/", 1)[-1]), 7)
    expanded = _role_expanded(uri, roles, seed, epoch, on_error)
    if buffer <= 1:
        yield from expanded
        return
    buf: list[tuple[dict[str, Any], int]] = []
    draws: list[int] = []  # slots drawn in blocks: one generator call per scalar costs microseconds
    for item in expanded:
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
        """Batches of reader ``worker`` of ``num_workers``, epoch after epoch, from its start position."""
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


class TorchIterable(torch.utils.data.IterableDataset):
    """Hands the stream to a DataLoader; each worker process iterates its own copy."""

    def __init__(self, stream: ExampleStream):
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.stream)
