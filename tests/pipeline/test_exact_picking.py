"""Exact picking decodes only what it needs: an H.264 picture no other picture references and no chunk
takes is left out of the decoder, and every chunk still gets the frame a full decode gives it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.test_decode_options import SMALL, frame_numbers, session, write_h264
from microturn.config import DecodeConfig
from microturn.manifest import SessionSpec
from microturn.media.container import PacketStats
from microturn.media.h264 import DisposableTest
from microturn.media.video import VideoPicker, _Undecoded
from microturn.pipeline.decode import decode_session


def disposable_packets(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        test = DisposableTest.for_stream(stream.codec_context.name, stream.codec_context.extradata)
        assert test is not None
        return sum(test.disposable(memoryview(p)) for p in c.demux(stream) if p.size)


@pytest.mark.parametrize("options", [{}, {"x264-params": "b-pyramid=none"}, {"x264-params": "bframes=16:b-pyramid=none"}])
@pytest.mark.parametrize("video_offset_s", [0.0, 0.013])
def test_untaken_disposable_pictures_are_not_decoded_and_every_chunk_gets_its_exact_frame(tmp_path, options, video_offset_s):
    video = write_h264(tmp_path / "v.mp4", 100, 25, options)  # 4 s at 25 fps: the chunks take 5 frames a second
    row = session(tmp_path, video, 4.0).model_dump(exclude_unset=True)
    spec = SessionSpec.model_validate({**row, "video": {"uri": str(video), "offset_s": video_offset_s}})
    picked = decode_session(spec, DecodeConfig(**SMALL))
    whole = decode_session(spec, DecodeConfig(**SMALL), trace=True)  # the luma trace wants every frame decoded
    assert whole.decoder.left_out == 0
    assert 0 < picked.decoder.left_out <= disposable_packets(video)
    assert np.array_equal(picked.video.frame_chunks, whole.video.frame_chunks)
    assert np.array_equal(picked.video.frames_rgb, whole.video.frames_rgb)
    assert picked.warnings == whole.warnings
    # and they are the frames on screen at each chunk's start: frame floor((0.2 c - offset) * 25),
    # the first frame for a chunk that starts just before the picture does
    offset = Fraction(video_offset_s).limit_denominator(1000)
    expected = [max(0, int((Fraction(c, 5) - offset) * 25)) for c in picked.video.frame_chunks.tolist()]
    assert np.array_equal(frame_numbers(picked.video.frames_rgb), np.asarray(expected) % 25)


def test_a_stream_without_b_frames_has_nothing_to_leave_out(tmp_path):
    video = write_h264(tmp_path / "v.mp4", 50, 25, {"x264-params": "bframes=0"})
    picked = decode_session(session(tmp_path, video, 2.0), DecodeConfig(**SMALL))
    assert picked.decoder.left_out == 0 and len(picked.video.frames_rgb) == 10


def test_field_coded_h264_is_decoded_whole(tmp_path):
    import av

    video = write_h264(tmp_path / "v.mp4", 50, 25, {"x264-params": "interlaced=1"})
    with av.open(str(video)) as c:
        ctx = c.streams.video[0].codec_context
        assert DisposableTest.for_stream(ctx.name, ctx.extradata) is None  # frame_mbs_only_flag = 0
    assert decode_session(session(tmp_path, video, 2.0), DecodeConfig(**SMALL)).decoder.left_out == 0


def sps_nal(frames_only_flag: int) -> bytes:
    """A High-profile SPS with scaling matrices (x264 puts its own in the PPS), escaped as in a stream."""
    bits: list[int] = []

    def u(n: int, v: int) -> None:
        bits.extend((v >> (n - 1 - i)) & 1 for i in range(n))

    def ue(v: int) -> None:
        n = (v + 1).bit_length()
        u(2 * n - 1, v + 1)

    def se(v: int) -> None:
        ue(2 * v - 1 if v > 0 else -2 * v)

    u(8, 100), u(16, 40), ue(0), ue(1), ue(0), ue(0), u(1, 0), u(1, 1)  # High 4:2:0, 8 bit, matrices
    for i in range(8):
        u(1, i in (0, 6))
        if i == 0:
            [se(3) for _ in range(16)]  # a full 4x4 list
        if i == 6:
            se(-8)  # next scale 0: the 8x8 list ends at once (use the default)
    ue(0), ue(0), ue(0), ue(1), u(1, 0), ue(0), ue(0), u(1, frames_only_flag), u(1, 1)
    bits.extend([0] * (-len(bits) % 8))
    rbsp = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)) + b"\x00\x00\x01"
    escaped = rbsp.replace(b"\x00\x00\x01", b"\x00\x00\x03\x01")  # emulation prevention
    return b"\x67" + escaped


@pytest.mark.parametrize("frames_only_flag", [1, 0])
def test_the_sps_is_read_past_its_scaling_matrices(frames_only_flag):
    sps = sps_nal(frames_only_flag)
    avcc = bytes([1, 100, 0, 40, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
    found = DisposableTest.for_stream("h264", avcc)
    assert (found is not None) == bool(frames_only_flag)


def test_only_length_prefixed_h264_is_read():
    assert DisposableTest.for_stream("hevc", b"\x01" * 32) is None
    assert DisposableTest.for_stream("h264", None) is None
    assert DisposableTest.for_stream("h264", b"\x00\x00\x00\x01\x67\x42") is None  # Annex B start codes


def test_a_packet_that_cannot_be_parsed_turns_the_test_off(tmp_path):
    import av

    video = write_h264(tmp_path / "v.mp4", 10, 25, {})
    with av.open(str(video)) as c:
        ctx = c.streams.video[0].codec_context
        test = DisposableTest.for_stream(ctx.name, ctx.extradata)
    assert test is not None
    assert not test.disposable(b"\x00\x00\x00\x09\x01")  # a NAL unit longer than the packet
    assert not test.enabled and not test.disposable(b"\x00\x00\x00\x01\x01")  # off for good


def test_a_left_out_picture_a_chunk_takes_after_all_gets_the_frame_before_and_a_warning():
    import av

    picker = VideoPicker("v.mp4", Fraction(0), DecodeConfig(**SMALL))

    def frame(pts: int, level: int) -> av.VideoFrame:
        f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), level, np.uint8), format="rgb24")
        f.pts, f.time_base = pts, Fraction(1, 10)
        return f

    picker.feed(frame(0, 50))
    picker.settle(Fraction(0))
    picker.left_out(_Undecoded(2, Fraction(1, 10), 1))  # 0.2 s: chunk 1 starts there
    picker.feed(frame(3, 200))
    result = picker.finish(PacketStats(packets=3, frames=2))
    assert result.frame_chunks.tolist() == [0, 1, 2] and result.left_out == 1
    assert [int(f.mean()) for f in result.frames_rgb] == [50, 50, 200]
    assert "video_undecoded_frames_taken:1" in result.warnings
