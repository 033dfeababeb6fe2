"""``microturn converse``: one held-out sample as a conversation between its recorded user and a trained
model, written as something to listen to (KEY.wav: user left, model right) and to look at (KEY.png: both
activities, words and the turn-taking events of the pair on one time axis), plus the micro-turn timing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from microturn.clock import GRID
from microturn.evaluate.replay import ModelTrack, UserTrack, open_replayer, step_summary
from microturn.evaluate.timeline import Side
from microturn.report import UserError
from microturn.report.sample import SampleView

BUDGET_MS = 200.0  # one micro-turn: the model must produce 200 ms of output in at most 200 ms


@dataclass(frozen=True)
class ConverseResult:
    key: str
    wav: Path
    png: Path
    chunks: int
    step_ms: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "chunks": self.chunks, "step_ms": step_summary(self.step_ms), "budget_ms": BUDGET_MS,
                "wav": str(self.wav), "png": str(self.png)}  # fmt: skip


def converse(run_dir: str | Path, data: str, key: str, out_dir: str | Path, *, user_stream: int = 0,
             temperature: float = 1.0, seed: int = 0, threads: int = 1) -> ConverseResult:  # fmt: skip
    """Replay stream ``user_stream`` of sample ``key`` of corpus ``data`` into the run's model, which
    plays the other stream's role; write ``out_dir/KEY.wav`` and ``out_dir/KEY.png``."""
    from microturn.report.corpus import find_sample, open_target
    from microturn.report.render import write_wav

    target = open_target(data)
    r = open_replayer(run_dir, target.dataset_uri, temperature=temperature, seed=seed, threads=threads)
    view = find_sample(target, key)
    check_replayable(view, user_stream)
    if view.session_id in r.trained_on:
        raise UserError(f"session {view.session_id} (sample {key}) was in the run's training data: converse on a "
                        "held-out sample")  # fmt: skip
    user = UserTrack(view.dmel[user_stream, :, : view.valid_frames], view.text[user_stream, : view.valid_frames])
    user_wave = r.dmel.decode(np.ascontiguousarray(user.dmel_MF[None]))[0]
    track, side, model_wave = r.answer(user, user_wave)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wav, png = out / f"{view.key}.wav", out / f"{view.key}.png"
    write_wav(wav, np.stack([user_wave, model_wave]))
    _draw_pair(view, user_stream, track, side, png)
    return ConverseResult(view.key, wav, png, user.chunks, track.step_ms)


def check_replayable(view: SampleView, user_stream: int) -> None:
    """A sample the dMel model can converse on: dMel and text members, two streams, a valid user stream."""
    from microturn.errors import TrainDataError

    if view.dmel is None or view.text is None:
        raise TrainDataError("missing_member", "the sample holds no dmel.npy or text.npy (build with "
                                               "tokenizers.representations including dmel and text)", source=view.key)
    if view.num_streams != 2 or user_stream not in (0, 1):
        raise TrainDataError("not_a_dialogue", f"the sample has {view.num_streams} stream(s); converse replays one "
                                               "of two (user_stream 0 or 1)", source=view.key)  # fmt: skip


def _draw_pair(view: SampleView, user_stream: int, track: ModelTrack, side: Side, png: Path) -> None:
    """The pair as a two-stream sample (user, model) drawn by ``render``'s picture code: activities,
    words, the events our definitions find between the two, and both dMel streams."""
    from microturn.config import EventsConfig
    from microturn.pipeline.events import detect_events
    from microturn.report.render import draw_png

    F = view.valid_frames
    activity = np.stack([view.activity[user_stream, :F], side.activity.astype(np.uint8)[:F]])
    words = [dict(w, stream=0) for w in view.words if int(w.get("stream", -1)) == user_stream]
    words += [{"text": w.text, "stream": 1, "start_frame": _frame(w.start_s), "end_frame": _frame(w.end_s)}
              for w in side.words]  # fmt: skip
    events = [dataclasses.asdict(e) for e in detect_events(activity, EventsConfig())]
    speakers = [view.speakers[user_stream], "model"]
    meta = {**view.meta, "speakers": speakers, "num_frames": F, "valid_frames": F, "fingerprints": {}}
    arrays = {"activity.npy": activity, "dmel.npy": np.stack([view.dmel[user_stream, :, :F], track.dmel_MF[:, :F]]),
              "frame_chunks.npy": np.zeros(0, dtype=np.int32)}  # fmt: skip
    pair = dataclasses.replace(view, meta=meta, arrays=arrays, words=words, events=events)
    draw_png(pair, np.zeros((0, 1, 1, 3), dtype=np.uint8), png, [], ("dMel", ""))


def _frame(seconds: float) -> int:
    return GRID.seconds_to_frames(seconds, "nearest")
