"""Inputs and outputs by URI: local paths, ``file://`` and object stores (``s3://``) through pyarrow.fs.

Writes are atomic: data goes to a temporary name beside the target, is flushed (fsync on local
disks) and renamed, so nothing half-written is ever visible under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI.

    ``s3://bucket/key`` uses pyarrow's S3 client; ``AWS_ENDPOINT_URL`` points it at any S3-compatible
    server (MinIO, moto, Ceph), ``AWS_DEFAULT_REGION`` sets the region; credentials come from the usual
    AWS variables.
    """
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(local_path(uri))
    protocol, _, rest = uri.partition("://")
    if protocol == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        options = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**options), rest
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[IO[bytes]]:
    """Open a URI for binary reading (seekable: PyAV and pyarrow can read from it directly)."""
    if not is_remote(uri):
        with open(local_path(uri), "rb") as fh:
            yield fh
        return
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as fh:
        yield fh


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@dataclass(frozen=True)
class Stat:
    """What ``stat`` tells about a URI: its size in bytes (files only) and whether it is a folder."""

    size: Optional[int]
    is_dir: bool


def stat(uri: str) -> Optional[Stat]:
    """Size and kind of a URI, or None when nothing is there.

    The one place that asks a filesystem about a path: pyarrow filesystems answer with
    ``get_file_info`` (they have no ``size``/``isdir``/``exists`` methods, unlike fsspec's)."""
    if not is_remote(uri):
        try:
            st = local_path(uri).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        is_dir = os.path.isdir(local_path(uri))
        return Stat(None if is_dir else st.st_size, is_dir)
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    is_dir = info.type == pafs.FileType.Directory
    return Stat(None if is_dir else info.size, is_dir)


def size(uri: str) -> Optional[int]:
    """Size in bytes of the file at ``uri``; None when there is none (or it is a folder)."""
    st = stat(uri)
    return st.size if st is not None else None


def is_dir(uri: str) -> bool:
    st = stat(uri)
    return st is not None and st.is_dir


def file_sha256_and_size(uri: str, on_bytes: Optional[Callable[[int], None]] = None,
                         block_bytes: int = 1 << 22) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of the file at ``uri``, in one read of 4 MiB blocks;
    ``on_bytes`` hears the size of every block (progress bars). Raises FileNotFoundError."""
    h, size = hashlib.sha256(), 0
    with open_input(uri) as fh:
        while block := fh.read(block_bytes):
            h.update(block)
            size += len(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest(), size


def file_sha256(uri: str) -> str:
    """sha256 hex digest of the file at ``uri``."""
    return file_sha256_and_size(uri)[0]


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


def read_parquet(source: Any, columns: Optional[list[str]] = None) -> Any:
    """A Parquet file (a path, or a binary file object) as a pyarrow Table, read on this thread.

    Why not Arrow's thread pool: with it, pyarrow 26 aborts the process at exit now and then
    ("terminate called without an active exception": a pool thread outlives the interpreter's
    teardown), after all the work is done: `microturn validate` exited 134 in 2 of 25 runs, a bare
    threaded read in 27 of 30. Our tables (index, quarantine, manifest) are small: threads gain nothing."""
    import pyarrow.parquet as pq

    return pq.read_table(source, columns=columns, use_threads=False)


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under a folder URI; empty when it does not exist."""
    if not is_remote(uri):
        p = local_path(uri)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def remove(uri: str) -> None:
    if not is_remote(uri):
        with contextlib.suppress(FileNotFoundError):
            local_path(uri).unlink()
        return
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def fetch_local(uri: str, cache_dir: Path) -> Path:
    """A local path for a URI: itself when local, else a copy downloaded into ``cache_dir``."""
    if not is_remote(uri):
        return local_path(uri)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (uuid.uuid5(uuid.NAMESPACE_URL, uri).hex[:16] + "-" + Path(uri).name)
    if not target.exists():
        with atomic_writer(str(target)) as out, open_input(uri) as src:
            while block := src.read(1 << 22):
                out.write(block)
    return target


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Write to a temporary name, then commit under ``uri`` only if the block succeeds.

    Local: tmp file in the same folder, fsync, ``os.replace``, fsync of the folder. Object stores: the
    bytes are staged in a local temp file, uploaded after the block succeeded to a temporary key beside
    the target, and published by a server-side copy only once the upload is complete. (An S3 stream that
    fails half way still *completes* what it sent when it is closed, so uploading straight to the final
    key could leave a truncated object there.) Limits: S3's single-request copy stops at 5 GB per object;
    a killed process can leave a temporary key behind, which ``cleanup_temporaries`` removes.
    """
    if is_remote(uri):
        with _staged_upload(uri) as staged:
            yield staged
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / _temporary_name(target.name)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # only a failed write leaves the temporary file
        raise
    _fsync_dir(target.parent)


def _temporary_name(name: str) -> str:
    """``.NAME.tmp-<random>``: hidden, never matches a final name, found again by ``cleanup_temporaries``."""
    return f".{name}.tmp-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def _staged_upload(uri: str) -> Iterator[IO[bytes]]:
    """Stage locally, upload to a temporary key, then move it onto ``uri`` (see ``atomic_writer``)."""
    import tempfile

    fs, path = filesystem(uri)
    parent, _, name = path.rpartition("/")
    tmp_path = f"{parent}/{_temporary_name(name)}"
    with tempfile.TemporaryFile() as staged:
        yield staged
        staged.flush()
        staged.seek(0)
        try:
            _upload(staged, fs, tmp_path)
            fs.move(tmp_path, path)  # S3: CopyObject (atomic, all or nothing) + delete of the temporary key
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_file(tmp_path)


def _upload(src: IO[bytes], fs, path: str, block_bytes: int = 1 << 22) -> None:
    with fs.open_output_stream(path) as out:
        while block := src.read(block_bytes):
            out.write(block)


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
    """Remove leftover ``.NAME.tmp-*`` files (or object-store keys) from a crashed run.

    Only safe while no other writer uses the folder: the build calls it under its output lock."""
    if is_remote(folder):
        stale = [n for n in listdir(folder) if n.startswith(".") and ".tmp-" in n]
        for name in stale:
            remove(join(folder, name))
        return len(stale)
    p = local_path(folder)
    if not p.is_dir():
        return 0
    n = 0
    for tmp in p.glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    return n
