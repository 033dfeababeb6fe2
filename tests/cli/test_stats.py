"""`microturn stats`: corpus figures that agree with the index, and an HTML report with real plots."""

from __future__ import annotations

import base64
import json
import re

import pytest

pytestmark = pytest.mark.slow  # needs the built corpus


def test_stats_json_agrees_with_the_index(cli, corpus, index_rows):
    code, out, _ = cli("stats", corpus, "--json")
    assert code == 0
    s = json.loads(out)
    assert s["samples"] == len(index_rows)
    assert s["sessions"] == len({r["session_id"] for r in index_rows}) == 2
    assert s["speakers"] == sum({r["session_id"]: r["num_streams"] for r in index_rows}.values())
    assert s["hours"] == pytest.approx(sum(r["duration_s"] for r in index_rows) / 3600, abs=1e-6)
    assert 0 < s["speech_ratio"] <= 1 and 0 <= s["overlap_ratio"] < 1
    assert s["words"] >= sum(r["word_count"] for r in index_rows)  # clipped words appear in both windows
    # events counted once each, even when a window boundary cuts them
    for kind, col in (("backchannel", "backchannels"), ("interruption", "interruptions")):
        assert s["events"][kind] == sum(r[col] for r in index_rows)
    assert s["turns"]["count"] == s["events"]["turn"]
    assert len(s["tokens"]["audio_codebooks"]) == 8  # 6 kbps
    for cb in s["tokens"]["audio_codebooks"]:
        assert 0 < cb["entropy_bits"] <= 10 and 0 < cb["usage"] <= 1
    # the session bleed figures agree with the index's
    bleed = s["bleed"]
    assert bleed["sessions_measured"] == 2
    worst = max(r["session_overlap_ratio"] for r in index_rows)
    assert bleed["session_overlap_ratio"]["max"] == pytest.approx(worst, abs=1e-4)
    assert bleed["flagged_sessions"] == len(
        {r["session_id"] for r in index_rows if r["session_overlap_ratio"] > 0.2 or (r["activity_correlation"] or 0) > 0.3}
    )


def test_bleed_summary_flags_sessions_past_either_threshold():
    from microturn.report.stats import bleed_summary

    b = bleed_summary({"calm": (0.05, -0.2), "echo": (0.66, 0.81), "corr": (0.1, 0.45), "mono": (0.0, None)})
    assert b["flagged"] == ["corr", "echo"] and b["flagged_sessions"] == 2 and b["sessions_measured"] == 4
    assert b["session_overlap_ratio"]["max"] == 0.66 and b["activity_correlation"]["max"] == 0.81


def test_stats_table_and_html_report_with_embedded_pngs(cli, corpus, tmp_path):
    html = tmp_path / "report.html"
    code, out, _ = cli("stats", corpus, "--html", html)
    assert code == 0
    assert "hours" in out and "audio tokens per codebook" in out
    text = html.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 3
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
