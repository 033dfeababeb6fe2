"""Session time budgets scale with the probed media length (issue 17)."""

import numpy as np

from tests.jobs.util import REPO
from tests.media_helpers import write_wav


def test_budget_is_base_plus_per_media_minute_of_the_probed_length(tmp_path):
    from microturn.config import load_config
    from microturn.jobs.budget import session_budget
    from microturn.manifest import SessionSpec

    wav = write_wav(tmp_path / "a.wav", np.zeros(16000 * 90, dtype=np.float32), 16000)  # 1.5 min
    cfg = load_config(None, ["job.session_timeout_base_s=100", "job.session_timeout_per_media_min_s=10"])
    budget = session_budget(SessionSpec.model_validate({"session_id": "s", "audio": [{"uri": str(wav)}]}), cfg)
    assert budget.media_s == 90.0 and budget.seconds == 100 + 10 * 1.5
    msg = budget.timeout_message()
    assert "budget of 115 s" in msg and "--set job.session_timeout_per_media_min_s=" in msg and "1.5 media min" in msg


def test_a_session_of_unknown_length_gets_the_budget_of_the_longest_accepted_session(tmp_path):
    from microturn.config import load_config
    from microturn.jobs.budget import session_budget
    from microturn.manifest import SessionSpec

    cfg = load_config()
    spec = SessionSpec.model_validate({"session_id": "s", "audio": [{"uri": str(tmp_path / "missing.wav")}]})
    budget = session_budget(spec, cfg)
    assert budget.media_s is None
    assert budget.seconds == cfg.job.session_timeout_base_s + cfg.job.session_timeout_per_media_min_s * cfg.decode.max_duration_s / 60
    assert "unknown length" in budget.timeout_message()


def test_shipped_configs_give_long_sessions_room_on_one_slow_cpu():
    """The pipeline runs at about 5x realtime per CPU; the shipped budgets allow 1x realtime plus a
    base, so a 4-hour session fits with a 4x margin on a CPU four times slower than ours."""
    from microturn.config import load_config
    from microturn.jobs.budget import budget_for

    for name in ("default", "demo"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        for hours in (1, 3, 4):
            media_s = hours * 3600.0
            assert budget_for(media_s, cfg).seconds >= media_s, (name, hours)
        assert budget_for(30.0, cfg).seconds >= 600  # short sessions keep a base for model loading


def test_the_old_constant_timeout_key_says_what_replaced_it():
    import pytest

    from microturn.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="session_timeout_base_s"):
        load_config(None, ["job.session_timeout_s=600"])


def test_a_header_claiming_a_huge_length_is_budgeted_as_the_longest_accepted_session():
    """A header can claim 1000 hours; the budget never exceeds that of the longest session decode
    accepts (decode.max_duration_s + duration_tolerance_s), which decode then rejects as too_long."""
    from microturn.config import load_config
    from microturn.jobs.budget import budget_for

    cfg = load_config()
    cap = cfg.decode.max_duration_s + cfg.decode.duration_tolerance_s
    huge = budget_for(1000 * 3600.0, cfg)
    assert huge.media_s == cap
    assert huge.seconds == budget_for(cap, cfg).seconds
    assert budget_for(60.0, cfg).media_s == 60.0


def test_the_drivers_probe_reads_headers_only(tmp_path, monkeypatch):
    """The driver must not demux the file (a stream without data would be read to the end of the file
    while the scheduler waits): the budget comes from the headers, without the probe's emptiness checks."""
    from microturn.config import load_config
    from microturn.jobs.budget import session_budget
    from microturn.manifest import SessionSpec
    from microturn.pipeline import probe

    def no_demux(*_a, **_k):
        raise AssertionError("the driver's probe demuxed the file")

    monkeypatch.setattr(probe, "_declared_empty", no_demux)
    monkeypatch.setattr(probe, "_empty_without_seeking", no_demux)
    monkeypatch.setattr(probe, "_first_frame_decodes", no_demux)
    wav = write_wav(tmp_path / "a.wav", np.zeros(16000 * 90, dtype=np.float32), 16000)
    budget = session_budget(SessionSpec.model_validate({"session_id": "s", "audio": [{"uri": str(wav)}]}), load_config())
    assert budget.media_s == 90.0


def test_any_exception_of_the_drivers_probe_means_unknown_length(tmp_path, monkeypatch):
    from microturn.config import load_config
    from microturn.jobs.budget import session_budget
    from microturn.manifest import SessionSpec
    from microturn.pipeline import probe

    def crash(uri):
        raise MemoryError("a crafted header")

    monkeypatch.setattr(probe, "header_duration_s", crash)
    wav = write_wav(tmp_path / "a.wav", np.zeros(16000 * 9, dtype=np.float32), 16000)
    cfg = load_config()
    budget = session_budget(SessionSpec.model_validate({"session_id": "s", "audio": [{"uri": str(wav)}]}), cfg)
    assert budget.media_s is None
