"""``microturn eval CORPUS --run RUN_DIR``: a trained model streamed in micro-turns over sessions it did
not train on, each recorded speaker replayed as the user in turn (the model plays the other), scored
with the same definitions as the human baseline (``fdb``) against the corpus' own human backchannel
timing, plus the wall time of every micro-turn.

Sessions the run trained on are refused, not scored: RUN_DIR/split.json (written by the training loop)
names the training corpus and the sessions of its training shards; any session of CORPUS with one of
those ids is skipped and counted (``skipped_trained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from microturn.evaluate.baseline import config_of, human_pairs, human_reference
from microturn.evaluate.fdb import evaluate_pairs
from microturn.evaluate.replay import UserTrack, open_replayer, step_summary
from microturn.evaluate.timeline import RolePair, SessionTimeline, read_timelines
from microturn.report import UserError
from microturn.report.corpus import Target


REPLAY_MEMBERS = ("dmel.npy", "text.npy")


def evaluate_run(run_dir: str | Path, target: Target, *, max_samples: Optional[int] = None, temperature: float = 1.0,
                 seed: int = 0, threads: int = 1, progress: Callable[[str], None] = lambda _: None
                 ) -> dict[str, Any]:  # fmt: skip
    """The model's metrics on the held-out sessions of ``target`` (see the module docstring)."""
    r = open_replayer(run_dir, target.dataset_uri, temperature=temperature, seed=seed, threads=threads)
    missing = [m for m in REPLAY_MEMBERS if m not in target.layout.table]
    if missing:
        raise UserError(f"{target.uri} holds no {', '.join(missing)}: build it with dmel and text representations")
    timelines = read_timelines(target, max_samples, arrays=REPLAY_MEMBERS)
    fresh = [t for t in timelines if t.session_id not in r.trained_on and len(t.speakers) == 2]
    skipped = sum(t.session_id in r.trained_on for t in timelines)
    if not fresh:
        raise UserError(f"no two-speaker session of {target.uri} is held out from {run_dir} "
                        f"({len(timelines)} read, {skipped} trained on)")
    fdb_cfg = config_of(target)
    pairs: list[RolePair] = []
    steps: list[float] = []
    for i, tl in enumerate(fresh):
        heard = r.dmel.decode(np.ascontiguousarray(tl.arrays["dmel.npy"]))  # both recorded sides, as audio
        for user in (0, 1):
            progress(f"[{i + 1}/{len(fresh)}] {tl.session_id}: the model as {tl.speakers[1 - user]}")
            track, side, _ = r.answer(_user_track(tl, user), heard[user])
            pairs.append(RolePair(tl.session_id, tl.side(user), side))
            steps += track.step_ms
    out = evaluate_pairs(pairs, human_reference(human_pairs(fresh), fdb_cfg), fdb_cfg)
    out["step_ms"] = step_summary(steps)
    out["run"] = str(run_dir)
    out["skipped_trained"] = skipped
    return out


def _user_track(tl: SessionTimeline, stream: int) -> UserTrack:
    return UserTrack(tl.arrays["dmel.npy"][stream], tl.arrays["text.npy"][stream])
