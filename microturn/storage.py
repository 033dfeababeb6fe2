"""Inputs and outputs by URI: local paths, ``file://`` and object stores (``s3://``) through fsspec.

Writes are atomic: data goes to a temporary name beside the target, is flushed (fsync on local
disks) and renamed, so nothing half-written is ever visible under a final name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator, Optional


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def filesystem(uri: str, **options):
    """(fsspec filesystem, path inside it) for a URI. ``s3://`` honours AWS_ENDPOINT_URL."""
    import fsspec

    if not is_remote(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    protocol, _, rest = uri.partition("://")
    if protocol == "s3":
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
    return fsspec.filesystem(protocol, **options), rest


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[IO[bytes]]:
    """Open a URI for binary reading."""
    if not is_remote(uri):
        with open(local_path(uri), "rb") as fh:
            yield fh
        return
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as fh:
        yield fh


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = filesystem(uri)
    return fs.exists(path)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(local_path(base).joinpath(*parts))


def makedirs(uri: str) -> None:
    if not is_remote(uri):
        local_path(uri).mkdir(parents=True, exist_ok=True)
    # object stores have no folders


def read_bytes(uri: str) -> bytes:
    with open_input(uri) as fh:
        return fh.read()


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under a folder URI; empty when it does not exist."""
    if not is_remote(uri):
        p = local_path(uri)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    fs, path = filesystem(uri)
    try:
        return sorted(Path(x).name for x in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def remove(uri: str) -> None:
    if not is_remote(uri):
        with contextlib.suppress(FileNotFoundError):
            local_path(uri).unlink()
        return
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Write to a temporary name, then commit under ``uri`` only if the block succeeds.

    Local: tmp file in the same folder, fsync, ``os.replace``, fsync of the folder. Object stores: the
    upload itself is atomic (a multipart upload is invisible until it completes).
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "wb") as fh:
            yield fh
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    with atomic_writer(uri) as fh:
        fh.write(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cleanup_temporaries(folder: str, older_than_s: Optional[float] = None) -> int:
    """Remove leftover ``.NAME.tmp-*`` files from a crashed run (local folders only)."""
    if is_remote(folder):
        return 0
    p = local_path(folder)
    if not p.is_dir():
        return 0
    n = 0
    for tmp in p.glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    return n
