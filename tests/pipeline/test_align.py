"""Align on media with ground truth: activity per stream, overlaps and backchannels kept, A/V offset
recovered, a real two-speaker recording, duplicate channels, quality filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media_helpers import burst, f1, shared, write_wav
from microturn.config import AlignConfig, DecodeConfig, QualityFilters
from microturn.manifest import SessionSpec, load_manifest
from microturn.pipeline.align import align_session
from microturn.pipeline.decode import decode_session
from microturn.records import StageError


def _synth(tmp: Path, **kw):
    from microturn.synth import load_truth, synthesize_corpus

    manifest = synthesize_corpus(tmp, kw.pop("sessions", 1), kw.pop("seed", 0), kw.pop("duration_s", 12.0), **kw)
    specs, problems = load_manifest(manifest)
    assert not problems
    return [(s, load_truth(tmp / s.session_id / "truth.json")) for s in specs]


def _truth_activity(truth, speaker, origin_s: float, frames: int) -> np.ndarray:
    centres = (np.arange(frames) + 0.5) / 75 + origin_s
    ref = np.zeros(frames, dtype=bool)
    for seg in truth.segments:
        if speaker is None or seg.speaker == speaker:
            ref |= (centres >= seg.start_s) & (centres < seg.end_s)
    return ref


def _run(spec, cfg: AlignConfig = AlignConfig(vad="energy")):
    decoded = decode_session(spec, DecodeConfig(), trace=cfg.estimate_av_offset,
                             candidates=cfg.estimate_av_offset and cfg.apply_av_offset)
    return (decoded, *align_session(decoded, spec, cfg))  # decoded, media after align, timeline


@pytest.mark.parametrize("layout, vad", [("per_speaker", "pyannote"), ("stereo", "energy"), ("mixed", "energy")])
def test_activity_matches_truth(tmp_path: Path, layout: str, vad: str) -> None:
    ((spec, truth),) = _synth(tmp_path, layout=layout, seed=1)
    decoded, media, aligned = _run(spec, AlignConfig(vad=vad))
    frames = aligned.activity.shape[1]
    assert aligned.activity.dtype == np.uint8 and frames % 15 == 0
    assert frames == 15 * -(-decoded.num_samples // 4800)
    origin = float(decoded.provenance.origin)
    for i, stream in enumerate(media.streams):
        speaker = None if stream.speaker == "mixed" else stream.speaker
        score = f1(_truth_activity(truth, speaker, origin, frames), aligned.activity[i])
        assert score >= 0.9, (stream.speaker, score)
    assert f"vad:{vad}" in aligned.flags
    if layout == "mixed":
        assert "undiarized_mixed" in aligned.flags
    else:
        assert "crosstalk_suppressed" in aligned.flags


def test_overlaps_and_backchannels_survive(tmp_path: Path) -> None:
    ((spec, truth),) = _synth(tmp_path, duration_s=30.0, seed=2)
    decoded, media, aligned = _run(spec)
    speakers = [s.speaker for s in media.streams]
    origin = float(decoded.provenance.origin)

    def frames_of(event) -> slice:
        return slice(int((event.start_s - origin) * 75), max(int((event.end_s - origin) * 75), int((event.start_s - origin) * 75) + 1))

    backchannels = truth.events_of("backchannel")
    overlaps = [e for e in truth.events_of("overlap") if e.end_s - e.start_s >= 0.15]
    assert backchannels and overlaps, "the synthetic conversation should hold both"
    for e in backchannels:
        assert aligned.activity[speakers.index(e.speaker), frames_of(e)].mean() >= 0.5, e
    both = [aligned.activity[:, frames_of(e)].all(axis=0).mean() for e in overlaps]
    assert np.mean(both) >= 0.6, both  # the cross-talk rule must not eat real overlap


@pytest.mark.parametrize("offset_ms", [-500.0, -180.0, 0.0, 90.0, 333.0, 500.0])
def test_av_offset_recovered_within_one_codec_frame(tmp_path: Path, offset_ms: float) -> None:
    ((spec, truth),) = _synth(tmp_path, duration_s=10.0, av_offset_ms=offset_ms, seed=3)
    _, media, aligned = _run(spec, AlignConfig(vad="energy", estimate_av_offset=True))
    assert abs(aligned.av_offset_sample / 24 - truth.av_offset_ms) <= 13.3
    assert aligned.av_offset_confidence is not None and aligned.av_offset_confidence > 0.3
    if abs(offset_ms) >= 13.4:
        assert "av_offset:applied" in aligned.flags


def test_av_offset_applied_repicks_frames(tmp_path: Path) -> None:
    """After correction the picture of each chunk shows the loudness of that chunk, not 400 ms later."""
    ((spec, truth),) = _synth(tmp_path, duration_s=10.0, av_offset_ms=400.0, seed=4, vary_starts=False)
    decoded, media, aligned = _run(spec, AlignConfig(vad="energy", estimate_av_offset=True))
    before, after = decoded.video, media.video
    assert before is not None and after is not None
    assert after.frame_chunks[0] == 0  # video moved earlier: the first chunks still get frames
    left_half = lambda v: v.frames_rgb[:, :, : v.frames_rgb.shape[2] // 2].mean(axis=(1, 2, 3))  # noqa: E731
    loud = np.array([np.sqrt(np.mean(decoded.streams[0].wave_24k[c * 4800 : (c + 1) * 4800] ** 2)) for c in after.frame_chunks])
    corr_after = np.corrcoef(left_half(after), loud)[0, 1]
    loud_b = np.array([np.sqrt(np.mean(decoded.streams[0].wave_24k[c * 4800 : (c + 1) * 4800] ** 2)) for c in before.frame_chunks])
    corr_before = np.corrcoef(left_half(before), loud_b)[0, 1]
    assert corr_after > corr_before + 0.1


def test_real_two_speaker_call_matches_reference_turns() -> None:
    import pyannote.audio

    sample = Path(pyannote.audio.__file__).parent / "sample"
    if not (sample / "sample.wav").exists():
        pytest.skip("pyannote sample not installed")
    spec = SessionSpec.model_validate({"session_id": "call", "audio": [{"uri": str(sample / "sample.wav")}]})
    _, media, aligned = _run(spec, AlignConfig())
    frames = aligned.activity.shape[1]
    centres = (np.arange(frames) + 0.5) / 75
    ref = np.zeros(frames, dtype=bool)
    for line in (sample / "sample.rttm").read_text().splitlines():
        parts = line.split()
        start, dur = float(parts[3]), float(parts[4])
        ref |= (centres >= start) & (centres < start + dur)
    assert "vad:pyannote" in aligned.flags
    assert f1(ref, aligned.activity[0]) >= 0.85


def test_real_stereo_dialogue_one_voice_per_channel() -> None:
    wav = str(shared("dialogue", "michaelandsickmichael.wav"))
    spec = SessionSpec.model_validate(
        {
            "session_id": "mm",
            "audio": [{"uri": wav, "channel": 0, "speaker": "michael"}, {"uri": wav, "channel": 1, "speaker": "sickmichael"}],
            "transcript": {"uri": str(shared("dialogue", "michaelandsickmichael.TextGrid")), "format": "textgrid"},
        }
    )
    _, media, aligned = _run(spec)
    # utterances alternate: the two streams are rarely active together once leakage is suppressed
    both = (aligned.activity.sum(axis=0) == 2).mean()
    assert both < 0.05 and aligned.activity.any(axis=1).all()
    streams = {w.stream for w in aligned.words}
    assert streams == {0, 1} and "words:interpolated" in aligned.flags
    starts = [w.start_sample for w in aligned.words]
    assert starts == sorted(starts)


def _stereo_same_signal(tmp: Path) -> SessionSpec:
    x = burst(16000, 2.0, [(0.3, 0.9), (1.2, 1.6)])
    wav = write_wav(tmp / "dup.wav", np.stack([x, x]), 16000)
    return SessionSpec.model_validate(
        {"session_id": "dup", "audio": [{"uri": str(wav), "channel": 0, "speaker": "a"}, {"uri": str(wav), "channel": 1, "speaker": "b"}]}
    )


def test_duplicate_channels_become_one_mixed_stream(tmp_path: Path) -> None:
    _, media, aligned = _run(_stereo_same_signal(tmp_path))
    assert [s.speaker for s in media.streams] == ["mixed"]
    assert aligned.activity.shape[0] == 1
    assert "duplicate_channels:mixed" in aligned.flags and "undiarized_mixed" in aligned.flags


def test_duplicate_channels_quarantined_when_configured(tmp_path: Path) -> None:
    cfg = AlignConfig(vad="energy", filters=QualityFilters(duplicate_channels="quarantine"))
    with pytest.raises(StageError) as err:
        _run(_stereo_same_signal(tmp_path), cfg)
    assert (err.value.stage, err.value.reason) == ("align", "filtered:duplicate_channels")


def test_quality_filters(tmp_path: Path) -> None:
    x = burst(16000, 3.0, [(0.5, 0.8)])
    wav = write_wav(tmp_path / "quiet.wav", x, 16000)
    spec = SessionSpec.model_validate({"session_id": "q", "audio": [{"uri": str(wav), "speaker": "a"}]})
    _, media, aligned = _run(spec)
    quality = aligned.quality
    assert 0.05 < quality["speech_ratio"] < 0.2 and quality["streams"]["a"]["clipping_ratio"] == 0.0
    with pytest.raises(StageError) as err:
        _run(spec, AlignConfig(vad="energy", filters=QualityFilters(min_speech_ratio=0.5)))
    assert err.value.reason == "filtered:speech_ratio"
    loud = write_wav(tmp_path / "clip.wav", np.clip(6 * burst(16000, 3.0, [(0.5, 2.5)]), -1, 1), 16000)
    spec2 = SessionSpec.model_validate({"session_id": "c", "audio": [{"uri": str(loud), "speaker": "a"}]})
    with pytest.raises(StageError) as err:
        _run(spec2, AlignConfig(vad="energy", filters=QualityFilters(max_clipping_ratio=0.01)))
    assert err.value.reason == "filtered:clipping_ratio"


def test_energy_fallback_when_model_cannot_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import microturn.pipeline.align as align

    def broken(*_a, **_k):
        raise align.VadUnavailable("simulated: model file missing")

    monkeypatch.setattr(align, "load_pyannote", broken)
    x = burst(16000, 2.0, [(0.5, 1.5)])
    spec = SessionSpec.model_validate({"session_id": "f", "audio": [{"uri": str(write_wav(tmp_path / "a.wav", x, 16000)), "speaker": "a"}]})
    _, media, aligned = _run(spec, AlignConfig(vad="pyannote"))
    assert "vad:energy_fallback" in aligned.flags
    assert f1(np.r_[np.zeros(37), np.ones(75), np.zeros(38)].astype(bool), aligned.activity[0][:150]) > 0.9
