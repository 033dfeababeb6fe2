"""One writer per corpus: a build holds an exclusive lock on its output folder while it runs.

Local folders (and shared file systems with working locks, e.g. NFSv4): ``flock`` on
``OUT/_work/build.lock``. The kernel drops the lock when the holder's process dies, however it dies,
so a lock can never go stale: a lock file left behind by a killed build is simply taken over. The file
holds the holder's pid, host and start time, for the message the second build prints.

Object stores (``s3://``): a conditional create of the lock object (``PUT`` with ``If-None-Match: *``,
through boto3), which the store grants to exactly one writer. The build releases it in a ``finally``;
``microturn build`` turns SIGTERM (what ``ray job stop`` sends) into ``SystemExit`` so that runs too
(``exit_on_sigterm``). Nothing releases it when the holder is killed outright (SIGKILL, a lost node), so
such a lock must be deleted by hand once you know that build is gone (the error message names the object
and its holder).

Limit: a store that ignores ``If-None-Match`` (older MinIO or Ceph) cannot enforce the lock. Before the
PUT we check that no lock object exists, and after it we read the lock back and refuse when another
writer's token is there. That refuses a second build whenever the first one's lock was already visible;
two builds that start within the same moment (both check, then both PUT) can still both proceed, and the
later PUT wins the object. Without boto3 the same checks are all we can do, and a warning says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Iterator, Optional

from microturn import storage

log = logging.getLogger("microturn.lock")

LOCK_NAME = "build.lock"


class OutputLocked(RuntimeError):
    """Another build holds the output's lock; the message names the lock and its holder."""


def lock_uri(out_uri: str) -> str:
    return storage.join(out_uri, "_work", LOCK_NAME)


def _holder_record(token: str) -> bytes:
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(doc, sort_keys=True).encode()


def _describe_holder(data: bytes) -> str:
    try:
        doc: Any = json.loads(data)
        return f"pid {doc['pid']} on {doc['host']} since {doc['started']}"
    except (ValueError, KeyError, TypeError):
        return "a build that has not written its details yet"


@contextlib.contextmanager
def output_lock(out_uri: str) -> Iterator[str]:
    """Hold the exclusive lock on ``out_uri`` for the duration of the block; yields the lock's URI.
    Raises ``OutputLocked`` at once (never waits) when another build holds it."""
    uri = lock_uri(out_uri)
    if storage.is_remote(uri):
        with _object_store_lock(uri):
            yield uri
    else:
        with _flock(uri):
            yield uri


@contextlib.contextmanager
def _flock(uri: str) -> Iterator[None]:
    import fcntl

    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0))
            raise OutputLocked(f"another build is writing this output: lock {path} is held by {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record(uuid.uuid4().hex), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock; the file stays as a record


@contextlib.contextmanager
def _object_store_lock(uri: str) -> Iterator[None]:
    token = uuid.uuid4().hex
    _create_exclusively(uri, _holder_record(token))
    try:
        if _token_of(storage.read_bytes(uri)) != token:  # a store that ignored If-None-Match
            raise OutputLocked(_held_message(uri))
        yield
    finally:
        with contextlib.suppress(OSError, FileNotFoundError):
            if _token_of(storage.read_bytes(uri)) == token:
                storage.remove(uri)


def _token_of(data: bytes) -> Optional[str]:
    try:
        return json.loads(data).get("token")
    except (ValueError, AttributeError):
        return None


def _held_message(uri: str) -> str:
    try:
        holder = _describe_holder(storage.read_bytes(uri))
    except (OSError, FileNotFoundError):
        holder = "another build"
    return (f"another build is writing this output: lock {uri} is held by {holder}. If that build is "
            f"no longer running (a killed driver leaves its lock on an object store), delete {uri} and retry")


def _create_exclusively(uri: str, body: bytes) -> None:
    """PUT ``body`` at ``uri`` only if nothing is there (S3 conditional write)."""
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError:
        log.warning("boto3 is not installed: the lock on %s is checked, not enforced by the store", uri)
        if storage.exists(uri):
            raise OutputLocked(_held_message(uri)) from None
        storage.write_bytes_atomic(uri, body)
        return
    # A store that ignores If-None-Match would let this PUT overwrite a holder's lock (and our read-back
    # would then see our own token): refuse on a lock that is already there.
    if storage.exists(uri):
        raise OutputLocked(_held_message(uri))
    bucket, _, key = uri.partition("://")[2].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise OutputLocked(_held_message(uri)) from None
        raise


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``ray job stop``, ``kill``) into ``SystemExit`` so that ``finally`` blocks run and an
    object-store lock is released. Only from the main thread (Python delivers signals there); the CLI's
    build command calls it, a library caller keeps its own signal handling."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
