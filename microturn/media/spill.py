"""Session waves on disk, read a window at a time: memory bounded by the window, not the session.

An hour of stereo is 0.7 GB of float32 at 24 kHz and 0.46 GB at 16 kHz. Decode writes the waves into
arrays mapped from a temporary file (``zeros``) instead of the heap; every later pass (VAD, cross-talk,
quality, tokenization) reads them a window at a time and hands each window's pages back to the kernel
(``release``) once it has copied what it needs. The arrays stay ordinary ``numpy`` arrays, so a pass not
yet windowed still gives the same numbers; it only costs memory (the pages it touches stay resident
until released).

Why this is safe: the mapping is shared and file backed, so dropping its pages from the process
(``MADV_DONTNEED``) loses nothing: the kernel keeps them in its page cache or on disk, and the next
read faults them back. The file is unlinked as soon as it is mapped: nothing is left behind, even by a
worker that crashes. Disk space is reserved up front (``posix_fallocate``), so a full disk is a clear
error here (and a fallback to memory, with a warning), never a ``SIGBUS`` in the middle of a write.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
COPY_BLOCK = 1 << 20  # samples copied (and released) at a time between spilled waves
_LOCK = threading.Lock()
# start address -> (end address, the mapping, its folder): the live spill mappings of this process
_MAPS: dict[int, tuple[int, "weakref.ref[mmap.mmap]", str]] = {}


def zeros(shape: tuple[int, ...], folder: Optional[Path | str] = None, *, like: Optional[np.ndarray] = None,
          dtype: "np.typing.DTypeLike" = np.float32) -> np.ndarray:
    """Zeros of ``shape`` (float32 unless ``dtype``) backed by a temporary file in ``folder`` (the
    system's temporary folder when None; ``like``: the folder of that spilled array). Falls back to
    memory, with a warning, when the folder cannot hold it."""
    if like is not None:
        folder = spill_folder(like)
        if folder is None:
            return np.zeros(shape, dtype=dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    where = str(folder) if folder is not None else tempfile.gettempdir()
    try:
        mm = _mapped_file(where, nbytes)
    except OSError as exc:
        log.warning("cannot spill %.1f MB of media to %s (%s): holding it in memory", nbytes / 2**20, where, exc)
        return np.zeros(shape, dtype=dtype)
    arr = np.ndarray(shape, dtype=dtype, buffer=mm)  # views keep ``arr``, and so the mapping, alive
    start = arr.ctypes.data
    with _LOCK:
        _MAPS[start] = (start + nbytes, weakref.ref(mm), where)
    weakref.finalize(mm, _forget, start)
    return arr


def _mapped_file(folder: str, nbytes: int) -> mmap.mmap:
    fd, path = tempfile.mkstemp(prefix="microturn-spill-", dir=folder)
    try:
        os.unlink(path)  # lives while mapped; never left behind
        try:
            os.posix_fallocate(fd, 0, nbytes)  # ENOSPC now, not SIGBUS on a write later
        except AttributeError:  # no posix_fallocate (macOS): a sparse file
            os.ftruncate(fd, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: sparse
                raise
            os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _forget(start: int) -> None:
    with _LOCK:
        _MAPS.pop(start, None)


def _mapping_of(address: int) -> Optional[tuple[int, int, mmap.mmap, str]]:
    with _LOCK:
        for start, (end, ref, folder) in _MAPS.items():
            mm = ref()
            if start <= address < end and mm is not None:
                return start, end, mm, folder
    return None


def spill_folder(arr: np.ndarray) -> Optional[str]:
    """The folder of the spill file ``arr`` lives in; None for an array in memory."""
    if not _MAPS or arr.size == 0:
        return None
    found = _mapping_of(arr.__array_interface__["data"][0])
    return found[3] if found is not None else None


def release(view: np.ndarray) -> None:
    """Hand the pages under ``view`` back to the kernel (its data stays readable: it is re-read from the
    page cache or disk when next touched). No-op for an array in memory. Pages are whole: a neighbour's
    bytes sharing a page with ``view``'s ends are dropped too, which is harmless for the same reason."""
    if not _MAPS or view.size == 0:
        return
    if view.ndim > 1:
        if view.flags.c_contiguous:  # one range (a block of video frames)
            view = view.reshape(-1)
        else:
            for row in view:
                release(row)
            return
    first = view.__array_interface__["data"][0]
    last = first + (view.shape[0] - 1) * view.strides[0]
    lo, hi = min(first, last), max(first, last) + view.itemsize
    found = _mapping_of(lo)
    if found is None:
        return
    start, end, mm, _ = found
    a = max(start, lo - (lo - start) % _PAGE)
    b = min(end, hi + (-(hi - start)) % _PAGE)
    if b > a:
        mm.madvise(mmap.MADV_DONTNEED, a - start, b - a)


def copy(dst: np.ndarray, src: np.ndarray, block: int = COPY_BLOCK) -> None:
    """``dst[:] = src`` (same shape) ``block`` rows of the first axis at a time, each block's pages
    handed back on both sides once copied: copying a spilled hour holds a block of it, not the hour."""
    for i in range(0, src.shape[0], block):
        dst[i : i + block] = src[i : i + block]
        release(dst[i : i + block])
        release(src[i : i + block])
