"""One error base for everything microturn reports about data: a machine-readable ``code``, a
``message`` a person can act on, and ``where`` it happened (a source URI, a shard member, a file).

Three kinds share it:
- ``StageError``: a session (or one of its sources) cannot go on; it goes to quarantine with this reason;
- ``FormatError``: a sample, shard or dataset does not follow the format;
- ``TrainDataError``: the corpus cannot be trained on as configured (``SampleError``: one sample is
  skipped and counted).
Callers catch the kind they handle, or ``MicroturnError`` for all of them.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

Stage = Literal["manifest", "probe", "decode", "align", "tokenize", "chunk", "shard", "job", "train"]


def _rebuild(cls: type, state: dict[str, Any], text: str) -> "MicroturnError":
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.__dict__.update(state)
    return err


class MicroturnError(Exception):
    """``code``: short and machine-readable (``no_audio_stream``, ``bad_shape``); ``message``: words;
    ``where``: what it is about, "" when nothing more precise than the caller's context."""

    def __init__(self, code: str, message: str, *, where: str = "", text: Optional[str] = None):
        super().__init__(text if text is not None else f"{code}: {message}" + (f" ({where})" if where else ""))
        self.code = code
        self.message = message
        self.where = where

    @property
    def reason(self) -> str:
        """``code``, as stages and training call it."""
        return self.code

    @property
    def source(self) -> Optional[str]:
        """``where``, as stages and training call it (None when not known)."""
        return self.where or None

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Ray tasks, DataLoader workers): rebuild from the fields,
        # not from the formatted text that Exception.args holds.
        return (_rebuild, (type(self), dict(self.__dict__), str(self)))


class StageError(MicroturnError):
    """A session (or one of its sources) cannot go on; it goes to quarantine with this reason.

    ``reason`` (= ``code``) is e.g. ``no_audio_stream``, ``filtered:speech_ratio``, ``timeout``;
    ``source`` (= ``where``) the input URI it concerns, when one does."""

    def __init__(self, stage: Stage, reason: str, message: str, *, source: Optional[str] = None):
        text = f"[{stage}] {reason}: {message}" + (f" ({source})" if source else "")
        super().__init__(reason, message, where=source or "", text=text)
        self.stage = stage


class FormatError(MicroturnError, ValueError):
    """A sample, shard or dataset does not follow the format."""


class TrainDataError(MicroturnError, ValueError):
    """The corpus cannot be trained on as configured (``reason`` = ``code``)."""

    def __init__(self, reason: str, message: Optional[str] = None, *, source: Optional[str] = None):
        if message is None:
            # rebuilt from its text alone: torch's DataLoader re-raises a worker's error as ``type(text)``
            found = re.findall(r"\[train\] (\w+): ", reason)  # the last one raised (the others are context)
            super().__init__(found[-1] if found else "worker_error", reason, text=reason)
            return
        text = f"[train] {reason}: {message}" + (f" ({source})" if source else "")
        super().__init__(reason, message, where=source or "", text=text)


class SampleError(TrainDataError):
    """One sample (or the rest of one shard) cannot be read: it is skipped and counted, not fatal."""


__all__ = ["MicroturnError", "Stage", "StageError", "FormatError", "TrainDataError", "SampleError"]
