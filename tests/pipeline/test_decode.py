"""Decode: every source lands on one integer clock; video frames are picked by presentation time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import burst, shared, write_video, write_wav
from microturn.clock import GRID
from microturn.config import DecodeConfig
from microturn.manifest import SessionSpec
from microturn.media.video import repick_video
from microturn.pipeline.decode import decode_session
from microturn.records import StageError
from tests.pipeline.crafted import pcm_with_timestamp_jump, video_with_times


def _spec(**row) -> SessionSpec:
    return SessionSpec.model_validate({"session_id": "s", **row})


def _onset(wave: np.ndarray, level: float = 0.05) -> int:
    return int(np.flatnonzero(np.abs(wave) > level)[0])


def test_manifest_offsets_place_sources_exactly(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", burst(16000, 3.0, [(1.0, 1.5)]), 16000)
    b = write_wav(tmp_path / "b.wav", burst(48000, 3.0, [(1.0, 1.5)], freq=330), 48000)
    spec = _spec(audio=[{"uri": str(a), "speaker": "A"}, {"uri": str(b), "speaker": "B", "offset_s": 0.25}])
    out = decode_session(spec, DecodeConfig())
    wa, wb = out.streams[0].wave_24k, out.streams[1].wave_24k
    assert out.num_samples == 24000 * 3 + 6000  # B ends 0.25 s later
    assert wa.shape == wb.shape == (out.num_samples,)
    assert out.streams[0].wave_16k.shape == (-(-out.num_samples * 2 // 3),)
    assert out.streams[1].offset_sample == 6000
    assert abs(_onset(wa) - 24000) <= 24  # 1 ms: resampler filter ramp only
    assert abs(_onset(wb) - (24000 + 6000)) <= 24
    assert abs(_onset(out.streams[1].wave_16k) - 20000) <= 16


def test_negative_offset_moves_the_origin(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(1.0, 1.2)]), 16000)
    b = write_wav(tmp_path / "b.wav", burst(16000, 2.0, [(1.0, 1.2)]), 16000)
    out = decode_session(
        _spec(audio=[{"uri": str(a), "speaker": "A"}, {"uri": str(b), "speaker": "B", "offset_s": -0.5}]), DecodeConfig()
    )
    assert [s.offset_sample for s in out.streams] == [12000, 0]
    assert abs(_onset(out.streams[0].wave_24k) - _onset(out.streams[1].wave_24k) - 12000) <= 24


def test_stereo_one_speaker_per_channel(tmp_path: Path) -> None:
    left = burst(16000, 2.0, [(0.2, 0.6)])
    right = burst(16000, 2.0, [(1.0, 1.4)])
    wav = write_wav(tmp_path / "st.wav", np.stack([left, right]), 16000)
    spec = _spec(audio=[{"uri": str(wav), "channel": 0, "speaker": "L"}, {"uri": str(wav), "channel": 1, "speaker": "R"}])
    out = decode_session(spec, DecodeConfig())
    assert [s.speaker for s in out.streams] == ["L", "R"]
    assert abs(_onset(out.streams[0].wave_24k) - 4800) <= 24
    assert abs(_onset(out.streams[1].wave_24k) - 24000) <= 24


def test_mixed_track_downmixes_stereo(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "st.wav", np.stack([burst(16000, 1.0, [(0.1, 0.3)]), burst(16000, 1.0, [(0.5, 0.7)])]), 16000)
    out = decode_session(_spec(audio=[{"uri": str(wav)}]), DecodeConfig())
    (mixed,) = out.streams
    assert mixed.speaker == "mixed" and mixed.channel == -1
    assert np.abs(mixed.wave_24k[3600:6000]).max() > 0.1 and np.abs(mixed.wave_24k[12000:16800]).max() > 0.1


def test_video_frames_picked_by_presentation_time(tmp_path: Path) -> None:
    # variable frame rate: frame i shows brightness 10*i at these times (ms)
    pts_ms = [0, 100, 150, 420, 450, 500, 900, 1000, 1100, 1500]
    mp4 = write_video(tmp_path / "vfr.mp4", len(pts_ms), pts=pts_ms, audio=burst(16000, 1.6, [(0.2, 0.8)]))
    out = decode_session(_spec(video={"uri": str(mp4)}), DecodeConfig(frame_width=32, frame_height=24))
    v = out.video
    assert v is not None and v.frames_rgb.shape[1:] == (24, 32, 3) and v.frames_rgb.dtype == np.uint8
    assert v.frame_chunks.dtype == np.int32 and np.all(np.diff(v.frame_chunks) > 0)
    expected = {c: max(i for i, t in enumerate(pts_ms) if t <= 200 * c) for c in range(8)}
    got = {int(c): int(round(float(f.mean()) / 10)) for c, f in zip(v.frame_chunks, v.frames_rgb)}
    assert got == expected


def test_video_start_later_than_audio(tmp_path: Path) -> None:
    pts_ms = [300 + 100 * i for i in range(20)]  # video stream starts 300 ms after the audio
    mp4 = write_video(tmp_path / "late.mp4", 20, pts=pts_ms, audio=burst(16000, 2.4, [(0.5, 1.0)]))
    out = decode_session(_spec(video={"uri": str(mp4)}), DecodeConfig())
    assert out.video is not None
    assert out.video.offset_sample == 7200
    # chunk 0 (0 ms) is 300 ms before the first frame: no frame; chunk 1 (200 ms) is within half a
    # chunk of it: the nearest frame; from then on the frame whose interval covers the chunk start
    assert out.video.frame_chunks[:4].tolist() == [1, 2, 3, 4]
    brightness = [round(float(f.mean()) / 10) for f in out.video.frames_rgb[:4]]
    assert brightness == [0, 1, 3, 5]


def test_real_variable_frame_rate_phone_video() -> None:
    fire = str(shared("video", "fire2.mp4"))
    out = decode_session(_spec(video={"uri": fire}), DecodeConfig())
    v = out.video
    assert v is not None
    assert v.frame_chunks[0] == 0 and np.all(np.diff(v.frame_chunks) == 1)
    # the video (2.38 s) ends a little before the audio: no frame for chunks after its last frame
    assert v.frame_chunks[-1] == 11 and GRID.num_chunks(out.num_samples) == 13
    assert v.frames_rgb.std() > 5  # real picture content, not padding


def test_container_start_time_differences_are_honoured() -> None:
    webm = str(shared("video", "no_duration.webm"))  # audio starts 15 ms after video
    out = decode_session(_spec(video={"uri": webm}), DecodeConfig())
    assert out.streams[0].offset_sample == 360
    assert out.video is not None and out.video.offset_sample == 0


@pytest.mark.slow
def test_ten_minute_session_decodes_with_bounded_memory(tmp_path: Path) -> None:
    minutes = 10
    rate = 16000
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        x = (0.05 * rng.standard_normal(minutes * 60 * rate)).astype(np.float32)
        write_wav(tmp_path / f"{name}.wav", x, rate)
    write_video(tmp_path / "v.mp4", minutes * 60 * 2, fps=2, size=(160, 120))
    spec = _spec(
        audio=[{"uri": str(tmp_path / "a.wav"), "speaker": "A"}, {"uri": str(tmp_path / "b.wav"), "speaker": "B"}],
        video={"uri": str(tmp_path / "v.mp4")},
    )
    script = (
        "import json, resource, sys\n"
        "from microturn.manifest import SessionSpec\n"
        "from microturn.config import DecodeConfig\n"
        "from microturn.pipeline.decode import decode_session\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = decode_session(SessionSpec.model_validate_json(sys.argv[1]), DecodeConfig())\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kept = sum(s.wave_24k.nbytes + s.wave_16k.nbytes for s in out.streams) + out.video.frames_rgb.nbytes\n"
        "print(json.dumps({'base_kb': base, 'peak_kb': peak, 'kept_bytes': kept, 'n': out.num_samples}))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, spec.model_dump_json()], capture_output=True, text=True, check=True)
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["n"] == minutes * 60 * 24000
    growth = (stats["peak_kb"] - stats["base_kb"]) * 1024
    # the result itself (~200 MB) plus one file's decode buffers, never the whole file at full size twice
    assert growth < 2.5 * stats["kept_bytes"] + 150 * 2**20, stats


def _plain_24k(path: str) -> np.ndarray:
    """The file's first audio stream as a fresh PyAV decode + resample gives it (mono 24 kHz)."""
    import av

    with av.open(path) as c:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=24000)
        blocks = [o.to_ndarray()[0] for f in c.decode(audio=0) for o in resampler.resample(f)]
        blocks += [o.to_ndarray()[0] for o in resampler.resample(None)]
    return np.concatenate(blocks)


@pytest.mark.parametrize("source", ["opus_mkv", "aac_mp4_late_video"])
def test_one_pass_decode_keeps_codec_start_up_samples_exact(source: str, tmp_path: Path) -> None:
    # Seeking back to re-read a file is not exact: a flushed Opus decoder forgets its pre-skip, and
    # the MP4 demuxer skips AAC priming packets when seeking to 0. The audio we place must be
    # sample for sample what a fresh decode of the file gives.
    if source == "opus_mkv":
        path = str(shared("video", "flipping_a_pancake.mkv"))
    else:
        pts_ms = [300 + 100 * i for i in range(20)]
        path = str(write_video(tmp_path / "late.mp4", 20, pts=pts_ms, audio=burst(16000, 2.4, [(0.5, 1.0)])))
    out = decode_session(_spec(video={"uri": path}), DecodeConfig())
    plain = _plain_24k(path)
    (stream,) = out.streams
    placed = stream.wave_24k[stream.offset_sample : stream.offset_sample + plain.shape[0]]
    assert np.array_equal(placed, plain)
    assert out.video is not None and out.video.frames_rgb.shape[0] > 0


def test_each_file_is_opened_once_per_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    mp4 = write_video(tmp_path / "v.mp4", 20, audio=burst(16000, 2.0, [(0.5, 1.0)]))
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    opened: list[str] = []
    real_open = av.open

    def counting_open(target, *args, **kwargs):
        opened.append(str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    decode_session(_spec(video={"uri": str(mp4)}), DecodeConfig())  # probe, audio and picture
    assert opened == [str(mp4)]
    opened.clear()
    decode_session(_spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mp4)}), DecodeConfig())
    assert sorted(opened) == sorted([str(wav), str(mp4)])


def test_video_far_ahead_of_its_audio_is_decoded_in_two_exact_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file whose audio comes late in the stream (not interleaved) must not make the picture wait
    # in memory: past a few frames the file is read again, once per stream, with the same result.
    import av

    import microturn.pipeline.decode as decode

    pts_ms = [300 + 100 * i for i in range(20)]
    mp4 = write_video(tmp_path / "late.mp4", 20, pts=pts_ms, audio=burst(16000, 2.4, [(0.5, 1.0)]))
    one_pass = decode_session(_spec(video={"uri": str(mp4)}), DecodeConfig())
    monkeypatch.setattr(decode, "_MAX_PENDING_FRAMES", 0)  # every file counts as not interleaved
    opened: list[str] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda target, *a, **k: opened.append(str(target)) or real_open(target, *a, **k))
    two_pass = decode_session(_spec(video={"uri": str(mp4)}), DecodeConfig())
    assert opened == [str(mp4)] * 3  # the shared open, then one per stream
    assert one_pass.video is not None and two_pass.video is not None
    assert one_pass.num_samples == two_pass.num_samples
    assert np.array_equal(one_pass.streams[0].wave_24k, two_pass.streams[0].wave_24k)
    assert np.array_equal(one_pass.video.frame_chunks, two_pass.video.frame_chunks)
    assert np.array_equal(one_pass.video.frames_rgb, two_pass.video.frames_rgb)
    assert one_pass.video.offset_sample == two_pass.video.offset_sample == 7200


# ---------------------------------------------------------------- one pass gives the A/V offset inputs


def test_trace_and_candidates_come_from_the_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    pts_ms = [0, 100, 150, 420, 450, 500, 900, 1000, 1100, 1500] + [1600 + 100 * i for i in range(15)]
    wav = write_wav(tmp_path / "a.wav", burst(16000, 3.2, [(0.5, 1.0)]), 16000)
    mp4 = write_video(tmp_path / "v.mp4", len(pts_ms), pts=pts_ms)
    opened: list[str] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda target, *a, **k: opened.append(str(target)) or real_open(target, *a, **k))
    spec = _spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mp4)})
    out = decode_session(spec, DecodeConfig(), trace=True, candidates=True)
    assert opened.count(str(mp4)) == 1 and opened.count(str(wav)) == 1
    assert out.trace is not None and out.candidates is not None
    # every decoded frame, on the session clock (both sources start at 0: sample = 24 x ms)
    assert out.trace.times_sample.tolist() == [24 * t for t in pts_ms]
    assert out.trace.features.shape == (len(pts_ms), 32) and out.trace.features.dtype == np.float32
    luma = out.trace.features[:, :16].mean(axis=1)  # frame i is brighter than frame i - 1
    assert np.all(np.diff(luma) > 0) and not out.trace.features[0, 16:].any()
    assert out.candidates.samples.tolist() == [24 * t for t in pts_ms]
    assert out.candidates.frames_rgb.shape == (len(pts_ms), 64, 64, 3)
    plain = decode_session(spec, DecodeConfig())
    assert plain.trace is None and plain.candidates is None
    assert np.array_equal(plain.video.frames_rgb, out.video.frames_rgb)  # type: ignore[union-attr]


def _picked_by_pts(pts_ms: list[int], shift_ms: int, end_ms: int, num_chunks: int) -> dict[int, int]:
    """Frame index per chunk for a picture moved ``shift_ms`` earlier, straight from the PTS: the frame
    whose interval covers the chunk start; the first frame also for a chunk up to 100 ms before it."""
    moved = [p - shift_ms for p in pts_ms]
    picks = {}
    for c in range(num_chunks):
        t = 200 * c
        if moved[0] - 100 <= t < end_ms - shift_ms:
            picks[c] = max([i for i, p in enumerate(moved) if p <= t], default=0)
    return picks


@pytest.mark.parametrize("shift_ms", [0, 1, -1, 37, 100, -100, 250, -333, 500, -500])
def test_repick_video_moves_the_picture_without_opening_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shift_ms: int
) -> None:
    import av

    pts_ms = [0, 100, 150, 420, 450, 500, 900, 1000, 1100, 1500] + [1600 + 100 * i for i in range(10)]
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.4, [(0.5, 1.0)]), 16000)
    mp4 = write_video(tmp_path / "v.mp4", len(pts_ms), pts=pts_ms, size=(64, 48))
    spec = _spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mp4)})
    media = decode_session(spec, DecodeConfig(frame_width=32, frame_height=24), candidates=True)
    assert media.video is not None and media.candidates is not None
    monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("repick_video opened a file"))
    moved = repick_video(media, 24 * shift_ms)
    end_ms = media.candidates.end_sample // 24
    expected = _picked_by_pts(pts_ms, shift_ms, end_ms, GRID.num_chunks(media.num_samples))
    got = {int(c): int(round(float(f.mean()) / 10)) for c, f in zip(moved.frame_chunks, moved.frames_rgb)}
    assert got == expected
    assert moved.offset_sample == media.video.offset_sample - 24 * shift_ms
    if shift_ms == 0:
        assert np.array_equal(moved.frames_rgb, media.video.frames_rgb)
        assert np.array_equal(moved.frame_chunks, media.video.frame_chunks)


def test_frame_candidates_past_their_limit_are_dropped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import microturn.media.video as video

    cfg = DecodeConfig()
    monkeypatch.setitem(video.MAX_CANDIDATE_BYTES, "spilled", 5 * cfg.frame_width * cfg.frame_height * 3)
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    mp4 = write_video(tmp_path / "v.mp4", 20)
    spec = _spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mp4)})
    out = decode_session(spec, cfg, trace=True, candidates=True)
    assert out.candidates is None and "video_candidates_dropped:>5" in out.warnings
    assert out.trace is not None and out.trace.times_sample.shape == (20,)  # the estimate still runs
    with pytest.raises(ValueError):
        repick_video(out, 2400)


# ---------------------------------------------------------------- bounded buffers on crafted input
# The limit is small here (60 s) so that, without it, decode would quietly build minutes of timeline
# (the test fails) instead of hours (the machine swaps); the slow test in test_crafted_inputs.py
# runs the real 10-hour files with the default limit and measures peak RSS.

_SHORT = DecodeConfig(max_duration_s=60, duration_tolerance_s=2)


def _too_long(spec: SessionSpec, cfg: DecodeConfig = _SHORT) -> StageError:
    import tracemalloc

    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        with pytest.raises(StageError) as info:
            decode_session(spec, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.value.stage, info.value.reason) == ("decode", "too_long"), str(info.value)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    return info.value


def test_audio_timestamps_jumping_past_the_limit_are_refused_before_padding(tmp_path: Path) -> None:
    wav = pcm_with_timestamp_jump(tmp_path / "jump.wav", jump_s=600)
    err = _too_long(_spec(audio=[{"uri": str(wav), "speaker": "A"}]))
    assert "jump by 600.0 s" in err.message and err.source == str(wav)


def test_a_small_timestamp_jump_is_still_filled_with_silence(tmp_path: Path) -> None:
    wav = pcm_with_timestamp_jump(tmp_path / "jump.wav", jump_s=3)
    out = decode_session(_spec(audio=[{"uri": str(wav), "speaker": "A"}]), _SHORT)
    assert out.num_samples == 24000 * 7 and any(w.startswith("audio_gap:3.000s") for w in out.warnings)


def test_a_last_video_frame_lasting_past_the_limit_is_refused(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    mkv = video_with_times(tmp_path / "v.mkv", [100 * i for i in range(20)], last_duration_ms=600_000)
    err = _too_long(_spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mkv)}))
    assert "last video frame" in err.message


def test_video_timestamps_jumping_past_the_limit_are_refused(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    pts = [100 * i for i in range(10)] + [600_000 + 100 * i for i in range(10)]
    mkv = video_with_times(tmp_path / "v.mkv", pts, last_duration_ms=100)
    err = _too_long(_spec(audio=[{"uri": str(wav), "speaker": "A"}], video={"uri": str(mkv)}))
    assert "video frame's timestamp" in err.message


def test_a_manifest_offset_past_the_limit_is_refused_before_placing(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    b = write_wav(tmp_path / "b.wav", burst(16000, 2.0, [(0.5, 1.0)]), 16000)
    spec = _spec(audio=[{"uri": str(a), "speaker": "A"}, {"uri": str(b), "speaker": "B", "offset_s": 3600.0}])
    err = _too_long(spec)
    assert "offsets" in err.message and err.source == "s"
