"""Tokenizer actors gather concurrent sessions into one call of their models, and sessions go to the
least loaded actor; neither changes a session's tokens."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from microturn.config import AudioCodecConfig, TokenizerConfig
from microturn.jobs.tokenizer_pool import TokenizerActor, actor_for
from microturn.pipeline.tokenize import tokenize_session
from microturn.records import StageError, TokenizeInput, Word
from microturn.tokenizers.calibration import speech_like

CFG = TokenizerConfig(representations=["audio", "text"], audio=AudioCodecConfig(window_s=1.0, context_s=0.4, batch_windows=4))


def _session(seconds: float, seed: int, *, broken: bool = False) -> TokenizeInput:
    a, b = speech_like(seconds, seed), speech_like(seconds, seed + 1)
    n = a.shape[0]
    waves = np.zeros((2, -(-n // 4800) * 4800), np.float32)
    waves[0, :n], waves[1, :n] = a, b
    if broken:
        waves[1, 100] = np.nan
    words = (Word("hi", 2400, 9600, 0),)
    return TokenizeInput(n, waves, np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int32), words)


@pytest.fixture(scope="module")
def actor() -> TokenizerActor:
    return TokenizerActor(CFG.model_dump_json(), torch_threads=1, batch_sessions=4)


def _gathered(actor: TokenizerActor, inputs: list[TokenizeInput]) -> list[object]:
    """Tokenize ``inputs`` from one thread each while the actor is busy, so that they queue up and are
    then taken together."""
    results: list[object] = [None] * len(inputs)

    def run(i: int) -> None:
        try:
            results[i] = actor.tokenize(inputs[i])
        except StageError as exc:
            results[i] = exc

    with actor._cv:
        actor._busy = True  # as if another session were inside the models
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    while actor.load() < len(inputs):
        time.sleep(0.01)
    with actor._cv:
        actor._busy = False
        actor._cv.notify_all()
    for t in threads:
        t.join(timeout=120)
    return results


def test_concurrent_sessions_share_one_call_and_get_the_tokens_they_get_alone(actor: TokenizerActor) -> None:
    inputs = [_session(2.3, 1), _session(0.6, 5), _session(4.1, 9)]
    before = len(actor.batching())
    results = _gathered(actor, inputs)
    assert actor.batching()[before:] == [3]  # one call of the models for the three
    for inp, got in zip(inputs, results):
        alone = tokenize_session(inp, actor._local.toks)
        assert sorted(got.arrays) == sorted(alone.arrays)
        assert all(got.arrays[m].tobytes() == alone.arrays[m].tobytes() for m in alone.arrays)
        assert got.num_frames == alone.num_frames and got.reports == alone.reports


def test_a_broken_session_fails_alone_and_its_batch_mates_still_get_tokens(actor: TokenizerActor) -> None:
    inputs = [_session(1.0, 2), _session(1.0, 3, broken=True), _session(1.5, 4)]
    before = len(actor.batching())
    results = _gathered(actor, inputs)
    assert isinstance(results[1], StageError) and results[1].reason == "non_finite_audio"
    assert actor.batching()[before:] == [1, 1]  # the joint call failed: one call per session, the bad one refused
    for i in (0, 2):
        alone = tokenize_session(inputs[i], actor._local.toks)
        assert results[i].arrays["codes.npy"].tobytes() == alone.arrays["codes.npy"].tobytes()
    assert actor.load() == 0


def test_a_session_goes_to_the_least_loaded_actor_and_ties_go_by_its_id() -> None:
    pool = ["a", "b", "c"]
    by_id = actor_for(pool, "session-7")
    assert actor_for(pool, "session-7", [0, 0, 0]) == by_id  # idle pool: reproducible routing
    assert actor_for(pool, "session-7", [3, 0, 5]) == "b"
    busy = [0 if a == by_id else 2 for a in pool]
    assert actor_for(pool, "session-7", busy) == by_id
    assert actor_for(pool, "session-7", None) == by_id


def test_a_pool_of_ray_actors_reports_its_loads_and_tokenizes_like_the_session_would() -> None:
    import ray

    from microturn.config import load_config
    from microturn.jobs.tokenizer_pool import PooledTokenizer, pool_loads, start_pool

    cfg = load_config(None, ["tokenizers.representations=[text]", "job.tokenizer_actors=2"])
    ray.init(address="local", num_cpus=3, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             configure_logging=False, log_to_driver=False)
    try:
        pool = start_pool(cfg, 0.0)
        assert len(pool) == 2 and pool_loads(pool) == [0, 0]
        inp = _session(1.2, 3)
        tokens = PooledTokenizer(pool, "s-1").tokenize(inp)
        alone = tokenize_session(inp, TokenizerActor(cfg.tokenizers.model_dump_json())._local.toks)
        assert tokens.arrays["text.npy"].tobytes() == alone.arrays["text.npy"].tobytes()
        assert ray.get([a.batching.remote() for a in pool]) in ([[1], []], [[], [1]])
    finally:
        ray.shutdown()
