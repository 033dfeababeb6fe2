"""`microturn manifest`: a session manifest from a folder of media files.

The naming rule (files are grouped by the part of their name before the first dot):

* ``<session>.<video ext>``                the session's video (mp4, mkv, webm, mov, avi);
* ``<session>.<speaker>.<audio ext>``      one speaker's audio (wav, flac, mp3, m4a, ogg, opus, aac);
* ``<session>_<speaker>.<audio ext>``      the same, when ``<session>`` names a video of the folder, or
                                           when two or more audio files share the ``<session>_`` prefix;
* ``<session>.<audio ext>``                a lone recording of the whole session: a stereo file becomes
                                           two channel entries (channel 0 = speaker ``A``, 1 = ``B``), a
                                           mono file a mixed track to diarize; ``mixed=True`` keeps a
                                           stereo file as one mixed track instead;
* ``<session>.<transcript ext>``           a transcript sidecar (the extensions of
                                           ``microturn.align.transcripts.FORMATS``: .json, .stm, .TextGrid...).

A session with a video and no audio file uses the video's own audio track (the decode stage does that).
Ids are made safe for sample keys (letters, digits, ``_``, ``-``); URIs are written relative to the
manifest's folder when the media lie under it, absolute otherwise. Anything the rule cannot place is
reported, never silently dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from microturn.align.transcripts import format_of_extension
from microturn.errors import StageError
from microturn.manifest import parse_rows, write_manifest
from microturn.media.container import open_container
from microturn.report import UserError

VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"}
STEREO_SPEAKERS = ("A", "B")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_id(name: str) -> str:
    """Letters, digits, ``_`` and ``-`` only (ids become sample keys); never empty."""
    out = _UNSAFE.sub("_", name).strip("_") or "x"
    return out if re.match(r"^[A-Za-z0-9_]", out) else f"s{out}"


@dataclass
class _Session:
    video: Optional[Path] = None
    speakers: dict[str, Path] = field(default_factory=dict)  # speaker -> file
    lone_audio: list[Path] = field(default_factory=list)
    transcript: Optional[tuple[Path, str]] = None


@dataclass(frozen=True)
class FolderManifest:
    rows: list[dict[str, Any]]
    skipped: list[tuple[str, str]]  # (file, why)


def _media_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith("."))


def audio_channels(path: Path) -> int:
    """Channels of the first audio stream (PyAV); 0 when the file has none or cannot be read."""
    import av

    try:
        with open_container(str(path)) as c:
            if not c.streams.audio:
                return 0
            return int(c.streams.audio[0].codec_context.channels or 0)
    except (StageError, av.error.FFmpegError, OSError, ValueError):
        return 0


def group_files(files: list[Path], folder: Path) -> tuple[dict[str, _Session], list[tuple[str, str]]]:
    sessions: dict[str, _Session] = defaultdict(_Session)
    skipped: list[tuple[str, str]] = []
    # The session of a file is its name up to the first dot; sub-folders keep sessions apart.
    def session_name(p: Path, stem: str) -> str:
        rel = p.parent.relative_to(folder)
        return "/".join([*rel.parts, stem]) if rel.parts else stem

    videos = {session_name(p, p.name.split(".", 1)[0]) for p in files if p.suffix.lower() in VIDEO_EXTS}
    underscored: dict[str, int] = defaultdict(int)
    for p in files:
        if p.suffix.lower() in AUDIO_EXTS and p.name.count(".") == 1 and "_" in p.stem:
            underscored[session_name(p, p.stem.rsplit("_", 1)[0])] += 1

    for p in files:
        ext = p.suffix.lower()
        parts = p.name[: -len(p.suffix)].split(".")
        transcript_format = format_of_extension(ext)
        if ext in VIDEO_EXTS:
            s = sessions[session_name(p, parts[0])]
            if s.video is not None:
                skipped.append((str(p), f"second video for session {parts[0]!r} (kept {s.video.name})"))
            else:
                s.video = p
        elif ext in AUDIO_EXTS:
            if len(parts) >= 2:
                sessions[session_name(p, parts[0])].speakers[".".join(parts[1:])] = p
                continue
            stem = parts[0]
            if "_" in stem:
                sess, spk = stem.rsplit("_", 1)
                key = session_name(p, sess)
                if key in videos or underscored[key] >= 2:
                    sessions[key].speakers[spk] = p
                    continue
            sessions[session_name(p, stem)].lone_audio.append(p)
        elif transcript_format is not None and len(parts) == 1:
            sessions[session_name(p, parts[0])].transcript = (p, transcript_format)
        elif transcript_format is not None or ext in (".jsonl", ".parquet", ".txt", ".md"):
            skipped.append((str(p), "not media (no session matches this name)"))
        else:
            skipped.append((str(p), f"unknown extension {ext or '(none)'}"))
    return sessions, skipped


def _uri(p: Path, base: Path) -> str:
    p = p.resolve()
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return str(p)


def build_folder_manifest(folder: Path, out_path: Path, *, mixed: bool = False, recursive: bool = False,
                          language: Optional[str] = None) -> FolderManifest:
    """Rows (ready for JSONL) for every session the naming rule finds under ``folder``."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    base = Path(out_path).resolve().parent
    sessions, skipped = group_files(_media_files(folder, recursive), folder)
    rows = []
    used: dict[str, str] = {}
    for name in sorted(sessions):
        s = sessions[name]
        if s.video is None and not s.speakers and not s.lone_audio:
            if s.transcript is not None:
                skipped.append((str(s.transcript[0]), "transcript without media"))
            continue
        sid = safe_id(name.replace("/", "__"))
        if sid in used:
            raise UserError(f"sessions {used[sid]!r} and {name!r} both become id {sid!r}: rename one")
        used[sid] = name
        audio: list[dict[str, Any]] = []
        for spk, path in sorted(s.speakers.items()):
            audio.append({"uri": _uri(path, base), "channel": 0, "speaker": safe_id(spk), "offset_s": 0.0})
        if s.lone_audio:
            if audio:
                for path in s.lone_audio:
                    skipped.append((str(path), f"session {sid} already has per-speaker files"))
            else:
                lone = s.lone_audio[0]
                for extra in s.lone_audio[1:]:
                    skipped.append((str(extra), f"second whole-session recording for {sid} (kept {lone.name})"))
                channels = audio_channels(lone)
                if channels == 0:
                    skipped.append((str(lone), "no readable audio stream"))
                elif channels == 2 and not mixed:
                    audio = [{"uri": _uri(lone, base), "channel": c, "speaker": STEREO_SPEAKERS[c], "offset_s": 0.0}
                             for c in range(2)]
                else:
                    audio = [{"uri": _uri(lone, base), "channel": 0, "speaker": None, "offset_s": 0.0}]
        if not audio and s.video is None:
            continue
        row: dict[str, Any] = {"session_id": sid, "audio": audio}
        if s.video is not None:
            row["video"] = {"uri": _uri(s.video, base), "offset_s": 0.0}
        if s.transcript is not None:
            row["transcript"] = {"uri": _uri(s.transcript[0], base), "format": s.transcript[1]}
        if language:
            row["language"] = language
        rows.append(row)
    return FolderManifest(rows, skipped)


def write_folder_manifest(result: FolderManifest, out_path: Path) -> Path:
    """Write the rows as JSONL (atomically), after checking them with the manifest validator."""
    out_path = Path(out_path)
    _, problems = parse_rows(list(enumerate(result.rows, start=1)), str(out_path.resolve().parent))
    if problems:
        raise UserError("the folder gives invalid manifest rows: " + "; ".join(map(str, problems[:3])))
    write_manifest(out_path, result.rows)
    return out_path


__all__ = ["FolderManifest", "build_folder_manifest", "write_folder_manifest", "safe_id"]
