"""Encoding and decoding of member bytes: ``.npy`` arrays without pickles and canonical UTF-8 JSON.

Decoding is bounded: a crafted header can claim neither an object dtype nor more data than the bytes
hold, and every way bytes fail to be JSON is one ``FormatError`` (never a RecursionError or a huge int).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from microturn.errors import FormatError


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# Layouts of .npy headers seen so far, keyed by the header bytes: a corpus repeats a handful of headers
# (same dtypes, same window shapes), and parsing one (a Python literal) costs more than reading the array.
_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
_NPY_LAYOUTS_MAX = 4096


def _npy_layout(data: memoryview, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of a .npy buffer; object dtypes are refused."""
    if len(data) >= 128 and data[6] == 1:  # the common case: a version 1 header padded to 128 bytes
        layout = _NPY_LAYOUTS.get(bytes(data[:128]))
        if layout is not None:
            return layout
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise FormatError("bad_npy", "cannot read .npy: not a .npy array", where=where)
    major = data[6]
    if major == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        offset = 12 + int.from_bytes(data[8:12], "little") if len(data) >= 12 else len(data) + 1
    else:
        raise FormatError("bad_npy", f"cannot read .npy: unknown version {major}", where=where)
    if offset > len(data):
        raise FormatError("bad_npy", "cannot read .npy: truncated header", where=where)
    header = bytes(data[:offset])
    layout = _NPY_LAYOUTS.get(header)
    if layout is not None:
        return layout
    from numpy.lib import format as npformat

    try:
        fh = io.BytesIO(header)
        version = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except Exception as exc:  # numpy raises ValueError for a header that is not a plain literal
        raise FormatError("bad_npy", f"cannot read .npy: {exc}", where=where) from None
    if dtype.hasobject:
        raise FormatError("bad_npy", "cannot read .npy: object arrays need pickles, which we never load",
                          where=where)
    layout = (dtype, tuple(int(n) for n in shape), bool(fortran), offset)
    if len(_NPY_LAYOUTS) < _NPY_LAYOUTS_MAX:
        _NPY_LAYOUTS[header] = layout
    return layout


def decode_npy(data: bytes | bytearray | memoryview, *, where: str = "") -> np.ndarray:
    """A read-only array viewing ``data`` (no copy). Never unpickles: object dtypes are refused."""
    view = memoryview(data)
    dtype, shape, fortran, offset = _npy_layout(view, where)
    if any(n < 0 for n in shape) or len(shape) > 32:  # numpy's own limit on dimensions is 32 (64 in 2.x)
        raise FormatError("bad_npy", f"cannot read .npy: impossible shape {shape}", where=where)
    count = math.prod(shape)
    if len(view) - offset < count * dtype.itemsize:
        raise FormatError("bad_npy", f"cannot read .npy: {len(view) - offset} data bytes for shape {shape} "
                                     f"{dtype}", where=where)
    try:  # a zero-sized shape can still name dimensions numpy refuses (beyond intp)
        arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    except ValueError as exc:
        raise FormatError("bad_npy", f"cannot read .npy: {exc}", where=where) from None
    if arr.flags.writeable:  # a view of writable memory (bytearray): the caller must not write through it
        arr.flags.writeable = False
    return arr


def encode_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8, no NaN (so equal objects give equal bytes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples and paths; NaN and infinities become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def decode_json(data: bytes | memoryview, *, where: str = "") -> Any:
    """Parsed JSON; every way the bytes can fail to be JSON is ``FormatError("bad_json")``: bad
    UTF-8, bad syntax, an integer past Python's digit limit (ValueError), too deep nesting."""
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except RecursionError:
        raise FormatError("bad_json", "cannot read JSON: nested too deeply", where=where) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int max_str_digits
        raise FormatError("bad_json", f"cannot read JSON: {exc}", where=where) from None
