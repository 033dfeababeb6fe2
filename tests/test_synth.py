"""The synthetic conversation generator: real files, exact truth, deterministic bytes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microturn.manifest import load_manifest
from microturn.synth import SessionTruth, load_truth, loudness_envelope, synthesize_corpus, synthesize_session

av = pytest.importorskip("av")

FRAME_S = 0.02  # 20 ms analysis frames


# ---------------------------------------------------------------- helpers


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """float64 [channels, samples] and the sample rate, decoded with PyAV."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        channels = stream.codec_context.channels
        parts = []
        for frame in c.decode(stream):
            arr = frame.to_ndarray()
            parts.append(arr if frame.format.is_planar else arr.reshape(-1, channels).T)
        rate = stream.codec_context.sample_rate
    wave = np.concatenate(parts, axis=1)
    scale = 32768.0 if wave.dtype == np.int16 else 1.0
    return wave.astype(np.float64) / scale, rate


def decode_luma_halves(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times_s [n], mean luma [n, 2] of the left and right halves, away from the divider)."""
    times, halves = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            y = frame.to_ndarray(format="gray").astype(np.float64)
            w = y.shape[1]
            times.append(float(frame.time))
            halves.append((y[:, : w // 2 - 4].mean(), y[:, w // 2 + 4 :].mean()))
    return np.asarray(times), np.asarray(halves)


def truth_active(truth: SessionTruth, speaker: str, times_s: np.ndarray) -> np.ndarray:
    active = np.zeros(times_s.size, dtype=bool)
    for s in truth.segments_of(speaker):
        active |= (times_s >= s.start_s) & (times_s < s.end_s)
    return active


def frame_energy_db(wave: np.ndarray, rate: int) -> np.ndarray:
    hop = int(FRAME_S * rate)
    frames = wave[: wave.size // hop * hop].reshape(-1, hop)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def session_dirs(manifest: Path) -> list[Path]:
    return [manifest.parent / row["session_id"] for row in map(json.loads, manifest.read_text().splitlines())]


def digest_tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def long_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SessionTruth]:
    """One 20 s session (its folder and truth) with video lagging the audio by 200 ms."""
    folder = tmp_path_factory.mktemp("long")
    return folder, synthesize_session(folder, "long", seed=7, duration_s=20.0, av_offset_ms=200.0)


# ---------------------------------------------------------------- determinism and speed


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, corpus_factory) -> None:
    make_corpus = corpus_factory
    kw = dict(sessions=2, duration_s=5.0, av_offset_ms=[0.0, 80.0])
    first = digest_tree(make_corpus(tmp_path / "a", seed=3, **kw).parent)
    second = digest_tree(make_corpus(tmp_path / "b", seed=3, **kw).parent)
    other = digest_tree(make_corpus(tmp_path / "c", seed=4, **kw).parent)
    assert len(first) == 1 + 2 * 5  # manifest + per session: video, A, B, transcript, truth
    assert first == second
    media_first = {k.split("/", 1)[1]: v for k, v in first.items() if "/" in k}
    media_other = {k.split("/", 1)[1]: v for k, v in other.items() if "/" in k}
    assert media_first.keys() == media_other.keys()
    assert all(media_first[k] != media_other[k] for k in media_first)


def test_files_carry_no_timestamps_or_encoder_versions(synth_corpus: Path) -> None:
    for folder in session_dirs(synth_corpus):
        for f in folder.iterdir():
            data = f.read_bytes()
            assert b"Lavf" not in data and b"Lavc" not in data, f
            assert b"creation_time" not in data, f


def test_a_twenty_second_session_takes_well_under_two_cpu_seconds(tmp_path: Path) -> None:
    synthesize_session(tmp_path / "warm", "warm", duration_s=2.0)  # imports and codec set-up
    t0 = time.process_time()
    synthesize_session(tmp_path / "s", "s", seed=1, duration_s=20.0)
    assert time.process_time() - t0 < 2.0


# ---------------------------------------------------------------- containers


def test_files_decode_to_declared_durations_channels_and_rates(synth_corpus: Path) -> None:
    for folder in session_dirs(synth_corpus):
        truth = load_truth(folder / "truth.json")
        n = round(truth.duration_s * truth.sample_rate)
        for spk in ("A", "B"):
            wave, rate = decode_audio(folder / truth.files[f"audio_{spk}"])
            assert rate == truth.sample_rate == 16000
            assert wave.shape == (1, n - round(truth.audio_offsets_s[spk] * rate))
        with av.open(str(folder / "video.mp4")) as c:
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert video.codec_context.name in ("h264", "mpeg4")
            assert (video.codec_context.width, video.codec_context.height) == truth.frame_size == (160, 120)
            assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == 16000
            assert audio.codec_context.channels == 1
            assert float(video.start_time * video.time_base) == pytest.approx(truth.video_start_s, abs=1e-3)
            assert float(audio.duration * audio.time_base) == pytest.approx(truth.duration_s, abs=0.07)
        times, _ = decode_luma_halves(folder / "video.mp4")
        n_frames = round((truth.duration_s - truth.video_start_s) * truth.fps)
        expected = truth.video_start_s + np.arange(n_frames) / truth.fps
        np.testing.assert_allclose(times, expected, atol=1e-3)


def test_mp4_audio_is_the_mix_of_both_speakers(synth_corpus: Path) -> None:
    folder = session_dirs(synth_corpus)[0]
    truth = load_truth(folder / "truth.json")
    mixed, rate = decode_audio(folder / "video.mp4")
    e = frame_energy_db(mixed[0], rate)
    centers = (np.arange(e.size) + 0.5) * FRAME_S
    for spk in ("A", "B"):
        only = truth_active(truth, spk, centers) & ~truth_active(truth, "B" if spk == "A" else "A", centers)
        silent = ~truth_active(truth, "A", centers) & ~truth_active(truth, "B", centers)
        assert np.median(e[only]) > np.median(e[silent]) + 25


def test_stereo_layout_writes_one_two_channel_file_referenced_twice(tmp_path: Path, corpus_factory) -> None:
    manifest = corpus_factory(tmp_path, sessions=1, duration_s=6.0, layout="stereo", video=False)
    (spec,), problems = load_manifest(manifest, strict=True)
    assert not problems and spec.video is None
    assert [(a.channel, a.speaker) for a in spec.audio] == [(0, "A"), (1, "B")]
    assert spec.audio[0].uri == spec.audio[1].uri
    truth = load_truth(tmp_path / spec.session_id / "truth.json")
    wave, rate = decode_audio(Path(spec.audio[0].uri))
    assert wave.shape == (2, round(truth.duration_s * rate))
    for ch, spk in enumerate(("A", "B")):
        e = frame_energy_db(wave[ch], rate)
        centers = (np.arange(e.size) + 0.5) * FRAME_S
        assert_energy_follows_own_voice(e, truth, spk, centers)


def test_mixed_layout_writes_one_mono_track_without_speaker(tmp_path: Path, corpus_factory) -> None:
    manifest = corpus_factory(
        tmp_path, sessions=1, duration_s=6.0, layout="mixed", video=False, audio_format="flac"
    )
    (spec,), _ = load_manifest(manifest, strict=True)
    (source,) = spec.audio
    assert source.speaker is None and source.uri.endswith("mixed.flac")
    wave, rate = decode_audio(Path(source.uri))
    assert wave.shape == (1, 6 * rate)


# ---------------------------------------------------------------- the conversation


def assert_truth_invariants(truth: SessionTruth) -> None:
    """What every session's truth promises, whatever the seed and length."""
    times = [x for s in truth.segments for x in (s.start_s, s.end_s)] + [
        x for e in truth.events for x in (e.start_s, e.end_s)
    ]
    assert all(0 <= x <= truth.duration_s for x in times)
    assert all(e.start_s < e.end_s for e in truth.events)
    for spk in ("A", "B"):
        segs = sorted(truth.segments_of(spk), key=lambda s: s.start_s)
        assert all(a.end_s < b.start_s for a, b in zip(segs, segs[1:])), "a speaker never overlaps themself"
        for w in (w for w in truth.words if w.speaker == spk):
            assert any(s.start_s <= w.start_s < w.end_s <= s.end_s for s in segs)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", w.word) for w in truth.words)
    turns = truth.events_of("turn")
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:])), "turns alternate"
    for bc in truth.events_of("backchannel"):
        assert 0.2 <= bc.end_s - bc.start_s <= 0.56
        # Inside one of the other's turns, which goes on afterwards: the floor does not change.
        assert any(t.speaker == bc.other and t.start_s < bc.start_s and bc.end_s < t.end_s for t in turns)
    for it in truth.events_of("interruption"):
        interrupted = [t for t in turns if t.speaker == it.other and t.start_s < it.start_s < t.end_s]
        taker = [t for t in turns if t.speaker == it.speaker and t.start_s == it.start_s]
        assert len(interrupted) == 1 and len(taker) == 1
        # The interrupted speaker talks on for 0.3-0.75 s, then stops, while the interrupter goes on.
        assert interrupted[0].end_s == it.end_s and 0.3 <= it.end_s - it.start_s <= 0.75
        assert taker[0].end_s >= it.end_s + 0.3
    # Overlap length tells the two overlapping floor transfers apart: a turn transition's next speaker
    # starts at most 0.2 s before the turn's end, an interruption overlaps for at least 0.3 s.
    for o in truth.events_of("overlap"):
        if o.cause == "transition":
            assert o.end_s - o.start_s <= 0.2
        elif o.cause == "interruption":
            assert 0.3 <= o.end_s - o.start_s <= 0.75
    frames = truth.activity("A", 50.0)
    assert frames.size == np.ceil(truth.duration_s * 50)
    assert np.array_equal(frames, truth_active(truth, "A", (np.arange(frames.size) + 0.5) / 50.0))
    # Every overlap is exactly where both truth activities hold.
    t = np.arange(0, truth.duration_s, 0.001)
    both = truth_active(truth, "A", t) & truth_active(truth, "B", t)
    in_overlap = np.zeros(t.size, dtype=bool)
    for o in truth.events_of("overlap"):
        in_overlap |= (t >= o.start_s) & (t < o.end_s)
    assert np.array_equal(both, in_overlap)
    for p in truth.events_of("pause"):
        assert not truth_active(truth, p.speaker, np.linspace(p.start_s, p.end_s, 50)[1:-1]).any()
    for g in truth.events_of("gap"):
        mid = np.linspace(g.start_s, g.end_s, 50)[1:-1]
        assert not (truth_active(truth, "A", mid) | truth_active(truth, "B", mid)).any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_a_twenty_second_session_has_overlaps_backchannels_and_interruptions(
    tmp_path: Path, seed: int
) -> None:
    truth = synthesize_session(tmp_path, "s", seed=seed, duration_s=20.0, video=False)
    assert {e.kind for e in truth.events} == {"turn", "gap", "pause", "overlap", "backchannel", "interruption"}
    assert {s.kind for s in truth.segments} == {"turn", "backchannel", "interruption"}
    assert {o.cause for o in truth.events_of("overlap")} >= {"transition", "interruption", "backchannel"}
    for it in truth.events_of("interruption"):
        taker = next(t for t in truth.events_of("turn") if t.start_s == it.start_s)
        assert taker.end_s > it.end_s  # the interrupter keeps the floor
    assert_truth_invariants(truth)


def test_truth_is_self_consistent(long_session: tuple[Path, SessionTruth]) -> None:
    assert_truth_invariants(long_session[1])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), duration_s=st.floats(2.0, 24.0))
def test_truth_invariants_hold_for_any_seed_and_length(tmp_path: Path, seed: int, duration_s: float) -> None:
    truth = synthesize_session(tmp_path / str(seed), "s", seed=seed, duration_s=duration_s, video=False)
    assert truth.duration_s == pytest.approx(duration_s, abs=1 / truth.sample_rate)
    assert_truth_invariants(truth)


def test_per_speaker_energy_follows_truth_segments(synth_corpus: Path) -> None:
    for folder in session_dirs(synth_corpus):
        truth = load_truth(folder / "truth.json")
        for spk in ("A", "B"):
            wave, rate = decode_audio(folder / truth.files[f"audio_{spk}"])
            e = frame_energy_db(wave[0], rate)
            centers = (np.arange(e.size) + 0.5) * FRAME_S + truth.audio_offsets_s[spk]  # session clock
            assert_energy_follows_own_voice(e, truth, spk, centers)


def assert_energy_follows_own_voice(e: np.ndarray, truth: SessionTruth, spk: str, centers: np.ndarray) -> None:
    """Loud where this microphone's speaker talks, quiet where nobody does (where only the other
    talks the room bleed is 6-20 dB down: loud enough to fool an energy threshold, by design)."""
    active = e > np.percentile(e, 95) - 20.0
    own = truth_active(truth, spk, centers)
    other = truth_active(truth, "B" if spk == "A" else "A", centers)
    assert np.mean(active[own]) >= 0.9, spk
    assert np.mean(~active[~own & ~other]) >= 0.8, spk


def test_per_speaker_files_hold_room_cross_talk_and_noise(synth_corpus: Path) -> None:
    """Each microphone hears the other voice at the level the truth states (6-20 dB down), and its own
    noise floor below that."""
    folder = session_dirs(synth_corpus)[0]
    truth = load_truth(folder / "truth.json")
    assert truth.crosstalk["mode"] == "room"
    energy, centers = {}, {}
    for spk in ("A", "B"):
        wave, rate = decode_audio(folder / truth.files[f"audio_{spk}"])
        energy[spk] = frame_energy_db(wave[0], rate)
        centers[spk] = (np.arange(energy[spk].size) + 0.5) * FRAME_S + truth.audio_offsets_s[spk]
    for me, other in (("A", "B"), ("B", "A")):
        # Frames where only the other speaks, on both files' clocks at once.
        t = centers[me]
        only_other = truth_active(truth, other, t) & ~truth_active(truth, me, t)
        silent = ~truth_active(truth, other, t) & ~truth_active(truth, me, t)
        j = np.round((t - truth.audio_offsets_s[other]) / FRAME_S - 0.5).astype(int)
        j = np.clip(j, 0, energy[other].size - 1)
        leak_db = np.median(energy[me][only_other] - energy[other][j[only_other]])
        stated = truth.crosstalk[f"to_{me}"]["level_db"]
        gains = truth.crosstalk["gain_db"]
        assert -20 <= stated <= -6
        # frame medians of a reverberant copy sit a few dB off its power ratio; gains shift it too
        assert abs(leak_db - (stated + gains[me] - gains[other])) < 6, (me, leak_db, stated)
        noise_db = np.median(energy[me][silent])
        assert -90 < noise_db < np.median(energy[me][only_other]) - 5  # present, and below the leak


def test_voices_are_speech_like_with_distinct_pitch(long_session: tuple[Path, SessionTruth]) -> None:
    folder, truth = long_session
    pitches = {}
    for spk in ("A", "B"):
        wave, rate = decode_audio(folder / truth.files[f"audio_{spk}"])
        x = wave[0]
        hop = int(0.04 * rate)
        frames = x[: x.size // hop * hop].reshape(-1, hop)
        rms = np.sqrt(np.mean(frames**2, axis=1))
        loud = frames[rms > np.percentile(rms, 90) * 0.5]
        # Pitch by autocorrelation within 70-400 Hz on the loud frames.
        spec = np.fft.rfft(loud * np.hanning(hop), n=2 * hop)
        ac = np.fft.irfft(np.abs(spec) ** 2)[:, :hop]
        lags = np.arange(rate // 400, rate // 70)
        f0 = rate / lags[np.argmax(ac[:, lags], axis=1)]
        pitches[spk] = float(np.median(f0))
        # Not a pure tone: energy spread over many harmonics and formants (above 1 kHz: > 3 %).
        power = np.abs(np.fft.rfft(loud, axis=1)) ** 2
        freqs = np.fft.rfftfreq(hop, 1 / rate)
        assert np.sum(power[:, freqs > 1000]) / np.sum(power) > 0.03
        # Noise consonants: among the frames with any speech, some carry most of their energy above 3 kHz.
        speech = frames[rms > np.percentile(rms, 90) * 0.1]
        power = np.abs(np.fft.rfft(speech, axis=1)) ** 2
        hi = np.sum(power[:, freqs > 3000], axis=1) / np.sum(power, axis=1)
        assert np.mean(hi > 0.5) > 0.03
    assert 100 <= pitches["A"] <= 145
    assert 180 <= pitches["B"] <= 245


def test_video_brightness_follows_each_speakers_loudness_at_the_declared_offset(
    long_session: tuple[Path, SessionTruth],
) -> None:
    folder, truth = long_session
    times, luma = decode_luma_halves(folder / "video.mp4")

    def corr(spk: str, half: int, offset_ms: float) -> float:
        wave, rate = decode_audio(folder / truth.files[f"audio_{spk}"])
        file_times = times - offset_ms / 1000 - truth.audio_offsets_s[spk]
        env = loudness_envelope(wave[0], rate, file_times, 1 / truth.fps)
        return float(np.corrcoef(env, luma[:, half])[0, 1])

    assert truth.av_offset_ms == 200.0
    for half, spk in enumerate(("A", "B")):
        at_truth = corr(spk, half, truth.av_offset_ms)
        assert at_truth > 0.9
        assert at_truth > corr(spk, half, 0.0) + 0.1  # the offset is real, not a no-op
        assert at_truth > corr(spk, half, 400.0) + 0.1
    assert corr("B", 0, truth.av_offset_ms) < 0.5  # the left half is A, not B


# ---------------------------------------------------------------- manifest and transcript


def test_manifest_validates_and_points_at_the_files(synth_corpus: Path) -> None:
    sessions, problems = load_manifest(synth_corpus, strict=True)
    assert not problems and [s.session_id for s in sessions] == ["synth-0-000", "synth-0-001"]
    for spec in sessions:
        assert spec.language == "en" and spec.transcript is not None and spec.transcript.format == "json"
        assert [a.speaker for a in spec.audio] == ["A", "B"]
        assert all(Path(u).is_file() for u in spec.source_uris())
        truth = load_truth(synth_corpus.parent / spec.meta["truth"])
        assert truth.session_id == spec.session_id
        assert {a.speaker: a.offset_s for a in spec.audio} == truth.audio_offsets_s
        assert spec.video is not None and spec.video.offset_s == 0.0  # the sync error is only in the truth
        words = json.loads(Path(spec.transcript.uri).read_text())["words"]
        expected = [{"speaker": w.speaker, "word": w.word, "start": w.start_s, "end": w.end_s} for w in truth.words]
        assert words == expected
    assert [load_truth(synth_corpus.parent / s.meta["truth"]).av_offset_ms for s in sessions] == [0.0, 120.0]


def test_truth_round_trips_through_json(long_session: tuple[Path, SessionTruth]) -> None:
    folder, truth = long_session
    assert load_truth(folder / "truth.json") == truth


@pytest.mark.parametrize(
    "kw",
    [
        dict(duration_s=1.0),
        dict(layout="quad"),
        dict(frame_size=(161, 120)),
        dict(fps=0),
        dict(sample_rate=12345),
        dict(av_offset_ms=[0.0]),
        dict(sessions=0),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kw: dict) -> None:
    args = dict(sessions=2, duration_s=3.0) | kw
    with pytest.raises(ValueError):
        synthesize_corpus(tmp_path, **args)


def test_direct_crosstalk_keeps_the_old_easy_bleed(tmp_path: Path) -> None:
    truth = synthesize_session(tmp_path, "d", duration_s=4.0, video=False, crosstalk="direct")
    assert truth.crosstalk["mode"] == "direct" and truth.leakage_db == -25.0
    assert "rir" not in truth.crosstalk["to_A"]


def test_room_crosstalk_with_given_impulse_responses_is_recorded_and_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    irs = [np.concatenate([[1.0], 0.3 * rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)]) for _ in range(2)]
    a = synthesize_session(tmp_path / "a", "s", duration_s=4.0, video=False, room_irs=irs, leakage_db=-10.0)
    b = synthesize_session(tmp_path / "b", "s", duration_s=4.0, video=False, room_irs=irs, leakage_db=-10.0)
    assert a.crosstalk == b.crosstalk and a.crosstalk["to_B"]["rir"].startswith("room_irs[")
    assert a.crosstalk["to_A"]["level_db"] == -10.0 and 2.0 <= a.crosstalk["to_A"]["delay_ms"] <= 8.0
    assert (tmp_path / "a" / "A.wav").read_bytes() == (tmp_path / "b" / "A.wav").read_bytes()
    with pytest.raises(ValueError):
        synthesize_session(tmp_path / "c", "s", duration_s=4.0, video=False, leakage_db=3.0)


def test_music_and_effects_is_deterministic_and_has_its_parts() -> None:
    """The VAD's non-speech check signal: same seed, same samples; the band, the applause, the bell and
    the whoosh each where the doc says (loud enough to matter), within [-0.5, 0.5]."""
    from microturn.synth import music_and_effects

    a, b = music_and_effects(0, 16000, 20.0), music_and_effects(0, 16000, 20.0)
    assert a.shape == (320000,) and np.array_equal(a, b)
    assert not np.array_equal(a, music_and_effects(1, 16000, 20.0))
    assert float(np.max(np.abs(a))) == pytest.approx(0.5)
    rms = lambda s, e: float(np.sqrt(np.mean(a[int(s * 16000) : int(e * 16000)] ** 2)))  # noqa: E731
    for start, end in ((0.5, 8.5), (9.2, 11.8), (12.1, 13.4), (13.6, 14.9), (15.2, 19.8)):
        assert rms(start, end) > 0.01, (start, end)
