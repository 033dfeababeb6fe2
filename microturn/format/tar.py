"""The tar layer of the format: our reader (fast, bounded, never trusts a header) and the
deterministic writer the shard stage uses.

Writer: members in the table's fixed order, every header with mtime 0, uid/gid 0, empty user/group
names, mode 0o644, GNU format (long keys use GNU long-name records), and the archive padded to
tarfile's record size like any tar, so equal samples give equal bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import tarfile
from typing import IO, Any, Collection, Iterator, Mapping, Optional

import numpy as np

from microturn.errors import FormatError
from microturn.storage import is_remote, local_path, open_input

# ---------------------------------------------------------------- writing

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads archives to this, so do we


def tar_header(name: str, size: int) -> bytes:
    """A deterministic header for a regular file member."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


class TarStream:
    """Append tar members to a binary file handle, hashing and counting the bytes as they go; a
    sample's members go in the order given (``encode_sample`` returns them in the member table's
    order, so tar bytes are reproducible)."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.samples = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.sha256.update(data)
        self.bytes += len(data)

    def add(self, name: str, data: bytes) -> None:
        self._write(tar_header(name, len(data)))
        self._write(data)
        if len(data) % BLOCK:
            self._write(b"\0" * (BLOCK - len(data) % BLOCK))

    def add_sample(self, key: str, members: Mapping[str, bytes]) -> None:
        for suffix, data in members.items():
            self.add(f"{key}.{suffix}", data)
        self.samples += 1

    def finish(self) -> None:
        """End-of-archive (two zero blocks), padded to a whole record."""
        end = self.bytes + 2 * BLOCK
        self._write(b"\0" * (2 * BLOCK + (-end) % RECORD))


# ---------------------------------------------------------------- reading


_TAR_READ_BYTES = 1 << 22  # bytes per read: large sequential reads, few refills
_TAR_FILE_TYPES = frozenset((ord("0"), 0, ord("7")))  # regular file (ustar, v7), contiguous file
_TAR_SKIP_TYPES = frozenset(map(ord, "123456gK"))  # links, devices, folders, fifos, global pax, long link
_TAR_CHKSUM_SPAN = np.arange(BLOCK)
_TAR_CHKSUM_FIELD = np.arange(148, 156)
# A member larger than this is a damaged header, not a sample (ours are megabytes): refused before
# any read, so a crafted size field never makes the reader buffer gigabytes.
TAR_MAX_MEMBER_BYTES = 1 << 32


def _tar_number(field: bytes, where: str) -> int:
    """A numeric header field: octal ASCII (NUL/space padded), or GNU base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big") - (1 << (8 * len(field) - 8) if field[0] == 0xFF else 0)
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise FormatError("bad_tar", f"unreadable tar: bad number field {field!r}", where=where) from None


def _octal_fields(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of octal header fields, one per row of ``fields`` (uint8 [n, w]), and which rows follow
    the usual shape (digits, then only NUL/space); the others are left to ``_tar_number``."""
    digit = (fields >= 48) & (fields <= 55)
    run = np.cumprod(digit, axis=1, dtype=np.uint8).astype(bool)  # the leading run of digits
    usual = run[:, 0] & ~(digit & ~run).any(axis=1)
    length = run.sum(axis=1)
    power = np.clip(length[:, None] - 1 - np.arange(fields.shape[1]), 0, None)
    values = ((fields.astype(np.int64) - 48) * run * (8 ** power)).sum(axis=1)
    return values, usual


def _check_tar_checksums(buf: Any, offsets: list[int], where: str) -> None:
    """Verify many headers' checksums at once (per-header Python work costs more than the rest of the
    parse). The checksum is the byte sum of the header with its own field read as spaces."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    starts = np.asarray(offsets)[:, None]
    field = arr[starts + _TAR_CHKSUM_FIELD]
    stored, usual = _octal_fields(field)
    unsigned = arr[starts + _TAR_CHKSUM_SPAN].sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    for i in np.nonzero(~usual | (unsigned != stored))[0]:
        want = _tar_number(bytes(field[i]), where)
        if want == unsigned[i]:
            continue
        # old writers summed signed bytes; tarfile accepts both, so do we
        head = arr[offsets[i] : offsets[i] + BLOCK].view(np.int8).astype(np.int64)
        if int(head.sum() - head[148:156].sum() + 8 * 32) != want:
            raise FormatError("bad_tar", f"unreadable tar: bad header checksum at byte {offsets[i]}", where=where)


def _pax_path(data: bytes, where: str) -> Optional[str]:
    """The ``path`` record of a pax extended header ("<len> path=<name>\n" records), if any."""
    pos, path = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise FormatError("bad_tar", "unreadable tar: bad pax header", where=where) from None
        if length <= 0:
            raise FormatError("bad_tar", "unreadable tar: bad pax header", where=where)
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def _header_name(buf: Any, pos: int) -> bytes:
    name = buf[pos : pos + 100].split(b"\0", 1)[0]
    # POSIX ustar splits long names into prefix + name (GNU tars use those bytes for other fields)
    if buf[pos + 345] and buf[pos + 257 : pos + 263] == b"ustar\0":
        name = buf[pos + 345 : pos + 500].split(b"\0", 1)[0] + b"/" + name
    return name


def _read_up_to(fileobj: IO[bytes], n: int) -> bytes:
    """At most ``n`` bytes, read in bounded pieces: a member that claims more bytes than the file
    holds costs what the file holds, never an ``n``-byte buffer allocated up front."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = fileobj.read(min(n - got, _TAR_READ_BYTES))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _scan_tar(source: IO[bytes] | bytes | mmap.mmap, where: str) -> Iterator[tuple[memoryview, list]]:
    """The archive's regular-file members, one batch per buffer: ``(view, [(name bytes, start, size)])``
    where ``view[start:start + size]`` is the member's data (see ``iter_tar_members``)."""
    whole = isinstance(source, (bytes, mmap.mmap))
    buf: Any = source if whole else b""  # bytes-like: slices are bytes, items are ints
    fileobj: Optional[IO[bytes]] = None if whole else source  # type: ignore[assignment]
    pos, end, at_eof = 0, len(buf), whole
    long_name: Optional[bytes] = None
    while True:
        found: list[tuple[bytes, int, int]] = []
        offsets: list[int] = []
        finished = False
        need = BLOCK
        while end - pos >= BLOCK:
            try:  # the common case: 11 octal digits (+ NUL), as tarfile and every POSIX writer emit
                size = int(buf[pos + 124 : pos + 135], 8)
            except ValueError:
                if buf[pos : pos + BLOCK].count(0) == BLOCK:
                    finished = True  # end-of-archive: the rest is padding
                    break
                size = _tar_number(buf[pos + 124 : pos + 136], where)
            if not 0 <= size <= TAR_MAX_MEMBER_BYTES:
                raise FormatError("bad_tar", f"unreadable tar: member size {size} at byte {pos} is negative or "
                                             f"beyond {TAR_MAX_MEMBER_BYTES}", where=where)
            padded = size + (-size) % BLOCK
            if end - pos < BLOCK + padded:
                need = BLOCK + padded
                break
            offsets.append(pos)
            kind = buf[pos + 156]
            data_at = pos + BLOCK
            if kind in _TAR_FILE_TYPES:
                found.append((long_name or _header_name(buf, pos), data_at, size))
                long_name = None
            elif kind == 76:  # "L": GNU long name of the next member
                long_name = buf[data_at : data_at + size].split(b"\0", 1)[0]
            elif kind == 120:  # "x": pax extended header of the next member
                path = _pax_path(buf[data_at : data_at + size], where)
                long_name = path.encode("utf-8", "surrogateescape") if path is not None else long_name
            elif kind in _TAR_SKIP_TYPES:
                long_name = None
            else:
                raise FormatError("bad_tar", f"unreadable tar: unsupported member type {chr(kind)!r}", where=where)
            pos = data_at + padded
        if offsets:
            _check_tar_checksums(buf, offsets, where)
        if found:
            yield memoryview(buf).toreadonly(), found
        if finished:
            return
        if at_eof:
            if end == 0:
                raise FormatError("bad_tar", "unreadable tar: empty file", where=where)
            raise FormatError("bad_tar", "unreadable tar: truncated (a member or the end-of-archive blocks "
                                         "are missing)", where=where)
        # read on into a new buffer (views handed out keep the old one alive), the unparsed tail first
        assert fileobj is not None  # a whole archive is at_eof from the start
        try:
            more = _read_up_to(fileobj, max(_TAR_READ_BYTES, need - (end - pos)))
        except OSError as exc:
            raise FormatError("bad_tar", f"unreadable tar: {exc}", where=where) from None
        at_eof = not more
        buf = bytes(buf[pos:end]) + bytes(more) if pos < end else bytes(more)
        pos, end = 0, len(buf)


def iter_tar_members(
    source: IO[bytes] | bytes | mmap.mmap, *, where: str = ""
) -> Iterator[tuple[str, memoryview]]:
    """The regular-file members of a tar archive in file order, as ``(name, data)``.

    ``source`` is a binary stream, or the whole archive in memory (bytes or an mmap). ``data`` is a
    read-only view of the archive's bytes (no copy per member). A stream is read in large sequential
    reads. Headers are parsed by slicing (ustar, GNU long names, pax paths) and their checksums
    verified in bulk, once per buffer. A damaged header, a member cut short, or an archive that ends
    without the end-of-archive blocks raises ``FormatError("bad_tar")``.
    """
    for view, found in _scan_tar(source, where):
        for name, start, size in found:
            yield name.decode("utf-8", "surrogateescape"), view[start : start + size]


def iter_tar_views(
    source: IO[bytes] | bytes | mmap.mmap, *, where: str = "", suffixes: Optional[Collection[str]] = None
) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """``iter_tar`` without copies: member data are read-only views. With ``suffixes``, only those
    members are kept (the others are skipped unread, and not checked for duplicates or contiguity)."""
    wanted = None if suffixes is None else {s.encode() for s in suffixes}
    seen: set[bytes] = set()
    key: Optional[bytes] = None
    members: dict[str, memoryview] = {}
    for view, found in _scan_tar(source, where):
        for name, start, size in found:
            # WebDataset's rule: the key is the name up to the first dot of its basename
            slash = name.rfind(b"/") + 1
            dot = name.find(b".", slash)
            k, suffix = (name, b"") if dot < 0 else (name[:dot], name[dot + 1 :])
            if wanted is not None and suffix not in wanted:
                continue
            if k != key:
                if key is not None:
                    yield key.decode("utf-8", "surrogateescape"), members
                if k in seen:
                    raise FormatError("split_sample", f"members of {k.decode(errors='replace')} are not contiguous",
                                      where=where)  # fmt: skip
                seen.add(k)
                key, members = k, {}
            text = suffix.decode("utf-8", "surrogateescape")
            if text in members:
                raise FormatError("duplicate_member", f"{k.decode(errors='replace')}.{text} appears twice",
                                  where=where)  # fmt: skip
            members[text] = view[start : start + size]
    if key is not None:
        yield key.decode("utf-8", "surrogateescape"), members


def iter_tar(fileobj: IO[bytes], *, where: str = "") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar stream's members into samples ``(key, {suffix: bytes})`` in file order.

    A damaged or truncated tar raises ``FormatError("bad_tar")``; a sample whose members are not
    contiguous raises ``FormatError("split_sample")`` (a shard must never scatter a sample).
    """
    for key, views in iter_tar_views(fileobj, where=where):
        yield key, {suffix: bytes(data) for suffix, data in views.items()}


def iter_samples(shard_uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one shard, in order, as ``(key, {suffix: bytes})``."""
    with _shard_exists(shard_uri), open_input(shard_uri) as fh:
        yield from iter_tar(fh, where=shard_uri)


@contextlib.contextmanager
def _shard_exists(shard_uri: str) -> Iterator[None]:
    """A shard that is listed but absent is the corpus' problem (``FormatError("missing_shard")``),
    like every other way a corpus can be damaged, not an ``OSError`` for the reader's caller."""
    try:
        yield
    except FileNotFoundError:
        raise FormatError("missing_shard", "the shard does not exist", where=shard_uri) from None


def iter_sample_views(
    shard_uri: str, *, suffixes: Optional[Collection[str]] = None
) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """Samples of one shard as read-only views, optionally only some members: the fast path for
    training loaders. A local shard is memory-mapped (its bytes are never copied: views point into the
    page cache; the mapping lives as long as any view of it); a remote one is streamed."""
    if not is_remote(shard_uri):
        with _shard_exists(shard_uri), open(local_path(shard_uri), "rb") as fh:
            try:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                mapped = None
        if mapped is not None:
            if hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            yield from iter_tar_views(mapped, where=shard_uri, suffixes=suffixes)
            return
    with _shard_exists(shard_uri), open_input(shard_uri) as fh:
        yield from iter_tar_views(fh, where=shard_uri, suffixes=suffixes)
