"""One decoded sample as the report commands see it, and the numbers they print about it.

``SampleView`` is ``microturn.format.DecodedSample`` (its arrays by member suffix, docs/format.md) plus
the measures and clock conversions the report commands print, and named access to the members they show.
Ratios are measured over the sample's valid frames only (the padded tail of a session's last window
is not silence).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Collection, Optional

import numpy as np

from microturn.clock import CODEC_RATE, GRID
from microturn.format import CORE_MEMBERS, EVENT_KINDS, MEMBERS, DecodedSample, MemberTable

EVENT_COLUMNS = {k: k + "s" for k in EVENT_KINDS}  # index.parquet's column for each event kind


@dataclass(frozen=True)
class SampleView(DecodedSample):
    """A decoded sample (fields and shapes: ``microturn.format.DecodedSample``) with the measures and
    clock conversions the CLI shows. Words and events are window-relative codec frames."""

    # the corpus' member table (dataset.json ``members``): which members a sample holds and which
    # representation wrote each; the default table for a shard read without its corpus
    table: MemberTable = MEMBERS

    # -- the members the report commands draw (the one place they are named; `show` lists every
    # member of the table generically). A representation the corpus was not built with is None.
    @property
    def activity(self) -> np.ndarray:
        """uint8 [S, F]"""
        return self.arrays["activity.npy"]

    @property
    def codes(self) -> Optional[np.ndarray]:
        """int16 [S, K, F]: EnCodec codes"""
        return self.arrays.get("codes.npy")

    @property
    def text(self) -> Optional[np.ndarray]:
        """int32 [S, F]"""
        return self.arrays.get("text.npy")

    @property
    def frames(self) -> Optional[np.ndarray]:
        """int16 [N, H, W]: frame-codec tokens"""
        return self.arrays.get("frames.npy")

    @property
    def dmel(self) -> Optional[np.ndarray]:
        """uint8 [S, M, F]: dMel bins"""
        return self.arrays.get("dmel.npy")

    @property
    def pixels(self) -> Optional[np.ndarray]:
        """uint8 [N, Y, X, 3]: the video frames themselves (RGB)"""
        return self.arrays.get("pixels.npy")

    @property
    def frame_chunks(self) -> np.ndarray:
        """int32 [N]"""
        return self.arrays["frame_chunks.npy"]

    @property
    def representations(self) -> dict[str, tuple[str, ...]]:
        """Representation name -> the members of it this sample holds, in tar order (the core members,
        which every corpus holds, are no representation's)."""
        return representations_of(self.table, present=self.arrays)

    # -- shapes and clock
    @property
    def valid_frames(self) -> int:
        return int(min(self.meta.get("valid_frames", self.num_frames), self.num_frames))

    @property
    def num_chunks(self) -> int:
        return GRID.frame_to_chunk(self.num_frames + GRID.frames_per_chunk - 1)

    @property
    def valid_chunks(self) -> int:
        return GRID.frame_to_chunk(self.valid_frames + GRID.frames_per_chunk - 1)

    @property
    def session_id(self) -> str:
        return str(self.meta.get("session_id", self.key.rsplit("-", 1)[0]))

    @property
    def window_index(self) -> int:
        return int(self.meta.get("window_index", 0))

    @property
    def start_s(self) -> float:
        """Window start in seconds from the session start (display only)."""
        if "start_sample" in self.meta:
            return float(self.meta["start_sample"]) / CODEC_RATE
        return float(GRID.frames_to_seconds(int(self.meta.get("start_frame", 0))))

    @property
    def duration_s(self) -> float:
        return float(GRID.frames_to_seconds(self.valid_frames))

    @property
    def speakers(self) -> list[str]:
        spk = self.meta.get("speakers")
        if isinstance(spk, list) and len(spk) == self.num_streams:
            return [str(s) for s in spk]
        return [f"stream{i}" for i in range(self.num_streams)]

    # -- measures
    @property
    def stats(self) -> dict[str, Any]:
        """The per-sample figures the chunk stage stored in meta.json (the index holds the same)."""
        st = self.meta.get("stats")
        return st if isinstance(st, dict) else {}

    def stream_speech_ratios(self) -> list[float]:
        """Fraction of valid frames each stream speaks."""
        v = max(self.valid_frames, 1)
        return [float(self.activity[s, : self.valid_frames].sum()) / v for s in range(self.activity.shape[0])]

    def speech_ratio(self) -> float:
        """Fraction of valid frames where anyone speaks (the index's ``speech_ratio``)."""
        if "speech_ratio" in self.stats:
            return float(self.stats["speech_ratio"])
        talking = (self.activity[:, : self.valid_frames] > 0).sum(axis=0)
        return float((talking >= 1).sum()) / max(self.valid_frames, 1)

    def overlap_ratio(self) -> float:
        """Fraction of speech frames where two or more streams speak (the index's ``overlap_ratio``)."""
        if "overlap_ratio" in self.stats:
            return float(self.stats["overlap_ratio"])
        talking = (self.activity[:, : self.valid_frames] > 0).sum(axis=0)
        speech = int((talking >= 1).sum())
        return float((talking >= 2).sum()) / speech if speech else 0.0

    def event_counts(self) -> dict[str, int]:
        """Events that start inside the window, by kind (clipped events from the previous window excluded)."""
        stored = self.stats.get("event_counts")
        if isinstance(stored, dict):
            return {k: int(stored.get(k, 0)) for k in EVENT_KINDS}
        counts = {k: 0 for k in EVENT_KINDS}
        for e in self.events:
            if int(e.get("start_frame", 0)) >= 0 and str(e.get("kind")) in counts:
                counts[str(e.get("kind"))] += 1
        return counts

    def chunk_activity(self) -> np.ndarray:
        """float [S, chunks]: fraction of each 200 ms chunk a stream speaks."""
        fpc = GRID.frames_per_chunk
        s, f = self.activity.shape
        padded = np.zeros((s, self.num_chunks * fpc), dtype=np.float32)
        padded[:, :f] = self.activity[:, : self.num_chunks * fpc]
        return padded.reshape(s, self.num_chunks, fpc).mean(axis=2)

    def summary(self) -> dict[str, Any]:
        """The row `inspect` prints for a sample (and emits with --json); names follow index.parquet."""
        counts = self.event_counts()
        return {
            "key": self.key,
            "session_id": self.session_id,
            "window_index": self.window_index,
            "start_s": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
            "num_frames": self.num_frames,
            "valid_frames": self.valid_frames,
            "speakers": self.speakers,
            "speech_ratio": round(self.speech_ratio(), 6),
            "stream_speech_ratio": [round(r, 4) for r in self.stream_speech_ratios()],
            "overlap_ratio": round(self.overlap_ratio(), 6),
            "word_count": int(self.stats.get("word_count", len(self.words))),
            "num_video_frames": int(self.frame_chunks.shape[0]),
            "representations": sorted(self.representations),
            **{EVENT_COLUMNS[k]: counts[k] for k in EVENT_KINDS},
        }


def representations_of(table: MemberTable, present: Optional[Collection[str]] = None) -> dict[str, tuple[str, ...]]:
    """Representation name -> its members in ``table`` (those in ``present`` only, when given). A member
    is named by the dataset.json ``tokenizers`` entry it belongs to, else by its stem (``pixels.npy``)."""
    core = {m.suffix for m in CORE_MEMBERS}
    out: dict[str, tuple[str, ...]] = {}
    for suffix, spec in table.items():
        if suffix in core or (present is not None and suffix not in present):
            continue
        name = spec.tokenizer or suffix.split(".")[0]
        out[name] = (*out.get(name, ()), suffix)
    return out


def view_from_decoded(key: str, decoded: DecodedSample, table: MemberTable = MEMBERS) -> SampleView:
    """The display view of a sample ``microturn.format`` decoded (and already checked) with ``table``."""
    fields = {f.name: getattr(decoded, f.name) for f in dataclasses.fields(DecodedSample)}
    return SampleView(**{**fields, "key": key or decoded.key, "table": table})
