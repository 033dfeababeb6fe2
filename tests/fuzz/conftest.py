"""The fuzz suite's terminal summary: cases per parser and wall time (see fuzzkit.py)."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.fuzz.fuzzkit import summary

    summary(terminalreporter)
