"""Probe: open an input with PyAV, describe its streams, and reject it early with a specific reason.

``probe_media`` looks at one file (header plus the first decodable frame of its first audio and
video streams, so that an undecodable codec or a corrupt bitstream is caught here and not half way
through a decode). ``probe_session`` probes every source of a session and checks that their
durations agree. ``decode_session`` probes on its own open containers without the first-frame
decode (its single decoding pass proves decodability, ``StageError("decode", "undecodable")``).
Why a module of its own: these checks refuse a session before any decoding is spent on it (the
driver reads ``header_duration_s`` to budget sessions); opening files is ``media.container``'s.

Reason codes (``StageError("probe", reason, ...)``): ``not_found``, ``empty_file``, ``unreadable``,
``not_media``, ``no_media_streams``, ``no_audio_stream``, ``no_video_stream``, ``zero_duration``,
``too_short``, ``too_long``, ``undecodable``, ``duration_mismatch``, ``frame_too_large``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any, Mapping, Optional

from microturn.media.container import open_container
from microturn.records import MediaInfo, StageError, StreamInfo

if TYPE_CHECKING:
    from microturn.config import DecodeConfig
    from microturn.manifest import SessionSpec

AV_TIME_BASE = 1_000_000  # FFmpeg's container-level time base (microseconds)


def _seconds(value: Optional[int], time_base: Optional[Fraction]) -> Optional[float]:
    if value is None or time_base is None:
        return None
    return float(Fraction(value) * Fraction(time_base))


def _stream_info(stream: Any) -> StreamInfo:
    kind = stream.type if stream.type in ("audio", "video", "subtitle", "data") else "other"
    ctx = stream.codec_context
    codec = ctx.name if ctx is not None else "unknown"
    info: dict[str, Any] = dict(
        index=stream.index,
        kind=kind,
        codec=codec,
        start_s=_seconds(stream.start_time, stream.time_base),
        duration_s=_seconds(stream.duration, stream.time_base),
    )
    if kind == "audio" and ctx is not None:
        info["sample_rate"] = int(ctx.sample_rate) if ctx.sample_rate else None
        info["channels"] = int(ctx.channels) if ctx.channels else None
    if kind == "video" and ctx is not None:
        info["width"] = int(ctx.width) if ctx.width else None
        info["height"] = int(ctx.height) if ctx.height else None
        rate = stream.average_rate or stream.guessed_rate
        info["average_fps"] = float(rate) if rate else None
    return StreamInfo(**info)


def _first_frame_decodes(container: Any, stream: Any, max_packets: int = 400) -> bool:
    """True when the stream yields at least one frame within its first packets.

    Corrupt bitstreams raise inside the decoder; some decoders swallow errors and just never
    produce a frame, hence the packet budget.
    """
    import av

    try:
        container.seek(0)
    except (av.error.FFmpegError, ValueError, OSError):
        pass
    try:
        for n, packet in enumerate(container.demux(stream)):
            for _frame in packet.decode():
                return True
            if n >= max_packets:
                return False
        for _frame in stream.codec_context.decode(None):  # flush: short files buffer every frame
            return True
    except (av.error.FFmpegError, ValueError, OSError):
        return False
    return False


def probe_media(uri: str, *, check_decode: bool = True) -> MediaInfo:
    """Describe one input. Raises ``StageError("probe", reason, message, source=uri)``."""
    with open_container(uri, "probe") as container:
        return describe_container(container, uri, check_decode=check_decode)


def header_duration_s(uri: str) -> Optional[float]:
    """A source's length from its headers alone, or None when they do not give one.

    For the driver's time budgets: FFmpeg opens the file (a bounded read of its start, its stream
    info) and nothing is demuxed or decoded, so a file whose streams hold no data is not read to
    its end here (``probe_media`` checks that, in the session's own task). Raises ``StageError``
    when the file cannot be opened."""
    with open_container(uri, "probe") as container:
        streams = tuple(_stream_info(s) for s in container.streams)
        duration_s = container.duration / AV_TIME_BASE if container.duration else None
        info = MediaInfo(uri=uri, format_name=container.format.name, duration_s=duration_s, streams=streams)
    return media_duration_s(info)


def describe_container(
    container: Any, uri: str, *, check_decode: bool = True, read_packets: Optional[list[Any]] = None
) -> MediaInfo:
    """``probe_media`` on a container that is already open (decode shares its own, so a file is
    opened once per session). The container is left at an unknown read position.

    ``check_decode=False`` with ``read_packets``: no decoding and no seeking. The probe demuxes
    from the current position until each media stream has shown data (to tell an empty stream)
    and appends every packet it read to ``read_packets``, so the caller decodes them first and
    then goes on demuxing: seeking back is not exact (the MP4 demuxer skips AAC priming packets
    with negative timestamps when seeking to 0; a flushed Opus decoder forgets its pre-skip)."""
    streams = tuple(_stream_info(s) for s in container.streams)
    duration_s = container.duration / AV_TIME_BASE if container.duration else None
    info = MediaInfo(uri=uri, format_name=container.format.name, duration_s=duration_s, streams=streams)
    media = [s for s in streams if s.kind in ("audio", "video")]
    if not media:
        raise StageError("probe", "no_media_streams", "the file holds no audio or video stream", source=uri)
    for s in container.streams:
        if s.type in ("audio", "video") and s.codec_context is None:
            raise StageError("probe", "undecodable", f"no decoder for stream {s.index}", source=uri)
    if media_duration_s(info) == 0.0:
        raise StageError("probe", "zero_duration", "the file's media streams have zero duration", source=uri)
    for kind in ("audio", "video"):
        candidates = [s for s in container.streams if s.type == kind]
        if not candidates:
            continue
        if not check_decode:
            empty = (
                _empty_without_seeking(container, candidates[0], read_packets)
                if read_packets is not None
                else _declared_empty(container, candidates[0])
            )
            if empty:
                raise StageError("probe", "zero_duration", f"the {kind} stream holds no data", source=uri)
            continue
        if not _first_frame_decodes(container, candidates[0]):
            if _declared_empty(container, candidates[0]):
                raise StageError("probe", "zero_duration", f"the {kind} stream holds no data", source=uri)
            raise StageError(
                "probe",
                "undecodable",
                f"{kind} stream {candidates[0].index} ({candidates[0].codec_context.name}) "
                "yields no decodable frame",
                source=uri,
            )
    return info


def _declared_empty(container: Any, stream: Any) -> bool:
    """A stream that demuxes no packet at all is empty, not corrupt (a WAV header with no data)."""
    import av

    try:
        container.seek(0)
        for packet in container.demux(stream):
            if packet.size:
                return False
    except (av.error.FFmpegError, ValueError, OSError):
        return False
    return True


def _empty_without_seeking(container: Any, stream: Any, read_packets: list[Any]) -> bool:
    """True when ``stream`` has no packet with data. Demuxes every stream onward from the current
    position (no seek), keeping what it reads in ``read_packets`` (except the end-of-file flush
    packets, which a later demux yields again)."""
    import av

    if any(p.stream.index == stream.index and p.size for p in read_packets):
        return False
    try:
        for packet in container.demux():
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # end of file: demux's flush packets
            read_packets.append(packet)
            if packet.stream.index == stream.index and packet.size:
                return False
    except (av.error.FFmpegError, ValueError, OSError):
        return False
    return True


def media_duration_s(info: MediaInfo, kind: Optional[str] = None) -> Optional[float]:
    """Best duration estimate: the longest stream of ``kind`` (or any media stream), else the container's."""
    durations = [
        s.duration_s
        for s in info.streams
        if s.duration_s is not None and (s.kind == kind if kind else s.kind in ("audio", "video"))
    ]
    if durations:
        return max(durations)
    return info.duration_s


def _check_frame_size(stream: StreamInfo, cfg: "DecodeConfig", uri: str) -> None:
    """Refuse a picture larger than ``max_frame_pixels`` before any frame is decoded (decode checks
    every frame too: a stream can change resolution mid-way)."""
    pixels = (stream.width or 0) * (stream.height or 0)
    if pixels > cfg.max_frame_pixels:
        raise StageError(
            "probe",
            "frame_too_large",
            f"{stream.width}x{stream.height} frames exceed max_frame_pixels {cfg.max_frame_pixels}",
            source=uri,
        )


def probe_session(
    spec: "SessionSpec",
    cfg: "DecodeConfig",
    containers: Optional[Mapping[str, Any]] = None,
    *,
    check_decode: bool = True,
    read_packets: Optional[Mapping[str, list[Any]]] = None,
) -> dict[str, MediaInfo]:
    """Probe every media source of a session (once per URI) and check they belong together.

    Checks: audio sources have an audio stream (and the requested channel), the video has a video
    stream, lengths are within ``[min_duration_s, max_duration_s]`` and agree within
    ``duration_tolerance_s``. ``containers``: files already open, by URI (described in place,
    not opened again); ``check_decode=False`` and ``read_packets`` (a list per URI): see
    ``describe_container`` (decode's own use: its full decoding pass proves decodability, with
    ``StageError("decode", "undecodable")``, so decoding a first frame here would be wasted).
    """
    infos: dict[str, MediaInfo] = {}
    for uri in dict.fromkeys([a.uri for a in spec.audio] + ([spec.video.uri] if spec.video else [])):
        if containers is not None and uri in containers:
            kept = read_packets.get(uri) if read_packets is not None else None
            infos[uri] = describe_container(containers[uri], uri, check_decode=check_decode, read_packets=kept)
        else:
            infos[uri] = probe_media(uri, check_decode=check_decode)
    _check_lengths(_source_lengths(spec, cfg, infos), cfg, spec.session_id)
    return infos


def _source_lengths(spec: "SessionSpec", cfg: "DecodeConfig", infos: Mapping[str, MediaInfo]) -> dict[str, float]:
    """Each source's length (when its headers give one), after checking it has the streams asked for."""
    lengths: dict[str, float] = {}
    for a in spec.audio:
        info = infos[a.uri]
        stream = info.first("audio")
        if stream is None:
            raise StageError("probe", "no_audio_stream", "audio source has no audio stream", source=a.uri)
        if stream.channels is not None and a.channel >= stream.channels:
            raise StageError(
                "probe",
                "wrong_channel_count",
                f"manifest asks for channel {a.channel} but the file has {stream.channels} channel(s)",
                source=a.uri,
            )
        d = media_duration_s(info, "audio")
        if d is not None:
            lengths[a.uri] = d
    if spec.video is not None:
        info = infos[spec.video.uri]
        if info.first("video") is None:
            raise StageError("probe", "no_video_stream", "video source has no video stream", source=spec.video.uri)
        _check_frame_size(info.first("video"), cfg, spec.video.uri)  # type: ignore[arg-type]
        if not spec.audio and info.first("audio") is None:
            raise StageError(
                "probe",
                "no_audio_stream",
                "the session has no audio source and its video carries no audio",
                source=spec.video.uri,
            )
        d = media_duration_s(info, "video" if spec.audio else None)
        if d is not None:
            lengths[spec.video.uri] = d
    return lengths


def _check_lengths(lengths: Mapping[str, float], cfg: "DecodeConfig", session_id: str) -> None:
    """Every source within ``[min_duration_s, max_duration_s]``, all within ``duration_tolerance_s``."""
    for uri, d in lengths.items():
        if d < cfg.min_duration_s:
            raise StageError("probe", "too_short", f"{d:.3f} s is shorter than {cfg.min_duration_s} s", source=uri)
        if d > cfg.max_duration_s:
            raise StageError("probe", "too_long", f"{d:.1f} s is longer than {cfg.max_duration_s} s", source=uri)
    if len(lengths) > 1:
        lo, hi = min(lengths.values()), max(lengths.values())
        if hi - lo > cfg.duration_tolerance_s:
            detail = ", ".join(f"{u.rsplit('/', 1)[-1]}={d:.2f}s" for u, d in lengths.items())
            raise StageError(
                "probe",
                "duration_mismatch",
                f"source durations differ by {hi - lo:.2f} s (> {cfg.duration_tolerance_s} s): {detail}",
                source=session_id,
            )
