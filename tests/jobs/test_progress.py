"""Build progress: long sessions are visible work in the log, not a silent gap (issue 17)."""


def test_long_running_sessions_are_listed_with_elapsed_time_and_budget(capsys, monkeypatch):
    from microturn.jobs import progress
    from microturn.jobs.progress import Progress, Running

    monkeypatch.setattr(progress, "TICK_S", 0.0)
    bar = Progress(total=3, enabled=True)
    bar.tick([Running("short", 5.0, 700.0, 60.0), Running("call-1", 125.0, 4200.0, 3600.0),
              Running("podcast", 3725.0, 11400.0, 10800.0)])
    line = capsys.readouterr().err.strip()
    assert line.startswith("[microturn] 0/3 sessions done; running: podcast 1:02:05 of 3:10:00 budget (180.0 min media)")
    assert "call-1 0:02:05 of 1:10:00 budget (60.0 min media)" in line and "short" not in line
    bar.tick([Running("short", 5.0, 700.0, 60.0)])
    assert capsys.readouterr().err == "", "nothing to say when no session is long"
