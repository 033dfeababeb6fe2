"""Who speaks when on two-microphone recordings with realistic room cross-talk (issue 18).

The figures these tests hold (and the old dominance rule's, as contrast) are measured by
benchmarks/crosstalk.py and written down in docs/crosstalk.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import f1, read_audio, shared
from microturn.align.crosstalk import attribute_activity, otsu_split, reverb_envelope
from microturn.align.quality import activity_correlation
from microturn.config import AlignConfig, DecodeConfig
from microturn.manifest import SessionSpec, load_manifest
from microturn.pipeline.align import align_session, detect_activity
from microturn.pipeline.decode import decode_session

RIRS = ("rir1.wav", "rir2.wav", "rir3.wav", "rir4.wav")


def real_rirs() -> list[np.ndarray]:
    return [read_audio(shared("rir", name))[0] for name in RIRS]


def truth_frames(spans, origin_s: float, frames: int) -> np.ndarray:
    centres = (np.arange(frames) + 0.5) / 75 + origin_s
    ref = np.zeros(frames, dtype=bool)
    for a, b in spans:
        ref |= (centres >= float(a)) & (centres < float(b))
    return ref


def overlap_ratio(act: np.ndarray) -> float:
    return float((act.astype(bool).sum(axis=0) >= 2).mean())


def room_sessions(tmp: Path, sessions: int, duration_s: float, seed: int = 0):
    from microturn.synth import load_truth, synthesize_corpus

    manifest = synthesize_corpus(tmp, sessions, seed, duration_s, video=False, room_irs=real_rirs())
    specs, problems = load_manifest(manifest)
    assert not problems
    return [(s, load_truth(tmp / s.session_id / "truth.json")) for s in specs]


def scores(spec, truth, cfg: AlignConfig) -> tuple[list[float], float, float, np.ndarray]:
    decoded = decode_session(spec, DecodeConfig())
    _, aligned = align_session(decoded, spec, cfg)
    act = aligned.activity
    origin = float(decoded.provenance.origin)
    ref = np.stack([truth_frames([(s.start_s, s.end_s) for s in truth.segments_of(k)], origin, act.shape[1]) for k in "AB"])
    return [f1(ref[k], act[k]) for k in range(2)], overlap_ratio(act), overlap_ratio(ref), act


# ---------------------------------------------------------------- fast: the parts


def test_otsu_split_separates_two_humps() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-12, 2, 300), rng.normal(10, 2, 100)])
    assert -6 < otsu_split(x) < 4


def test_reverb_envelope_holds_and_decays_at_the_stated_rate() -> None:
    p = np.zeros((1, 76))
    p[0, 0] = 1.0
    env = reverb_envelope(p, decay_db_per_s=60.0)
    assert env[0, 0] == 1.0
    assert 10 * np.log10(env[0, 75]) == pytest.approx(-60.0, abs=0.1)  # 75 frames = 1 s


@pytest.mark.xfail(
    strict=True,
    reason="known limit (measured: B F1 0.58, B on from 0.6 s while only A talks): a voice 100% "
    "amplitude-modulated at 4 Hz through a 0.4 s room has its reverberant bleed fill its own troughs; the "
    "bleed gain, estimated on A's loudest frames (the upper hump of the level difference, where the direct "
    "path dominates), is 10 dB under the bleed in those troughs. Real speech and the generator's voices pass.",
)
def test_bleed_alone_is_not_speech_but_both_at_their_own_mics_is() -> None:
    """A voice on mic 0 heard 10 dB down at mic 1 is mic 0's speaker only; later both talk into their
    own microphones at once (real overlap): both stay active. The VAD says speech on both throughout."""
    from microturn.synth import room_bleed, synthetic_rir

    rng = np.random.default_rng(1)
    sr, n = 24000, 24000 * 6
    t = np.arange(n) / sr

    def voice(f0: float, on: np.ndarray) -> np.ndarray:
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12))
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)  # 4 Hz syllable rhythm
        return 0.05 * tone * syllables * on

    a_on = (t >= 0.5) & (t < 5.5)  # A talks throughout
    b_on = (t >= 3.5) & (t < 5.5)  # B joins from 3.5 s (overlap)
    a, b = voice(120.0, a_on), voice(210.0, b_on)
    h = synthetic_rir(rng, sr, 0.4)
    mics = [a + room_bleed(b, h, -10.0, 72), b + room_bleed(a, h, -10.0, 72)]
    mics = [m + 1e-4 * rng.standard_normal(n) for m in mics]
    frames = n // 320
    vad = np.ones((2, frames), dtype=np.uint8)
    act = attribute_activity(vad, mics, 120, 150)
    centres = (np.arange(frames) + 0.5) / 75
    a_ref, b_ref = truth_frames([(0.5, 5.5)], 0, frames), truth_frames([(3.5, 5.5)], 0, frames)
    assert f1(a_ref, act[0]) >= 0.9 and f1(b_ref, act[1]) >= 0.9
    assert act[1][(centres > 1.0) & (centres < 3.3)].mean() == 0.0  # B's mic during A alone: bleed
    assert act[:, (centres > 3.8) & (centres < 5.3)].all(axis=0).mean() >= 0.9  # real overlap kept


def test_activity_correlation_flags_bleed_labelled_as_speech() -> None:
    turns = np.zeros((2, 300), dtype=np.uint8)
    turns[0, :150], turns[1, 150:] = 1, 1
    assert activity_correlation(turns) == pytest.approx(-1.0)
    bled = turns.copy()
    bled[1, :150] = 1  # B's channel "speaks" whenever A does
    bled[0, 150:] = 1
    assert activity_correlation(bled[:, :200]) > activity_correlation(turns[:, :200])
    assert activity_correlation(turns[:1]) is None


def test_room_crosstalk_session_attributed_per_speaker(tmp_path: Path) -> None:
    """One generated session, real impulse responses, levels 6-20 dB down: each speaker found on their
    own microphone only; the old rule's figures on the same session are lower (see docs/crosstalk.md)."""
    ((spec, truth),) = room_sessions(tmp_path, 1, 12.0, seed=0)
    f1s, ov, ov_truth, _ = scores(spec, truth, AlignConfig())
    assert min(f1s) >= 0.9, f1s
    assert abs(ov - ov_truth) <= 0.05, (ov, ov_truth)


def test_dominance_rule_still_selectable(tmp_path: Path) -> None:
    ((spec, _),) = room_sessions(tmp_path, 1, 6.0, seed=3)
    decoded = decode_session(spec, DecodeConfig())
    _, aligned = align_session(decoded, spec, AlignConfig(vad="energy", crosstalk="dominance"))
    assert "crosstalk:dominance" in aligned.flags and "crosstalk_suppressed" in aligned.flags
    assert "activity_correlation" in aligned.quality


def test_generated_music_and_effects_are_not_speech() -> None:
    """Chords with vibrato, drums, a 4 Hz melody, applause, a bell and a whoosh: speech ratio <= 5%.
    (The shared pancake video is no such case: its soundtrack holds a voice, f0 230-330 Hz.)"""
    from microturn.align.vad import load_pyannote, VadUnavailable
    from microturn.synth import music_and_effects, write_audio_file

    try:
        load_pyannote()
    except VadUnavailable as exc:
        pytest.skip(f"pyannote VAD unavailable: {exc}")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "music.wav"
        write_audio_file(wav, music_and_effects(0, 16000, 20.0)[None], 16000)
        spec = SessionSpec.model_validate({"session_id": "music", "audio": [{"uri": str(wav)}]})
        flags: list[str] = []
        act = detect_activity(decode_session(spec, DecodeConfig()), AlignConfig(), flags)
    assert "vad:pyannote" in flags
    assert act.mean() <= 0.05, act.mean()


def test_speech_like_runs_drop_what_the_model_half_believes() -> None:
    """Runs whose probability never gets sure, over a level that does not move with syllables, go;
    sure runs and syllable-modulated ones stay."""
    from microturn.align.vad import speech_like_runs

    sr, frames = 24000, 600
    t = np.arange(frames * 320) / sr
    steady = 0.1 * np.sin(2 * np.pi * 220 * t)  # a held note: no syllables
    syllables = steady * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) ** 2  # 4 Hz rise and fall
    active = np.zeros(frames, dtype=np.uint8)
    active[100:250] = active[350:500] = 1
    prob = np.where(active == 1, 0.8, 0.1).astype(np.float32)
    wave = np.concatenate([steady[: 300 * 320], syllables[300 * 320 :]])
    kept = speech_like_runs(active, prob, wave)
    assert kept[100:250].sum() == 0 and kept[350:500].all()  # half-believed note out, modulated voice in
    sure = prob.copy()
    sure[150] = 0.97
    assert speech_like_runs(active, sure, wave)[100:250].all()  # the model is sure: kept
    weak = np.where(active == 1, 0.6, 0.1).astype(np.float32)
    assert speech_like_runs(active, weak, wave).sum() == 0  # never past 0.7: out, modulated or not


# ---------------------------------------------------------------- slow: the must-show figures


@pytest.mark.slow
def test_room_crosstalk_sessions_f1_and_overlap(tmp_path: Path) -> None:
    results = []
    for spec, truth in room_sessions(tmp_path, 4, 30.0, seed=0):
        f1s, ov, ov_truth, _ = scores(spec, truth, AlignConfig())
        results.append((spec.session_id, f1s, ov, ov_truth))
    for sid, f1s, ov, ov_truth in results:
        assert min(f1s) >= 0.9, results
        assert abs(ov - ov_truth) <= 0.05, results


@pytest.mark.slow
@pytest.mark.parametrize("k", range(4))
def test_real_dialogue_cross_mixed_through_real_rooms(tmp_path: Path, k: int) -> None:
    """michaelandsickmichael.wav, each channel heard at the other mic through a real impulse response
    at -10 dB: per-speaker F1 >= 0.9 against its TextGrid."""
    from microturn.align.transcripts import read_transcript
    from microturn.synth import room_bleed, trim_rir, write_audio_file

    irs = real_rirs()
    x = read_audio(shared("dialogue", "michaelandsickmichael.wav"))
    mixed = np.stack(
        [
            x[0] + room_bleed(x[1], trim_rir(irs[(k + 1) % 4]), -10.0, 48),
            x[1] + room_bleed(x[0], trim_rir(irs[k]), -10.0, 48),
        ]
    )
    wav = tmp_path / "mm.wav"
    write_audio_file(wav, np.clip(mixed, -1, 1), 16000)
    spec = SessionSpec.model_validate(
        {
            "session_id": "mm",
            "audio": [{"uri": str(wav), "channel": 0, "speaker": "michael"}, {"uri": str(wav), "channel": 1, "speaker": "sickmichael"}],
        }
    )
    _, aligned = align_session(decode_session(spec, DecodeConfig()), spec, AlignConfig())
    segs = read_transcript(str(shared("dialogue", "michaelandsickmichael.TextGrid")), "textgrid")
    frames = aligned.activity.shape[1]
    for i, name in enumerate(("michael", "sickmichael")):
        ref = truth_frames([(s.start_s, s.end_s) for s in segs if s.speaker == name and s.text.strip()], 0.0, frames)
        assert f1(ref, aligned.activity[i]) >= 0.9, (name, f1(ref, aligned.activity[i]))
    assert aligned.quality["overlap_ratio"] <= 0.02


MOH = Path("/usr/share/asterisk/moh")  # Debian asterisk-moh-opsound-wav
EFFECTS = Path("/usr/share/sounds/freedesktop/stereo")  # Debian sound-theme-freedesktop


@pytest.mark.slow
def test_music_and_effects_recordings_are_not_speech(tmp_path: Path) -> None:
    """A music-on-hold track and the desktop sound effects one after another (their spoken channel
    names left out): speech ratio <= 5% each. benchmarks/crosstalk.py measures all five tracks."""
    from microturn.synth import write_audio_file

    effects = [f for f in sorted(EFFECTS.glob("*.oga")) if not f.name.startswith("audio-channel-")]
    music = MOH / "manolo_camp-morning_coffee.wav"
    if not effects or not music.exists():
        pytest.skip("music / effects recordings not installed (apt: asterisk-moh-opsound-wav, sound-theme-freedesktop)")
    reel = tmp_path / "effects.wav"
    parts = [np.concatenate([read_audio(f).mean(axis=0), np.zeros(8000)]) for f in effects]
    write_audio_file(reel, np.concatenate(parts)[None], 16000)
    ratios = {}
    for f in (music, reel):
        spec = SessionSpec.model_validate({"session_id": "ns", "audio": [{"uri": str(f), "channel": 0}]})
        act = detect_activity(decode_session(spec, DecodeConfig()), AlignConfig(), [])
        ratios[f.name] = float(act.mean())
    assert max(ratios.values()) <= 0.05, ratios


def test_a_fire_recording_from_the_shared_media_is_not_speech() -> None:
    """A real non-speech recording every checkout of the project has beside it (../shared/media): the
    crackle of fire2.mp4's soundtrack, which pyannote alone half-believes (0.297 speech before the gate)."""
    fire = shared("video", "fire2.mp4")
    spec = SessionSpec.model_validate({"session_id": "fire", "audio": [{"uri": str(fire), "channel": 0}]})
    act = detect_activity(decode_session(spec, DecodeConfig()), AlignConfig(), [])
    assert float(act.mean()) <= 0.05, float(act.mean())


def test_bleed_figures_reach_the_index() -> None:
    """The session's overlap ratio and activity correlation travel from meta.quality into the index
    (float32, null when not measured), so a data engineer can filter bleed-labelled sessions."""
    from microturn.format import INDEX_COLUMNS, index_row_from_meta

    meta = {
        "session_id": "s", "window_index": 0, "start_frame": 0, "num_frames": 150, "valid_frames": 150,
        "speakers": ["A", "B"],
        "stats": {"start_s": 0.0, "duration_s": 2.0, "session_duration_s": 2.0, "num_video_frames": 0,
                  "speech_ratio": 0.9, "overlap_ratio": 0.7, "word_count": 0, "event_counts": {}},
        "quality": {"overlap_ratio": 0.66, "activity_correlation": 0.81},
    }
    types = dict(INDEX_COLUMNS)
    assert types["session_overlap_ratio"] == types["activity_correlation"] == "float32"
    row = index_row_from_meta("k", meta, 10)
    assert (row["session_overlap_ratio"], row["activity_correlation"]) == (0.66, 0.81)
    one_stream = index_row_from_meta("k", {**meta, "quality": {"overlap_ratio": 0.0, "activity_correlation": None}}, 10)
    assert one_stream["activity_correlation"] is None
