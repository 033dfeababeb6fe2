"""Probe and bad inputs: every broken input is one specific, typed StageError; nothing crashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import burst, shared, write_video, write_wav
from microturn.config import DecodeConfig
from microturn.manifest import SessionSpec
from microturn.pipeline.decode import decode_session
from microturn.pipeline.probe import probe_media
from microturn.records import StageError


def _session(audio=(), video=None) -> SessionSpec:
    return SessionSpec.model_validate({"session_id": "s", "audio": list(audio), "video": video})


def _fails(spec: SessionSpec, stage: str, reason: str, cfg: DecodeConfig = DecodeConfig()) -> StageError:
    with pytest.raises(StageError) as info:
        decode_session(spec, cfg)
    assert (info.value.stage, info.value.reason) == (stage, reason), str(info.value)
    return info.value


def test_probe_describes_streams(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 20, fps=10, audio=burst(16000, 2.0, [(0.5, 1.0)]))
    info = probe_media(str(path))
    video, audio = info.first("video"), info.first("audio")
    assert video is not None and (video.width, video.height) == (96, 64)
    assert audio is not None and audio.sample_rate == 16000 and audio.channels == 1
    assert info.duration_s == pytest.approx(2.0, abs=0.1)


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    _fails(_session([{"uri": str(tmp_path / "empty.wav"), "speaker": "a"}]), "probe", "empty_file")


def test_missing_file(tmp_path: Path) -> None:
    _fails(_session([{"uri": str(tmp_path / "nope.wav"), "speaker": "a"}]), "probe", "not_found")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "fake.mp4").write_text("this is not a video\n" * 50)
    _fails(_session(video={"uri": str(tmp_path / "fake.mp4")}), "probe", "not_media")


def test_truncated_mp4(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.mp4", 30, audio=burst(16000, 3.0, [(0.5, 1.0)])).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(full[: len(full) // 3])  # the moov atom (at the end) is gone
    err = _fails(_session(video={"uri": str(tmp_path / "cut.mp4")}), "probe", "not_media")
    assert "cut.mp4" in str(err)


def test_audio_only_file_given_as_video(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    _fails(_session(video={"uri": str(wav)}), "probe", "no_video_stream")


def test_video_without_audio_and_no_audio_source(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "silent.mp4", 20)
    _fails(_session(video={"uri": str(mp4)}), "probe", "no_audio_stream")


def test_wrong_channel_count(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "mono.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    _fails(_session([{"uri": str(wav), "channel": 1, "speaker": "b"}]), "probe", "wrong_channel_count")


def test_nan_samples(tmp_path: Path) -> None:
    x = burst(16000, 2.0, [(0.5, 1.0)])
    x[20000:20100] = np.nan
    wav = write_wav(tmp_path / "nan.wav", x, 16000, codec="pcm_f32le")
    _fails(_session([{"uri": str(wav), "speaker": "a"}]), "decode", "non_finite_samples")


def test_sub_200ms_input(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "short.wav", burst(16000, 0.1, [(0.0, 0.1)]), 16000)
    _fails(_session([{"uri": str(wav), "speaker": "a"}]), "probe", "too_short")


def test_mismatched_durations(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    b = write_wav(tmp_path / "b.wav", burst(16000, 6.0, [(0.5, 1.0)]), 16000)
    spec = _session([{"uri": str(a), "speaker": "a"}, {"uri": str(b), "speaker": "b"}])
    err = _fails(spec, "probe", "duration_mismatch", DecodeConfig(duration_tolerance_s=1.0))
    assert "4.00 s" in err.message
    decode_session(spec, DecodeConfig(duration_tolerance_s=5.0))  # within tolerance: fine


@pytest.mark.parametrize(
    "name, expected",
    [
        ("broken/corrupted.mp4", ("probe", "no_audio_stream")),  # as a session's only source
        ("broken/missing_wav_header.wav", ("probe", "not_media")),
        ("broken/test1_empty.wav", ("probe", "zero_duration")),
    ],
)
def test_shared_broken_files(name: str, expected: tuple[str, str]) -> None:
    path = str(shared(*name.split("/")))
    spec = _session(video={"uri": path}) if name.endswith(".mp4") else _session([{"uri": path, "speaker": "a"}])
    _fails(spec, *expected)


def test_corrupted_video_beside_good_audio_decodes_or_fails_typed() -> None:
    video = str(shared("broken", "corrupted.mp4"))
    audio = str(shared("speech", "61-70968-0000.flac"))  # 4.9 s vs the video's 5 s
    spec = _session([{"uri": audio, "speaker": "a"}], video={"uri": video})
    try:
        out = decode_session(spec, DecodeConfig())
    except StageError as err:  # a typed refusal is acceptable, a crash is not
        assert err.stage in ("probe", "decode")
        return
    assert out.video is not None and np.all(np.diff(out.video.frame_chunks) > 0)


@pytest.mark.parametrize("name", ["odd/wrong_extension.aac", "odd/video_with_failing_audio.mp4"])
def test_shared_odd_files_decode(name: str) -> None:
    path = str(shared(*name.split("/")))
    spec = _session(video={"uri": path}) if name.endswith(".mp4") else _session([{"uri": path}])
    out = decode_session(spec, DecodeConfig())
    assert out.num_samples > 24000 and out.streams[0].speaker == "mixed"
    assert np.isfinite(out.streams[0].wave_24k).all()


def test_frames_larger_than_max_frame_pixels_are_refused_at_probe(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "v.mp4", 10, size=(96, 64), audio=burst(16000, 1.0, [(0.2, 0.6)]))
    err = _fails(_session(video={"uri": str(mp4)}), "probe", "frame_too_large", DecodeConfig(max_frame_pixels=96 * 64 - 1))
    assert "96x64" in err.message
    assert decode_session(_session(video={"uri": str(mp4)}), DecodeConfig(max_frame_pixels=96 * 64)).video is not None
