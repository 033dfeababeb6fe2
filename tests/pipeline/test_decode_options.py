"""Decode options: hardware decoding when asked for and present (a clean software fallback, recorded per
session), and skipping non-reference frames (picked frames within the documented bound of the exact ones)."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import burst, write_wav
from microturn.config import DecodeConfig
from microturn.jobs.build import _decoder_counts
from microturn.manifest import SessionSpec
from microturn.media import container
from microturn.pipeline.decode import decode_session
from microturn.records import DecoderInfo

SMALL = dict(frame_width=32, frame_height=24)


def write_h264(path: Path, n_frames: int, fps: int, options: dict[str, str]) -> Path:
    """Video-only H.264 whose frame i has brightness 10*i (mod 250); x264's defaults make B-frames
    (with B-pyramid: runs of 1 non-reference frame; ``b-pyramid=none``: runs of up to 3)."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.codec_context.options = options
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), (10 * i) % 250, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def session(tmp_path: Path, video: Path, seconds: float) -> SessionSpec:
    wav = write_wav(tmp_path / "a.wav", burst(16000, seconds, [(0.2, 0.8)]), 16000)
    return SessionSpec.model_validate(
        {"session_id": "s", "audio": [{"uri": str(wav), "speaker": "A"}], "video": {"uri": str(video)}})


def frame_numbers(frames_rgb: np.ndarray) -> np.ndarray:
    """Which source frame (mod 25) each picked frame is, from its brightness."""
    return np.round(frames_rgb.reshape(len(frames_rgb), -1).mean(axis=1) / 10).astype(int) % 25


def longest_skipped_run(path: Path) -> int:
    """Consecutive frames (presentation order) a NONREF decoder leaves out, read with PyAV directly."""
    import av

    def times(skip: bool) -> list[int]:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            if skip:
                stream.codec_context.skip_frame = "NONREF"
            return [f.pts for f in c.decode(stream)]

    kept, run, longest = set(times(True)), 0, 0
    for t in sorted(times(False)):
        run = run + 1 if t not in kept else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("options, bound", [({}, 1), ({"x264-params": "b-pyramid=none"}, 3)])
def test_skipping_nonref_frames_picks_the_exact_frame_or_one_at_most_a_b_run_earlier(tmp_path, options, bound):
    video = write_h264(tmp_path / "v.mp4", 100, 25, options)  # 4 s at 25 fps: 20 chunks want 5 fps
    spec = session(tmp_path, video, 4.0)
    exact = decode_session(spec, DecodeConfig(**SMALL))
    skipping = decode_session(spec, DecodeConfig(**SMALL, skip_nonref=True))
    run = longest_skipped_run(video)
    assert 1 <= run <= bound  # frames were skipped, in runs no longer than media/video.py documents
    assert skipping.decoder == DecoderInfo(hwaccel=None, skip_nonref=True) and not exact.decoder.skip_nonref
    assert np.array_equal(exact.video.frame_chunks, skipping.video.frame_chunks)
    behind = (frame_numbers(exact.video.frames_rgb) - frame_numbers(skipping.video.frames_rgb)) % 25
    assert behind.max() <= run  # never a later frame, at most `run` frame intervals earlier
    assert (behind == 0).any() and (behind > 0).any()  # decoded frames are still picked exactly


def test_a_stream_without_frames_to_spare_is_decoded_whole(tmp_path):
    video = write_h264(tmp_path / "v.mp4", 30, 6, {})  # 6 fps < 2 x 5 frames per second taken
    spec = session(tmp_path, video, 5.0)
    exact = decode_session(spec, DecodeConfig(**SMALL))
    asked = decode_session(spec, DecodeConfig(**SMALL, skip_nonref=True))
    assert asked.decoder == DecoderInfo() and np.array_equal(asked.video.frames_rgb, exact.video.frames_rgb)


def test_hwaccel_auto_uses_a_device_only_where_one_exists_and_records_it(tmp_path):
    video = write_h264(tmp_path / "v.mp4", 50, 25, {})
    spec = session(tmp_path, video, 2.0)
    off = decode_session(spec, DecodeConfig(**SMALL))
    auto = decode_session(spec, DecodeConfig(**SMALL, hwaccel="auto"))
    assert off.decoder.hwaccel is None
    assert auto.decoder.hwaccel == container.hw_device_type()  # None on a machine without one
    if auto.decoder.hwaccel is None:
        assert np.array_equal(auto.video.frames_rgb, off.video.frames_rgb)


def test_a_device_that_refuses_falls_back_to_software_with_a_warning(tmp_path, monkeypatch, caplog):
    if container.hw_device_type() is not None:
        pytest.skip("this machine has a decode device: the refusal cannot be staged")
    monkeypatch.setattr(container, "hw_device_type", lambda: "cuda")  # as if probed, but absent
    video = write_h264(tmp_path / "v.mp4", 50, 25, {})
    spec = session(tmp_path, video, 2.0)
    with caplog.at_level(logging.WARNING, logger="microturn.media.container"):
        media = decode_session(spec, DecodeConfig(**SMALL, hwaccel="auto"))
    assert "decoding in software" in caplog.text
    assert media.decoder.hwaccel is None
    assert np.array_equal(media.video.frames_rgb, decode_session(spec, DecodeConfig(**SMALL)).video.frames_rgb)


def test_stats_count_sessions_per_decoder():
    def outcome(decoder):
        return {"stats": {"decoder": decoder.to_json()}} if decoder else {"stats": {}}

    outcomes = [outcome(DecoderInfo()), outcome(DecoderInfo("cuda")), outcome(DecoderInfo(skip_nonref=True)),
                outcome(DecoderInfo()), outcome(None)]
    assert _decoder_counts(outcomes) == {"cuda": 1, "software": 2, "software+skip_nonref": 1, "unrecorded": 1}
