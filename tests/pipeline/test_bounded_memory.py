"""Memory bounded by window, not by session: no stage makes whole-session copies of the waves, and the
blockwise measures that replace them give exactly what the whole-wave ones gave (the shards must not change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.align import quality as q
from microturn.align.av_offset import _zscore, estimate_av_offset
from microturn.align.vad import SPEECH_BANDS_HZ, band_powers, frame_energy_db
from microturn.clock import HOP
from microturn.config import AlignConfig, DecodeConfig
from microturn.media import spill
from microturn.media.video import repick_video
from microturn.manifest import SessionSpec
from microturn.pipeline.align import align_session
from microturn.pipeline.decode import decode_session
from microturn.pipeline.tokenize import padded_waves
from microturn.records import VideoTrace
from tests.media_helpers import burst, read_audio, write_wav


def _wave(seed: int, n: int, scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _band_powers_of_a_padded_copy(wave: np.ndarray, frames: int, block: int = 2048) -> np.ndarray:
    """band_powers as it was: windows cut from a whole-session float64 zero-padded copy."""
    win = 2 * HOP
    padded = np.zeros((frames + 1) * HOP + HOP, dtype=np.float64)
    n = min(wave.shape[0], frames * HOP)
    padded[HOP // 2 : HOP // 2 + n] = wave[:n]
    band = np.digitize(np.fft.rfftfreq(win, 1.0 / 24000), SPEECH_BANDS_HZ) - 1
    out = np.zeros((len(SPEECH_BANDS_HZ) - 1, frames))
    for start in range(0, frames, block):  # numpy's FFT rounds differently for other batch sizes
        stop = min(start + block, frames)
        idx = np.arange(start, stop)[:, None] * HOP + np.arange(win)[None, :]
        spec = np.abs(np.fft.rfft(padded[idx] * np.hanning(win)[None, :], axis=1)) ** 2
        for b in range(out.shape[0]):
            out[b, start:stop] = spec[:, band == b].sum(axis=1)
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), frames=st.integers(1, 4500), extra=st.integers(-400, 400))
def test_frame_measures_equal_those_of_a_padded_copy(seed: int, frames: int, extra: int) -> None:
    wave = _wave(seed, max(frames * HOP + extra, 0), 0.1)
    assert band_powers(wave, frames).tobytes() == _band_powers_of_a_padded_copy(wave, frames).tobytes()
    padded = np.zeros(frames * HOP, dtype=np.float32)
    padded[: min(wave.shape[0], padded.shape[0])] = wave[: padded.shape[0]]
    power = np.mean(np.square(padded.reshape(frames, HOP), dtype=np.float64), axis=1)
    assert frame_energy_db(wave, frames).tobytes() == (10.0 * np.log10(power + 1e-10)).astype(np.float32).tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_blockwise_quality_figures_equal_the_whole_wave_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.choice([3, 4097, (1 << 20) + 5, 3 << 20]))
    a = _wave(seed, n, float(rng.choice([1e-3, 0.1, 2.0])))
    mix = float(rng.uniform())
    b = (mix * a + (1 - mix) * _wave(seed + 1, n, 0.1)).astype(np.float32) if seed % 4 else a.copy()
    lo, hi = q.similarity_bounds(a, b)
    assert lo <= q.channel_similarity(a, b) <= hi
    assert q.rounded_similarity([(a, b)], 4) == round(q.channel_similarity(a, b), 4)
    assert q.rounded_rms_db(a, 2) == round(q.rms_db(a), 2)
    assert q.clipped_ratio(a) == float(np.mean(np.abs(a) >= q.CLIP_LEVEL))
    for threshold in (0.5, 0.98):
        assert q.are_duplicates(a, b, threshold)[0] == (
            q.channel_similarity(a, b) >= threshold and abs(q.rms_db(a) - q.rms_db(b)) <= 6.0)


def _stereo_session(tmp_path: Path, channels: list[int]) -> SessionSpec:
    left, right = burst(16000, 3.0, [(0.5, 1.2)]), burst(16000, 3.0, [(1.6, 2.4)], freq=330)
    wav = write_wav(tmp_path / "stereo.wav", np.stack([left, right]), 16000)
    rows = [{"uri": str(wav), "channel": c, "speaker": "AB"[i]} for i, c in enumerate(channels)]
    return SessionSpec.model_validate({"session_id": "s", "audio": rows})


def _copied(streams: tuple, padded: int) -> np.ndarray:
    out = np.zeros((len(streams), padded), dtype=np.float32)
    for i, s in enumerate(streams):
        out[i, : s.wave_24k.shape[0]] = s.wave_24k
    return out


def test_streams_of_one_file_share_its_buffer_and_tokenize_reads_it_in_place(tmp_path: Path) -> None:
    media = decode_session(_stereo_session(tmp_path, [0, 1]), DecodeConfig())
    a, b = media.streams
    assert a.wave_24k.base is not None and a.wave_24k.base is b.wave_24k.base  # no per-stream copies
    waves = padded_waves(media)
    assert np.shares_memory(waves, a.wave_24k)  # no session-sized copy for tokenization
    assert waves.tobytes() == _copied(media.streams, waves.shape[1]).tobytes()


def test_a_file_with_an_unused_channel_is_copied_not_kept_whole(tmp_path: Path) -> None:
    media = decode_session(_stereo_session(tmp_path, [1]), DecodeConfig())
    (stream,) = media.streams
    assert not isinstance(stream.wave_24k.base, np.ndarray)  # its own storage: a view would keep channel 0 alive
    waves = padded_waves(media)
    assert not np.shares_memory(waves, stream.wave_24k)
    assert waves.tobytes() == _copied(media.streams, waves.shape[1]).tobytes()


def test_align_drops_the_16k_waves_only_when_asked(tmp_path: Path) -> None:
    spec = _stereo_session(tmp_path, [0, 1])
    cfg = AlignConfig(vad="energy")
    kept, timeline = align_session(decode_session(spec, DecodeConfig()), spec, cfg)
    released, same = align_session(decode_session(spec, DecodeConfig()), spec, cfg, release_16k=True)
    assert all(s.wave_16k is not None for s in kept.streams)
    assert all(s.wave_16k is None for s in released.streams)
    assert same.activity.tobytes() == timeline.activity.tobytes() and same.quality == timeline.quality


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_spilled_wave_reads_back_after_its_pages_are_released_and_leaves_no_file(tmp_path: Path) -> None:
    wave = spill.zeros((2, 16 << 20), tmp_path)  # 128 MB
    assert list(tmp_path.iterdir()) == []  # unlinked as soon as mapped: a crashed worker leaves nothing
    assert spill.spill_folder(wave[1, 5:]) == str(tmp_path)
    before = _rss_mb()
    for row in range(2):
        for start in range(0, wave.shape[1], 1 << 20):
            wave[row, start : start + (1 << 20)] = np.arange(start, start + (1 << 20), dtype=np.float32) + row
            spill.release(wave[row, start : start + (1 << 20)])
    assert _rss_mb() - before < 32  # 128 MB written, a window of it resident
    assert wave[1, 12345] == 12346.0 and wave[0, (16 << 20) - 1] == float((16 << 20) - 1)


def test_release_leaves_an_array_in_memory_alone() -> None:
    wave = np.arange(1 << 20, dtype=np.float32)
    spill.release(wave[100:])
    assert spill.spill_folder(wave) is None
    assert wave.tobytes() == np.arange(1 << 20, dtype=np.float32).tobytes()


def test_spilling_into_a_missing_folder_holds_the_wave_in_memory_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wave = spill.zeros((3, 10), tmp_path / "missing")
    assert wave.shape == (3, 10) and not wave.any() and spill.spill_folder(wave) is None
    assert "holding it in memory" in caplog.text


def test_decode_spills_the_waves_and_they_equal_the_in_memory_ones(tmp_path: Path) -> None:
    spec = _stereo_session(tmp_path, [1, 0])
    (tmp_path / "spill").mkdir()
    on = decode_session(spec, DecodeConfig(spill_dir=tmp_path / "spill"))
    off = decode_session(spec, DecodeConfig(spill=False))
    for a, b in zip(on.streams, off.streams):
        assert spill.spill_folder(a.wave_24k) == str(tmp_path / "spill") and spill.spill_folder(b.wave_24k) is None
        assert a.wave_24k.tobytes() == b.wave_24k.tobytes() and a.wave_16k.tobytes() == b.wave_16k.tobytes()
    assert padded_waves(on).tobytes() == padded_waves(off).tobytes()


def test_picked_frames_and_frame_candidates_are_spilled_too_and_equal_the_in_memory_ones(tmp_path: Path) -> None:
    from tests.media_helpers import write_video

    video = write_video(tmp_path / "v.mp4", 600, fps=10, size=(48, 32))  # 60 s: 300 chunks, the store grows
    spec = SessionSpec.model_validate({"session_id": "v", "video": {"uri": str(video)},
                                       "audio": [{"uri": str(write_wav(tmp_path / "a.wav", burst(16000, 60.0, [(1, 2)]), 16000))}]})
    (tmp_path / "spill").mkdir()
    small = dict(frame_width=32, frame_height=24)
    media_on = decode_session(spec, DecodeConfig(spill_dir=tmp_path / "spill", **small), candidates=True)
    media_off = decode_session(spec, DecodeConfig(spill=False, **small), candidates=True)
    on, off = media_on.video, media_off.video
    assert spill.spill_folder(on.frames_rgb) == str(tmp_path / "spill") and spill.spill_folder(off.frames_rgb) is None
    assert len(on.frames_rgb) == 300 and on.frames_rgb.tobytes() == off.frames_rgb.tobytes()
    assert on.frame_chunks.tobytes() == off.frame_chunks.tobytes()
    # every decoded frame, kept for re-picking after an A/V offset: on disk as well, the same pixels
    cand_on, cand_off = media_on.candidates, media_off.candidates
    assert spill.spill_folder(cand_on.frames_rgb) == str(tmp_path / "spill") and spill.spill_folder(cand_off.frames_rgb) is None
    assert len(cand_on.frames_rgb) == 600 and cand_on.frames_rgb.tobytes() == cand_off.frames_rgb.tobytes()
    assert cand_on.samples.tobytes() == cand_off.samples.tobytes()
    # and the frames picked from them again for a 100 ms offset: on disk too, no copy of them in memory
    moved_on, moved_off = repick_video(media_on, 2400), repick_video(media_off, 2400)
    assert spill.spill_folder(moved_on.frames_rgb) == str(tmp_path / "spill")
    assert moved_on.frames_rgb.tobytes() == moved_off.frames_rgb.tobytes() and len(moved_on.frames_rgb) == 300


def test_pyannote_on_pieces_of_a_session_gives_the_probabilities_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyannote.audio

    from microturn.align import vad

    sample = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    if not sample.exists():
        pytest.skip("pyannote sample not installed")
    call = read_audio(sample, 16000)[0].astype(np.float32)  # a 30 s two-speaker call
    wave = np.concatenate([call, call[::-1], call])
    frames = wave.shape[0] * 75 // 16000
    inference = vad.load_pyannote()
    whole = vad.pyannote_probability(inference, wave, frames)  # 90 s: one piece
    monkeypatch.setattr(vad, "VAD_PIECE_S", 27)  # 4 pieces of 27 s, each with 27 s of context either side
    pieces = vad.pyannote_probability(inference, wave, frames)
    assert np.abs(pieces - whole).max() < 1e-6  # measured: 5e-10
    assert (vad.binarize(pieces) == vad.binarize(whole)).all()


def test_tokens_from_spilled_waves_equal_those_from_waves_in_memory(tmp_path: Path) -> None:
    from microturn.config import FrameCodecConfig, TokenizerConfig
    from microturn.pipeline.tokenize import tokenize_input, tokenize_session
    from microturn.tokenizers import load_tokenizers

    spec = _stereo_session(tmp_path, [0, 1])
    toks = load_tokenizers(TokenizerConfig(frames=FrameCodecConfig(image_size=32, downsample=4, hidden=16)))
    built = []
    for on in (True, False):
        media, timeline = align_session(decode_session(spec, DecodeConfig(spill=on)), spec, AlignConfig(), release_16k=True)
        assert (spill.spill_folder(media.streams[0].wave_24k) is not None) == on
        built.append((timeline, tokenize_session(tokenize_input(media, timeline), toks)))
    (t_on, k_on), (t_off, k_off) = built
    assert t_on.activity.tobytes() == t_off.activity.tobytes() and t_on.quality == t_off.quality
    assert sorted(k_on.arrays) == sorted(k_off.arrays)
    assert all(k_on.arrays[m].tobytes() == k_off.arrays[m].tobytes() for m in k_on.arrays)


def test_the_bleed_model_gives_the_same_ratios_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from microturn.align import crosstalk

    rng = np.random.default_rng(3)
    talk = burst(24000, 12.0, [(0.5, 4.0), (7.0, 11.0)]).astype(np.float32)
    other = burst(24000, 12.0, [(4.2, 6.8)], freq=330).astype(np.float32)
    noise = rng.normal(0, 1e-3, (2, talk.shape[0])).astype(np.float32)
    waves = [talk + 0.1 * other + noise[0], other + 0.1 * talk + noise[1]]  # each talker bleeds into the other mic
    frames = talk.shape[0] // HOP
    whole = crosstalk.own_to_bleed_db(waves, frames, crosstalk.AttributionParams())  # 900 frames: one block
    monkeypatch.setattr(crosstalk, "_BLOCK_FRAMES", 7)
    assert crosstalk.own_to_bleed_db(waves, frames, crosstalk.AttributionParams()).tobytes() == whole.tobytes()


def _offset_from_whole_session_sums(waves: list[np.ndarray], trace: VideoTrace, max_offset_ms: float) -> tuple[int, float, float]:
    """estimate_av_offset as it was: one float64 cumulative power sum over each whole stream, lag by lag."""
    n = trace.times_sample.shape[0]
    frame_len = int(np.median(np.diff(trace.times_sample)))
    half = max(frame_len // 2, 1)
    feats = _zscore(trace.features.astype(np.float64))
    feats = feats[:, feats.std(axis=0) > 0]
    cums = [np.concatenate([[0.0], np.cumsum(np.square(w, dtype=np.float64))]) for w in waves]
    lags_ms = np.arange(-max_offset_ms, max_offset_ms + 0.5, 1.0)
    best = np.zeros(lags_ms.shape[0])
    for i, lag_ms in enumerate(lags_ms):
        centres = trace.times_sample - int(round(lag_ms * 24))
        loud = []
        for c in cums:
            lo, hi = np.clip(centres - half, 0, c.shape[0] - 1), np.clip(centres + half, 0, c.shape[0] - 1)
            loud.append(np.sqrt(np.maximum(c[hi] - c[lo], 0.0) / np.maximum(hi - lo, 1)))
        best[i] = np.max(_zscore(np.stack(loud, axis=1)).T @ feats / n)
    k = int(np.argmax(best))
    far = np.abs(lags_ms - lags_ms[k]) > 2 * frame_len / 24
    runner_up = max(float(best[far].max()), 0.0)
    return int(round(lags_ms[k] * 24)), min(1.0, best[k] * (1.0 - runner_up / best[k]) * 2), float(best[k])


def _talking_video(seed: int, seconds: float, lag_ms: float) -> tuple[list[np.ndarray], VideoTrace]:
    """Two streams whose loudness comes and goes, and a 30 fps luma trace whose first cells follow the
    first stream's loudness ``lag_ms`` late (the rest is noise)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 24000)
    envelope = np.repeat(rng.uniform(0.0, 1.0, n // 2400 + 1), 2400)[:n]  # a new level every 100 ms
    waves = [(rng.standard_normal(n) * envelope).astype(np.float32),
             (rng.standard_normal(n) * rng.uniform(0.05, 0.2)).astype(np.float32)]
    times = np.arange(0, n, 800, dtype=np.int64)  # 30 fps, some frames near both ends of the audio
    seen = envelope[np.clip(times - int(lag_ms * 24), 0, n - 1)]
    features = rng.standard_normal((times.shape[0], 32)).astype(np.float32)
    features[:, :4] += 3.0 * seen[:, None].astype(np.float32)
    return waves, VideoTrace(times_sample=times, features=features)


@pytest.mark.parametrize("seed, lag_ms, block", [(0, 120.0, 1024), (1, -80.0, 7), (2, 0.0, 64), (3, 333.0, 100)])
def test_av_offset_block_by_block_equals_the_whole_session_sums(seed: int, lag_ms: float, block: int) -> None:
    waves, trace = _talking_video(seed, 20.0, lag_ms)
    est = estimate_av_offset(waves, trace, 500.0, block_frames=block)
    offset, confidence, peak = _offset_from_whole_session_sums(waves, trace, 500.0)
    assert est is not None and est.offset_sample == offset
    assert abs(offset - lag_ms * 24) <= 24 * 17  # and it finds the lag (within half a frame interval)
    assert abs(est.confidence - confidence) < 1.5e-4 and abs(est.peak_correlation - peak) < 1.5e-4


def test_av_offset_memory_is_bounded_by_the_block_not_the_session() -> None:
    import tracemalloc

    waves, trace = _talking_video(5, 600.0, 40.0)  # 10 minutes, two streams: 115 MB of float32
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; the inputs exist already
    try:
        est = estimate_av_offset(waves, trace, 500.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert est is not None and abs(est.offset_sample - 40 * 24) <= 24 * 17
    # whole-stream float64 power sums and their squares took 350 MB here (0.69 GB per stream and hour)
    assert peak < 80 * 2**20, peak / 2**20
