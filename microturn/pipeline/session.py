"""One session through every stage: decode -> align -> tokenize -> events -> chunk.

Records carry what the next stage needs: decode gives ``DecodedMedia`` (the only record with waves),
align a ``Timeline`` beside it, tokenization reads a ``TokenizeInput`` and gives ``Tokens``, and
chunking takes the session's ``SessionHeader``, timeline, tokens and events.

This is the unit of work the Ray job schedules (microturn/jobs/build.py), and it runs the same
without Ray (tests, benchmarks, debugging). Bookkeeping shared by all stages — timing, media seconds,
the stage that failed — lives here once instead of in every stage.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from microturn.clock import GRID
from microturn.config import BuildConfig
from microturn.format import member_table
from microturn.manifest import SessionSpec
from microturn.pipeline.align import align_session
from microturn.pipeline.chunk import make_samples
from microturn.pipeline.decode import decode_session
from microturn.pipeline.events import detect_events, session_event_stats
from microturn.pipeline.tokenize import tokenize_input, tokenize_session
from microturn.records import DecodedMedia, Sample, StageError, Timeline, TokenizeInput, Tokens

if TYPE_CHECKING:
    from microturn.tokenizers import TokenizerSet


@dataclass
class SessionResult:
    session_id: str
    samples: int  # written by the session's writer (``process_session``)
    media_s: float  # session length (24 kHz samples / rate)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    stats: dict[str, Any] = field(default_factory=dict)  # event statistics, quality, flags

    def summary(self) -> dict[str, Any]:
        """Small JSON-able record of the result (what the job keeps per finished session)."""
        return {
            "session_id": self.session_id,
            "samples": self.samples,
            "media_s": self.media_s,
            "stage_s": {k: round(v, 4) for k, v in self.stage_s.items()},
            "stats": self.stats,
        }


class _StageClock:
    """Times each stage and names the stage an unexpected exception escaped from."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "decode"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@contextlib.contextmanager
def _local_sources(spec: SessionSpec) -> Iterator[SessionSpec]:
    """The session with object-store sources fetched into a temporary folder (deleted afterwards).

    Decoders seek a lot; a local copy is faster and sturdier than seeking over HTTP. Local sources pass
    through untouched."""
    from microturn import storage

    if not any(storage.is_remote(u) for u in spec.source_uris()):
        yield spec
        return
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix=f"microturn-{spec.session_id}-") as tmp:
        try:
            local = {u: str(storage.fetch_local(u, Path(tmp))) for u in spec.source_uris()}
        except (OSError, FileNotFoundError) as exc:
            raise StageError("probe", "unreadable", f"cannot fetch source: {exc}") from exc
        data = spec.model_dump()
        if data.get("video"):
            data["video"]["uri"] = local[data["video"]["uri"]]
        for a in data["audio"]:
            a["uri"] = local[a["uri"]]
        if data.get("transcript"):
            data["transcript"]["uri"] = local[data["transcript"]["uri"]]
        data["meta"] = {**data.get("meta", {}), "remote_sources": spec.source_uris()}
        yield SessionSpec.model_validate(data)


def _with_original_uris(media: DecodedMedia, local: SessionSpec, original: SessionSpec) -> DecodedMedia:
    """Provenance names the URIs of the manifest, not the temporary local copies."""
    if local is original:
        return media
    mapping = dict(zip(local.source_uris(), original.source_uris()))
    streams = tuple(replace(s, source_uri=mapping.get(s.source_uri, s.source_uri)) for s in media.streams)
    video = replace(media.video, source_uri=mapping.get(media.video.source_uri, media.video.source_uri)) if media.video else None
    provenance = media.provenance.with_uris(mapping) if media.provenance is not None else None
    return replace(media, streams=streams, video=video, provenance=provenance)


def _with_original_source(err: StageError, local: SessionSpec, original: SessionSpec) -> StageError:
    """The error as the quarantine shows it: naming the manifest's URIs, never the temporary local
    copies (whose random folder names would also make quarantine.parquet differ between runs)."""
    if local is original:
        return err
    mapping = dict(zip(local.source_uris(), original.source_uris()))
    message = err.message
    for tmp, uri in mapping.items():
        message = message.replace(tmp, uri)
    source = mapping.get(err.source, err.source) if err.source else None
    return StageError(err.stage, err.reason, message, source=source)


class SessionTokenizer(Protocol):
    """What the session runner needs from tokenization: in this process or in a Ray actor pool."""

    def tokenize(self, inp: TokenizeInput) -> Tokens: ...

    def describe(self) -> dict[str, dict[str, Any]]: ...

    def members(self) -> list[dict[str, Any]]: ...


class LocalTokenizer:
    """Tokenize in the calling process with already loaded representations."""

    def __init__(self, toks: "TokenizerSet") -> None:
        self.toks = toks

    def tokenize(self, inp: TokenizeInput) -> Tokens:
        return tokenize_session(inp, self.toks)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Fingerprints and vocabularies, as dataset.json records them (the validator checks token ranges)."""
        return self.toks.describe()

    def members(self) -> list[dict[str, Any]]:
        """The member table of the samples it makes, as dataset.json lists it."""
        return member_table(self.toks.member_specs()).to_json()


def _decode_and_align(spec: SessionSpec, cfg: BuildConfig, clock: _StageClock) -> tuple[DecodedMedia, Timeline]:
    """The media stages, on local copies of the sources (removed when this returns)."""
    local_spec = spec
    try:
        with contextlib.ExitStack() as stack:
            with clock.stage("fetch"):
                local_spec = stack.enter_context(_local_sources(spec))
            with clock.stage("decode"):
                # the A/V offset is estimated from this pass: nothing after decode opens the files
                estimate = cfg.align.estimate_av_offset
                media = decode_session(local_spec, cfg.decode, trace=estimate,
                                       candidates=estimate and cfg.align.apply_av_offset)
                held = [_with_original_uris(media, local_spec, spec)]
                del media
            with clock.stage("align"):
                # handed over, not kept here: align frees the 16 kHz waves once it is done with them
                return align_session(held.pop(), local_spec, cfg.align, release_16k=True)
    except StageError as err:
        raise _with_original_source(err, local_spec, spec) from err
    except Exception as exc:  # a bug or an unforeseen input: keep the job alive, name the stage
        err = StageError(clock.current, f"internal:{type(exc).__name__}", str(exc) or repr(exc))
        raise _with_original_source(err, local_spec, spec) from exc


def process_session(spec: SessionSpec, cfg: BuildConfig, tokenizer: SessionTokenizer,
                    write: Callable[[Iterable[Sample]], Any]) -> SessionResult:
    """Run every stage on one session; ``write`` takes its samples as the chunk stage makes them (one
    at a time: a session's samples are never all in memory). Data problems raise ``StageError``
    (-> quarantine); an unexpected exception is re-raised as ``StageError(stage, "internal:<Type>")``
    so that the failing stage is always named."""
    clock = _StageClock()
    media, timeline = _decode_and_align(spec, cfg, clock)
    try:
        with clock.stage("tokenize"):
            inp = tokenize_input(media, timeline)
            header, num_samples, warnings, decoder = media.header(), media.num_samples, media.warnings, media.decoder
            del media  # the waves are not needed past tokenization's input: free them before encoding
            tokens = tokenizer.tokenize(inp)
            del inp
        with clock.stage("chunk"):  # and writing the samples
            events = detect_events(timeline.activity, cfg.events)
            samples = _Counted(make_samples(header, timeline, tokens, events, cfg.chunk))
            write(samples)
            event_stats = session_event_stats(timeline.activity, events, cfg.events)
    except StageError:
        raise
    except Exception as exc:
        raise StageError(clock.current, f"internal:{type(exc).__name__}", str(exc) or repr(exc)) from exc
    stats = {
        "events": event_stats,
        "quality": timeline.quality,
        "flags": list(timeline.flags),
        "warnings": list(warnings),
        "streams": len(header.streams),
        "decoder": decoder.to_json(),
    }
    media_s = float(GRID.samples_to_seconds(num_samples))
    return SessionResult(spec.session_id, samples.count, media_s, clock.seconds, stats)


class _Counted:
    """An iterable of samples that counts those taken."""

    def __init__(self, samples: Iterator[Sample]) -> None:
        self._samples = samples
        self.count = 0

    def __iter__(self) -> Iterator[Sample]:
        for sample in self._samples:
            self.count += 1
            yield sample
