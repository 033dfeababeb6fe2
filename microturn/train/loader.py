"""The training loader of one rank: pinned, multi-process batches of the corpus, deterministic and
resumable (``state_dict`` / ``load_state_dict``), enforcing ``data.max_bad_fraction`` over all its readers.

Where the work is done: ``corpus`` (dataset.json, which shards each reader takes, raw samples),
``examples`` (a decoded sample laid out as training examples), ``stream`` (one reader's endless stream
of batches, its position and its bad samples). This module runs one ``ExampleStream`` per DataLoader
worker (or in-process with ``num_workers: 0``) and keeps the last position of each, so that a
restarted loader continues exactly.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import torch
import torch.utils.data

from microturn.errors import TrainDataError
from microturn.train.config import TrainConfig
from microturn.train.examples import ExampleSpec
from microturn.train.stream import BadSamples, ExampleStream, Position, TorchIterable, bad_sample_limit


class TrainLoader:
    """Pinned, multi-process batches for one rank, with ``state_dict``/``load_state_dict`` for resume.

    Iterating yields dicts of CPU tensors (pinned when asked), as ``examples.BatchBuilder`` lays them out
    for the model variant: model_codes / user_codes [B, K, F] or model_dmel / user_dmel [B, M, F],
    model_text [B, F], user_text [B, F], valid [B, F], and frames [B, C, P] or pixels [B, C, Y, X, 3]
    with has_frame [B, C].
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
        iterable = TorchIterable(stream)
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
