"""Fault doubles the build tests inject into session tasks (``run_build(session_hooks=...)``).

They run inside Ray workers: Ray pickles them with the task, by value (registered below), so the
workers need not import this test module."""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray.cloudpickle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class CrashOnce:
    """Kill the worker process (as an OOM kill or a lost node would) the first time ``session_id``
    starts; ``marker`` records that it happened."""

    session_id: str
    marker: str

    def __call__(self, session_id: str) -> None:
        if session_id == self.session_id and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(137)


@dataclass(frozen=True)
class Hang:
    """``session_id`` never finishes: it sleeps (``marker`` records that it started hanging)."""

    session_id: str
    marker: str
    seconds: float = 3600.0

    def __call__(self, session_id: str) -> None:
        if session_id == self.session_id:
            Path(self.marker).write_text(str(time.time()))
            time.sleep(self.seconds)


@dataclass(frozen=True)
class WaitForFile:
    """Every session waits until ``release`` exists (bounded by ``max_s``), so the build is sure to be
    running, and to hold its lock, until the test lets it go."""

    release: str
    max_s: float = 600.0

    def __call__(self, session_id: str) -> None:
        deadline = time.monotonic() + self.max_s
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.1)


class HangingTokenizer:
    """A tokenizer actor double whose ``tokenize`` never returns; ``info`` names its process."""

    def info(self) -> dict:
        return {"describe": {}, "members": [], "pid": os.getpid()}

    def tokenize(self, inp: object) -> None:
        time.sleep(3600)
