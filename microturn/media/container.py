"""Containers: opening a media URI, the session's open files, their packets and the decode loop.

Why one module: every way a file can fail to open becomes one typed ``StageError`` here, and a file
is opened once per session and read once, front to back. Opening is not free (FFmpeg's stream-info
probe decodes a few frames: ~30 ms for a 720p H.264 file) and seeking back is not exact (see
``pipeline/probe.describe_container``), so the packets the probe reads are kept and decoded before
demuxing goes on, and a file giving both audio and picture is decoded in one interleaved pass.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from fractions import Fraction
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional

from microturn.clock import GRID, to_fraction
from microturn.errors import Stage, StageError
from microturn.records import DecoderInfo
from microturn.storage import filesystem, is_remote, local_path, stat

if TYPE_CHECKING:
    from microturn.config import DecodeConfig

log = logging.getLogger(__name__)

_MAX_ERROR_FRACTION = 0.5  # more packets than this failing -> the stream is corrupt, not noisy
# Hardware video decoders tried by decode.hwaccel "auto", in order (FFmpeg's device type names);
# the other types FFmpeg knows (drm, qsv, amf...) need more than a default device to decode.
_HW_DEVICE_TYPES = ("cuda", "vaapi", "videotoolbox", "d3d11va")
# decode.skip_nonref applies only to streams with at least this many frames per frame the chunks take
_SKIP_NONREF_MIN_RATIO = 2


# ---------------------------------------------------------------- opening


def _checked_target(uri: str, stage: Stage, stack: contextlib.ExitStack) -> Any:
    """What ``av.open`` reads for ``uri``: a local path, or a seekable object-store file (ranged
    reads: PyAV reads only what it needs). Missing, empty and directory inputs are refused first."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.exists():
            raise StageError(stage, "not_found", "input does not exist", source=uri)
        if path.is_dir():
            raise StageError(stage, "unreadable", "input is a directory", source=uri)
        if path.stat().st_size == 0:
            raise StageError(stage, "empty_file", "input is a zero-byte file", source=uri)
        return str(path)
    try:
        st = stat(uri)
        if st is None:
            raise StageError(stage, "not_found", "input does not exist", source=uri)
        if st.is_dir:
            raise StageError(stage, "unreadable", "input is a directory", source=uri)
        if st.size == 0:
            raise StageError(stage, "empty_file", "input is a zero-byte file", source=uri)
        fs, path_r = filesystem(uri)
        return stack.enter_context(fs.open_input_file(path_r))
    except StageError:
        raise
    except Exception as exc:  # network / permission problems of the object store
        raise StageError(stage, "unreadable", f"cannot open: {exc}", source=uri) from exc


@functools.lru_cache(maxsize=1)
def hw_device_type() -> Optional[str]:
    """The first hardware decode device this process can open ("cuda", ...), None: software only.

    Probed once per process, without a file: FFmpeg listing a device type only says it was built with
    it; creating the device context for its H.264 decoder says a device and its driver are there."""
    import av
    from av.codec.hwaccel import HWAccel, hwdevices_available

    built_with = set(hwdevices_available())
    for kind in _HW_DEVICE_TYPES:
        if kind not in built_with:
            continue
        try:
            HWAccel(kind).create(av.Codec("h264", "r"))
        except (av.error.FFmpegError, NotImplementedError, OSError, RuntimeError, ValueError) as exc:
            log.debug("no %s decode device: %s", kind, exc)
            continue
        log.info("hardware video decoding available: %s", kind)
        return kind
    return None


def hwaccel_for(cfg: "DecodeConfig") -> Any:
    """PyAV's ``HWAccel`` for ``decode.hwaccel`` ("auto" and a device present), else None (software)."""
    kind = hw_device_type() if cfg.hwaccel == "auto" else None
    if kind is None:
        return None
    from av.codec.hwaccel import HWAccel

    # a stream the device cannot decode (a profile, a size) goes to FFmpeg's software decoder
    return HWAccel(kind, allow_software_fallback=True)


def _av_open(target: Any, hwaccel: Any, uri: str) -> Any:
    import av

    if hwaccel is not None:
        try:
            return av.open(target, metadata_errors="ignore", hwaccel=hwaccel)
        except av.error.FFmpegError as exc:  # a device that refuses this decoder: read it in software
            log.warning("%s: opening with hardware decoding failed (%s); decoding in software", uri, exc)
            if hasattr(target, "seek"):
                target.seek(0)
    return av.open(target, metadata_errors="ignore")


@contextlib.contextmanager
def open_container(uri: str, stage: Stage = "probe", hwaccel: Any = None) -> Iterator[Any]:
    """``av.open`` for reading a URI, turning every way a file can fail to open into a ``StageError``.
    ``hwaccel`` (``hwaccel_for``): decode video on that device, falling back to software."""
    import av

    with contextlib.ExitStack() as stack:
        target = _checked_target(uri, stage, stack)
        try:
            container = _av_open(target, hwaccel, uri)
        except PermissionError as exc:
            raise StageError(stage, "unreadable", f"permission denied: {exc}", source=uri) from exc
        except (av.error.InvalidDataError, av.error.FFmpegError, ValueError) as exc:
            raise StageError(
                stage, "not_media", f"not a media file FFmpeg can read ({exc.__class__.__name__}: {exc})", source=uri
            ) from exc
        except OSError as exc:
            raise StageError(stage, "unreadable", f"cannot read: {exc}", source=uri) from exc
        with contextlib.closing(container):
            yield container


def configure_threads(stream: Any, cfg: "DecodeConfig") -> None:
    """Must run before the stream's first decode: FFmpeg fixes threading when the codec opens."""
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster on H.264
    if cfg.threads:
        stream.codec_context.thread_count = cfg.threads


def configure_video(stream: Any, cfg: "DecodeConfig") -> DecoderInfo:
    """Before the first decode too: skip non-reference frames when asked and the stream has frames to
    spare (see ``media/video.py`` for what picking then guarantees); says how the video is decoded."""
    rate = stream.average_rate or stream.guessed_rate
    skip = bool(cfg.skip_nonref and rate and rate >= _SKIP_NONREF_MIN_RATIO / GRID.chunk_seconds)
    if skip:
        stream.codec_context.skip_frame = "NONREF"
    return DecoderInfo(hwaccel=hw_device_type() if stream.codec_context.is_hwaccel else None, skip_nonref=skip)


# ---------------------------------------------------------------- the session's files


class Sources(Mapping[str, Any]):
    """The session's media files by URI, each opened once (on first use) and read once, front to back.

    The probe describes the open containers in place and keeps what it demuxes in ``read_packets``;
    ``packets`` yields those first, then goes on demuxing where the probe stopped.
    """

    def __init__(self, uris: list[str], cfg: "DecodeConfig", stack: contextlib.ExitStack) -> None:
        self._uris = list(dict.fromkeys(uris))
        self._cfg = cfg
        self._stack = stack
        self._open: dict[str, Any] = {}
        self._passes: set[str] = set()
        self.decoders: dict[str, DecoderInfo] = {}  # how each file's first video stream is decoded
        self.read_packets: dict[str, list[Any]] = {uri: [] for uri in self._uris}

    def __getitem__(self, uri: str) -> Any:
        if uri not in self.read_packets:
            raise KeyError(uri)
        if uri not in self._open:
            self._open[uri] = self._opened(uri, "probe")
        return self._open[uri]

    def __iter__(self) -> Iterator[str]:
        return iter(self._uris)

    def __len__(self) -> int:
        return len(self._uris)

    def _opened(self, uri: str, stage: Stage) -> Any:
        container = self._stack.enter_context(open_container(uri, stage, hwaccel_for(self._cfg)))
        for stream in (*container.streams.audio[:1], *container.streams.video[:1]):
            if stream.codec_context is not None:
                configure_threads(stream, self._cfg)
        video = container.streams.video[:1]
        if video and video[0].codec_context is not None:
            self.decoders[uri] = configure_video(video[0], self._cfg)
        return container

    def reopen(self, uri: str) -> None:
        """Open ``uri`` afresh for one more pass (the old container closes with the session): only
        for a file whose audio comes far behind its picture (see ``pipeline/decode.py``)."""
        self._open[uri] = self._opened(uri, "decode")
        self.read_packets[uri] = []
        self._passes.discard(uri)

    def first_streams(self, uri: str, audio: bool, video: bool) -> list[Any]:
        """The file's first audio stream (when ``audio``), then its first video stream (when ``video``)."""
        container = self[uri]
        streams: list[Any] = []
        if audio:
            if not container.streams.audio:
                raise StageError("decode", "no_audio_stream", "no audio stream", source=uri)
            streams.append(container.streams.audio[0])
        if video:
            if not container.streams.video:
                raise StageError("decode", "no_video_stream", "no video stream", source=uri)
            streams.append(container.streams.video[0])
        return streams

    def packets(self, uri: str, streams: list[Any]) -> Iterator[Any]:
        """Every packet of ``streams`` from the start of the file, then the flush packets (once)."""
        if uri in self._passes:
            raise RuntimeError(f"{uri} was already decoded in this session")  # a bug, not bad input
        self._passes.add(uri)
        container = self[uri]
        wanted = {s.index for s in streams}
        kept, self.read_packets[uri] = self.read_packets[uri], []
        for packet in kept:
            if packet.stream.index in wanted:
                yield packet
        yield from container.demux(*streams)


# ---------------------------------------------------------------- decoding packets


@dataclass
class PacketStats:
    """Packets and frames of one stream in one pass: a few failing packets are noise, many are corruption."""

    packets: int = 0
    errors: int = 0
    frames: int = 0
    last_error: str = ""

    def check(self, source: str, kind: str) -> None:
        """Too many failures is a ``StageError``: the stream is corrupt, not noisy."""
        if self.frames == 0:
            raise StageError(
                "decode",
                "undecodable",
                f"{kind} stream yielded no frame ({self.errors} failing packets) {self.last_error}",
                source=source,
            )
        if self.packets and self.errors / self.packets > _MAX_ERROR_FRACTION:
            raise StageError(
                "decode",
                "corrupt_stream",
                f"{self.errors} of {self.packets} {kind} packets failed to decode: {self.last_error}",
                source=source,
            )


def decode_frames(packets: Iterator[Any], stats: dict[int, PacketStats]) -> Iterator[tuple[int, Any]]:
    """(stream index, frame) in file order, surviving corrupt packets (counted in ``stats``)."""
    import av

    for packet in packets:
        st = stats[packet.stream.index]
        st.packets += 1
        try:
            decoded = packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            st.errors += 1
            st.last_error = str(exc)
            continue
        for frame in decoded:
            st.frames += 1
            yield packet.stream.index, frame


def frame_time(frame: Any) -> Optional[Fraction]:
    """A decoded frame's presentation time in seconds on its container's clock, exact; None: untimed."""
    if frame.pts is None or not frame.time_base:
        return None
    return Fraction(frame.pts) * Fraction(frame.time_base)


# ---------------------------------------------------------------- limits


def max_timeline_s(cfg: "DecodeConfig") -> Fraction:
    """The longest timeline decode builds, for a file or a session: ``max_duration_s`` plus the
    disagreement allowed between sources. Buffers are checked against it as they grow, so a
    crafted file (timestamps that jump by hours, a last frame lasting a day, a huge manifest
    offset) is refused before its silence or its frames are allocated."""
    return to_fraction(cfg.max_duration_s) + to_fraction(cfg.duration_tolerance_s)


def too_long(what: str, seconds: Fraction, cfg: "DecodeConfig", source: Optional[str]) -> StageError:
    return StageError(
        "decode",
        "too_long",
        f"{what} reaches {float(seconds):.1f} s (> max_duration_s {cfg.max_duration_s:g} s "
        f"+ duration_tolerance_s {cfg.duration_tolerance_s:g} s)",
        source=source,
    )
