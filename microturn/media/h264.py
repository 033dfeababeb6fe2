"""H.264 packets read just far enough to tell whether a decoder may drop one: ``DisposableTest``.

Why: exact frame picking keeps one frame per 200 ms chunk, a fifth of a 25 fps stream, yet every
frame used to be decoded. A picture whose slices all have ``nal_ref_idc == 0`` is never referenced by
another picture (H.264 7.4.1), so leaving its packet out of the decoder changes no other frame; when
no chunk takes it (``video.VideoPicker.takes``) the picked frames are the same, bit for bit.

Only what makes that argument hold is accepted, everything else is decoded as before:
- length-prefixed NAL units (MP4, MOV, Matroska: ``avcC`` extradata), where a packet is one access unit;
- sequences coded in frames only (``frame_mbs_only_flag`` in every SPS, the extradata's and any in
  the stream): with field coding one packet can hold half a frame, and its other half a reference;
- packets with no parameter set in them (decoding those changes the decoder's state).
"""

from __future__ import annotations

from typing import Optional

_SLICE, _IDR, _SPS, _PPS, _SPS_EXT, _SUBSET_SPS = 1, 5, 7, 8, 13, 15
_PARTITIONS = (2, 3, 4)  # data partitions A-C carry slices too
_PARAMETER_SETS = (_SPS, _PPS, _SPS_EXT, _SUBSET_SPS)
# NAL units read per packet: encoders put a handful (delimiter, SEI, a few slices) in one picture; a
# packet with more is simply decoded, so a crafted one cannot make this loop long
_MAX_NALS = 64
_MAX_SPS_BYTES = 4096
# profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1)
_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


class _Bits:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes already removed)."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self._left:
            raise ValueError("SPS ends early")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """The NAL payload without its header byte and emulation prevention bytes (00 00 03 -> 00 00);
    only its start: every field up to ``frame_mbs_only_flag`` fits (a longer one is an error)."""
    return bytes(nal[1:_MAX_SPS_BYTES]).replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def frames_only(sps: bytes) -> bool:
    """``frame_mbs_only_flag`` of an SPS NAL unit (header byte included): no field or MBAFF coding."""
    bits = _Bits(_rbsp(sps))
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        cycle = bits.ue()  # num_ref_frames_in_pic_order_cnt_cycle
        if cycle > 255:
            raise ValueError("pic_order_cnt cycle longer than H.264 allows")
        for _ in range(cycle):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    bits.ue()  # pic_width_in_mbs_minus1
    bits.ue()  # pic_height_in_map_units_minus1
    return bits.u(1) == 1


def _avcc_sps(extradata: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, the SPS NAL units) of an ``avcC`` record (ISO/IEC 14496-15 5.3.3.1)."""
    length_size = (extradata[4] & 3) + 1
    count, at, sps = extradata[5] & 31, 6, []
    for _ in range(count):
        n = int.from_bytes(extradata[at : at + 2], "big")
        sps.append(extradata[at + 2 : at + 2 + n])
        at += 2 + n
    if at > len(extradata):
        raise ValueError("avcC record ends early")
    return length_size, sps


class DisposableTest:
    """``disposable(packet_bytes)``: True when the packet is one picture no other picture references.

    ``for_stream`` gives one only for H.264 with length-prefixed NAL units coded in frames; the test
    turns itself off for good when the stream brings an SPS with field coding or a malformed packet.
    """

    def __init__(self, length_size: int) -> None:
        self._length_size = length_size
        self.enabled = True

    @classmethod
    def for_stream(cls, codec_name: str, extradata: Optional[bytes]) -> Optional["DisposableTest"]:
        if codec_name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
            return None  # not H.264, or Annex B start codes (MPEG-TS, raw .h264): packets need not be pictures
        try:
            length_size, sps = _avcc_sps(bytes(extradata))
            if not sps or not all(frames_only(s) for s in sps):
                return None
        except ValueError:
            return None
        return cls(length_size)

    def disposable(self, data: bytes) -> bool:
        if not self.enabled:
            return False
        try:
            nal_headers = self._headers(data)
        except ValueError:
            self.enabled = False
            return False
        slices = 0
        for header, nal in nal_headers:
            kind = header & 31
            if kind in _PARAMETER_SETS:
                if kind == _SPS and not self._frames_only(nal):
                    self.enabled = False
                return False
            if kind in (_SLICE, _IDR, *_PARTITIONS):
                if kind == _IDR or header >> 5:
                    return False  # a reference picture
                slices += 1
        return slices > 0

    def _frames_only(self, sps: bytes) -> bool:
        try:
            return frames_only(sps)
        except ValueError:
            return False

    def _headers(self, data: bytes) -> list[tuple[int, bytes]]:
        """(header byte, NAL unit) of every NAL unit; only SPS units are sliced out (the rest is not read)."""
        out, at, n = [], 0, self._length_size
        while at < len(data):
            if len(out) == _MAX_NALS:
                return [(_SPS_EXT, b"")]  # treated as a parameter set: the packet is decoded
            size = int.from_bytes(data[at : at + n], "big")
            at += n
            if size == 0 or at + size > len(data):
                raise ValueError("NAL unit length past the packet")
            header = data[at]
            out.append((header, data[at : at + size] if header & 31 == _SPS else b""))
            at += size
        return out
