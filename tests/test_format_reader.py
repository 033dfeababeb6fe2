"""microturn.format's fast tar and .npy readers agree with the standard library and refuse bad input."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from microturn.format import FormatError, decode_npy, iter_sample_views, iter_tar, iter_tar_members, iter_tar_views


def _tar(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG = "a/" + "x" * 120  # longer than the 100-byte name field: GNU long name / pax path
MEMBERS = [("k1.meta.json", b"{}"), ("k1.codes.npy", bytes(range(256)) * 3), (f"{LONG}-1.text.npy", b""),
           (f"{LONG}-1.meta.json", b"[1]" * 200)]  # fmt: skip


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_tarfile_in_every_tar_format(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else MEMBERS[:2]  # ustar cannot hold a 122-char basename
    data = _tar(members, fmt)
    got = [(n, bytes(v)) for n, v in iter_tar_members(io.BytesIO(data))]
    assert got == members
    assert [(n, bytes(v)) for n, v in iter_tar_members(data)] == members  # whole archive in memory


def test_views_are_read_only_and_can_select_members():
    data = _tar(MEMBERS, tarfile.GNU_FORMAT)
    samples = list(iter_tar_views(data, suffixes=("meta.json",)))
    assert [(k, sorted(m)) for k, m in samples] == [("k1", ["meta.json"]), (f"{LONG}-1", ["meta.json"])]
    with pytest.raises(TypeError):
        samples[0][1]["meta.json"][0] = 1


def test_a_shard_is_memory_mapped_and_reads_like_the_stream(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(MEMBERS, tarfile.GNU_FORMAT))
    mapped = [(k, {s: bytes(v) for s, v in m.items()}) for k, m in iter_sample_views(str(path))]
    assert mapped == list(iter_tar(io.BytesIO(path.read_bytes())))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:700], "truncated"),  # cut inside a member
        (lambda d: d[:1536], "truncated"),  # cut at a member boundary: no end-of-archive blocks
        (lambda d: d[:100] + b"Z" + d[101:], "checksum"),  # a flipped byte in a header
        (lambda d: b"", "empty"),
    ],
)
def test_damaged_archives_are_format_errors(damage, message):
    data = _tar(MEMBERS[:2], tarfile.GNU_FORMAT)
    with pytest.raises(FormatError) as err:
        list(iter_tar_members(io.BytesIO(damage(data))))
    assert err.value.code == "bad_tar" and message in err.value.message


def test_npy_arrays_are_zero_copy_views_in_c_and_fortran_order():
    for arr in (np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3))):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        for _ in range(2):  # the second read uses the cached header layout
            got = decode_npy(buf.getvalue())
            assert np.array_equal(got, arr) and got.dtype == arr.dtype and not got.flags.writeable


def test_npy_object_arrays_are_refused_without_unpickling():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="pickles"):
        decode_npy(buf.getvalue())


def test_a_truncated_npy_is_a_format_error():
    buf = io.BytesIO()
    np.save(buf, np.zeros(100, np.int32), allow_pickle=False)
    with pytest.raises(FormatError, match="data bytes"):
        decode_npy(buf.getvalue()[:-4])


class _CountingReader(io.BytesIO):
    """A stream that remembers the largest read asked of it."""

    largest = 0

    def read(self, n=-1):
        self.largest = max(self.largest, n)
        return super().read(n)


def _with_size_field(data: bytes, field: bytes) -> bytes:
    """``data`` with its first header's size field replaced and the checksum made right again."""
    head = bytearray(data[:512])
    head[124:136] = field
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head) + data[512:]


@pytest.mark.parametrize("field", [b"77777777777\0", b"\x80" + (1 << 40).to_bytes(11, "big"), b"\xff" * 12])
def test_a_member_size_beyond_the_file_or_negative_is_a_bad_tar_without_allocating_it(field):
    # 8 GiB, 1 TiB (GNU base-256) and -1: the header is refused, or the read stays bounded by the file
    data = _with_size_field(_tar(MEMBERS[:2], tarfile.GNU_FORMAT), field)
    stream = _CountingReader(data)
    with pytest.raises(FormatError) as err:
        list(iter_tar_members(stream))
    assert err.value.code == "bad_tar"
    assert stream.largest <= 1 << 22, f"asked for {stream.largest} bytes at once"
    with pytest.raises(FormatError):
        list(iter_tar_members(data))


@pytest.mark.parametrize("shape", ["(-1,)", "(2, -3)", "(0, 10**30)"])
def test_npy_headers_with_impossible_shapes_are_format_errors(shape):
    header = ("{'descr': '<i2', 'fortran_order': False, 'shape': %s, }" % shape).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    with pytest.raises(FormatError) as err:
        decode_npy(data)
    assert err.value.code == "bad_npy"
