"""``microturn eval CORPUS --run RUN_DIR``: a trained model streamed in micro-turns over sessions it did
not train on, each recorded speaker replayed as the user in turn (the model plays the other), scored
with the same definitions as the human baseline (``fdb``) against the corpus' own human backchannel
timing, plus the wall time of every micro-turn.

Sessions the run trained on are refused, not scored: RUN_DIR/split.json (written by the training loop)
names the training corpus and the sessions of its training shards; any session of CORPUS with one of
those ids is skipped and counted (``skipped_trained``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from microturn.evaluate.baseline import config_of, human_pairs, human_reference
from microturn.evaluate.fdb import evaluate_pairs
from microturn.evaluate.replay import UserTrack, model_side, replay, step_summary, trained_sessions
from microturn.evaluate.timeline import RolePair, SessionTimeline, read_timelines
from microturn.report import UserError
from microturn.report.corpus import Target

log = logging.getLogger(__name__)

REPLAY_MEMBERS = ("dmel.npy", "text.npy")


def evaluate_run(run_dir: str | Path, target: Target, *, max_samples: Optional[int] = None, temperature: float = 1.0,
                 seed: int = 0, threads: int = 1, progress: Callable[[str], None] = lambda _: None
                 ) -> dict[str, Any]:  # fmt: skip
    """The model's metrics on the held-out sessions of ``target`` (see the module docstring)."""
    from microturn.report.render import load_codecs
    from microturn.train.realtime import RealtimeSession, load_run

    import torch

    torch.set_num_threads(threads)  # one micro-turn is many small matmuls: more threads only contend
    model, cfg = load_run(run_dir)
    if cfg.model.audio != "dmel":
        raise UserError("eval --run hears the model through its decoded dMel: the run must be model.audio: dmel")
    seen = trained_sessions(run_dir)
    missing = [m for m in REPLAY_MEMBERS if m not in target.layout.table]
    if missing:
        raise UserError(f"{target.uri} holds no {', '.join(missing)}: build it with dmel and text representations")
    timelines = read_timelines(target, max_samples, arrays=REPLAY_MEMBERS)
    fresh = [t for t in timelines if t.session_id not in seen and len(t.speakers) == 2]
    if not fresh:
        raise UserError(f"no two-speaker session of {target.uri} is held out from {run_dir} "
                        f"({len(timelines)} read, {sum(t.session_id in seen for t in timelines)} trained on)")
    fdb_cfg = config_of(target)
    toks = load_codecs(target.dataset_uri)
    dmel, tok = toks.get_or_build("dmel"), toks.get_or_build("text").tokenizer
    text_absent = None if cfg.data.user_text else cfg.model.text_vocab
    pairs: list[RolePair] = []
    steps: list[float] = []
    for i, tl in enumerate(fresh):
        heard = dmel.decode(np.ascontiguousarray(tl.arrays["dmel.npy"]))  # both recorded sides, as audio
        for user in (0, 1):
            progress(f"[{i + 1}/{len(fresh)}] {tl.session_id}: the model as {tl.speakers[1 - user]}")
            session = RealtimeSession(model, temperature=temperature, seed=seed,
                                      max_context_chunks=cfg.data.window_chunks)  # fmt: skip
            track = replay(session, _user_track(tl, user), text_pad=tok.pad_id, text_absent=text_absent)
            side, _ = model_side(track, dmel, tok, heard[user])
            pairs.append(RolePair(tl.session_id, tl.side(user), side))
            steps += track.step_ms
    out = evaluate_pairs(pairs, human_reference(human_pairs(fresh), fdb_cfg), fdb_cfg)
    out["step_ms"] = step_summary(steps)
    out["run"] = str(run_dir)
    out["skipped_trained"] = sum(t.session_id in seen for t in timelines)
    return out


def _user_track(tl: SessionTimeline, stream: int) -> UserTrack:
    return UserTrack(tl.arrays["dmel.npy"][stream], tl.arrays["text.npy"][stream])
