"""The human baseline (microturn/evaluate/baseline.py) and `microturn eval`: the norms check on crafted
figures, and, on a synthetic corpus built by the real pipeline (energy VAD, dMel only: about 20 s on 2
cores, hence slow), agreement with the generator's own truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from microturn.clock import GRID
from microturn.evaluate.baseline import config_of, human_baseline, human_pairs, session_norms
from microturn.evaluate.fdb import METRICS, PairFigures, evaluate_pairs
from microturn.evaluate.timeline import RolePair, SessionTimeline, Side, TimedWord, read_timelines
from microturn.report.corpus import open_target

BUILD_OVERRIDES = ["align.vad=energy", "tokenizers.representations=[dmel]", "chunk.window_chunks=50",
                   "chunk.hop_chunks=50", "job.num_cpus=2", "job.session_timeout_base_s=600"]


def figures(ftos: tuple[float, ...], backchannels: int, minutes: float = 1.0) -> PairFigures:
    return PairFigures((), (), (), (), (), backchannels, minutes, ftos)


def test_sessions_outside_the_human_band_are_listed_with_their_figures() -> None:
    rows = session_norms([
        ("ok", figures((0.1, 0.2), 6)), ("ok", figures((0.1,), 6)),  # both roles: 12 per minute
        ("late", figures((0.5, 0.6), 5)), ("late", figures((0.7,), 5)),
        ("chatty", figures((0.1,), 20)), ("chatty", figures((0.1,), 20)),
    ])
    assert rows == [{"session": "chatty", "backchannels_per_min": 40.0},
                    {"session": "late", "floor_transfer_offset_s": 0.6}]


@pytest.fixture(scope="module")
def synth_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("eval_corpus")
    synthesize_corpus(root / "media", sessions=2, seed=3, duration_s=30.0, video=False)
    summary = run_build(str(root / "media" / "sessions.jsonl"), str(root / "corpus"),
                        load_config(None, BUILD_OVERRIDES), progress=False)
    assert summary.samples == 6, summary
    return root / "corpus", root / "media"


def truth_pairs(timelines: list[SessionTimeline], media: Path) -> list[RolePair]:
    """The same role pairs drawn from the generator's truth: its segments on the frame grid, its words."""
    from microturn.synth import load_truth

    out = []
    for tl in timelines:
        truth = load_truth(media / tl.session_id / "truth.json")
        frames = tl.activity.shape[1]
        sides = [Side(truth.activity(s, float(GRID.frame_rate), frames),
                      tuple(TimedWord(w.word, w.start_s, w.end_s) for w in truth.words if w.speaker == s), s)
                 for s in tl.speakers]
        out += [RolePair(tl.session_id, sides[1 - m], sides[m]) for m in (0, 1)]
    return out


@pytest.mark.slow
def test_the_baselines_response_latency_matches_the_truths_within_50_ms(synth_built) -> None:
    corpus, media = synth_built
    target = open_target(str(corpus))
    cfg = config_of(target)
    timelines = read_timelines(target)
    built = evaluate_pairs(human_pairs(timelines), None, cfg)
    truth = evaluate_pairs(truth_pairs(timelines, media), None, cfg)
    assert built["cases"]["response_latency_s"] >= 10
    for stat in ("median", "mean"):
        assert built["response_latency_s"][stat] == pytest.approx(truth["response_latency_s"][stat], abs=0.05)
    assert human_baseline(target)["response_latency_s"] == built["response_latency_s"]


@pytest.mark.slow
def test_eval_prints_every_metric_as_json_and_as_a_table(synth_built) -> None:
    from microturn.cli import app

    corpus, _ = synth_built
    result = CliRunner().invoke(app, ["eval", str(corpus), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(METRICS) <= set(out) and set(out["cases"]) == set(METRICS)
    assert out["sessions"] == 2 and {"band", "outside"} <= set(out["norms"])
    assert 0.0 <= out["tor_smooth"] <= 1.0 and 0.0 <= out["backchannel_jsd"] <= 1.0
    table = CliRunner().invoke(app, ["eval", str(corpus), "--max-samples", "3"])
    assert table.exit_code == 0 and all(m in table.output for m in METRICS)


def test_eval_of_a_missing_corpus_is_a_usage_error(tmp_path: Path) -> None:
    from microturn.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_a_one_speaker_session_gives_no_pairs() -> None:
    tl = SessionTimeline("mono", ("a",), 0, np.ones((1, 10), np.uint8), ((),))
    assert human_pairs([tl]) == []
