"""A synthetic corpus: sessions 0..n-1 of one seed and the session manifest that lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microturn.manifest import write_manifest
from microturn.synth.session import synthesize_session
from microturn.synth.truth import SPEAKERS, Layout, SessionTruth


def manifest_row(truth: SessionTruth, folder: str) -> dict[str, Any]:
    """The manifest row for a session whose files sit in ``folder`` (relative to the manifest)."""
    f = truth.files
    audio: list[dict[str, Any]] = []
    if truth.layout == "per_speaker":
        audio = [
            {"uri": f"{folder}/{f[f'audio_{s}']}", "channel": 0, "speaker": s, "offset_s": truth.audio_offsets_s[s]}
            for s in SPEAKERS
        ]
    elif truth.layout == "stereo":
        audio = [
            {"uri": f"{folder}/{f['audio_stereo']}", "channel": i, "speaker": s, "offset_s": 0.0}
            for i, s in enumerate(SPEAKERS)
        ]
    else:
        audio = [{"uri": f"{folder}/{f['audio_mixed']}", "channel": 0, "speaker": None, "offset_s": 0.0}]
    return {
        "session_id": truth.session_id,
        "video": {"uri": f"{folder}/{f['video']}", "offset_s": 0.0} if "video" in f else None,
        "audio": audio,
        "transcript": {"uri": f"{folder}/{f['transcript']}", "format": "json"},
        "language": "en",
        "meta": {
            "generator": "microturn.synth",
            "seed": truth.seed,
            "index": truth.index,
            "truth": f"{folder}/{f['truth']}",
        },
    }


def synthesize_corpus(
    out_dir: Path,
    sessions: int = 4,
    seed: int = 0,
    duration_s: float = 20.0,
    *,
    video: bool = True,
    av_offset_ms: float | list[float] = 0.0,
    layout: Layout = "per_speaker",
    sample_rate: int = 16000,
    frame_size: tuple[int, int] = (160, 120),
    fps: int = 15,
    **session_kw: Any,
) -> Path:
    """Writes media + ground truth for ``sessions`` two-party conversations and ``out_dir/sessions.jsonl``
    (manifest rows as in microturn/manifest.py: session_id, video {uri, offset_s}, audio [{uri, channel,
    speaker, offset_s}], transcript {uri, format: "json"}, language "en", meta). URIs are relative to the
    manifest, so the corpus can move. Returns the manifest path.

    ``av_offset_ms`` is one value for all sessions or one per session. Session folders are
    ``out_dir/<session_id>/``; ids are ``synth-<seed>-<index:03d>``. Extra keywords go to
    ``synthesize_session`` (leakage_db, noise_db, vary_starts, audio_format, crosstalk, room_irs).
    """
    if sessions < 1:
        raise ValueError(f"sessions must be at least 1, got {sessions!r}")
    if isinstance(av_offset_ms, (int, float)):
        offsets = [float(av_offset_ms)] * sessions
    else:
        offsets = [float(x) for x in av_offset_ms]
    if len(offsets) != sessions:
        raise ValueError(f"av_offset_ms holds {len(offsets)} values for {sessions} sessions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(sessions):
        sid = f"synth-{seed}-{i:03d}"
        truth = synthesize_session(
            out_dir / sid,
            sid,
            seed=seed,
            index=i,
            duration_s=duration_s,
            video=video,
            av_offset_ms=offsets[i],
            layout=layout,
            sample_rate=sample_rate,
            frame_size=frame_size,
            fps=fps,
            **session_kw,
        )
        rows.append(manifest_row(truth, sid))
    manifest = out_dir / "sessions.jsonl"
    write_manifest(manifest, rows)
    return manifest
