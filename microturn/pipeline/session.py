"""One session through every stage: decode -> align -> tokenize -> events -> chunk.

This is the unit of work the Ray job schedules (microturn/jobs/build.py), and it runs the same
without Ray (tests, benchmarks, debugging). Bookkeeping shared by all stages — timing, media seconds,
the stage that failed — lives here once instead of in every stage.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from microturn.clock import GRID
from microturn.config import BuildConfig
from microturn.manifest import SessionSpec
from microturn.records import AlignedSession, Sample, StageError, TokenizedSession

if TYPE_CHECKING:
    from microturn.tokenizers import TokenizerSet


@dataclass
class SessionResult:
    session_id: str
    samples: list[Sample]
    media_s: float  # session length (24 kHz samples / rate)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    stats: dict[str, Any] = field(default_factory=dict)  # event statistics, quality, flags

    def summary(self) -> dict[str, Any]:
        """Small JSON-able record of the result (what the job keeps per finished session)."""
        return {
            "session_id": self.session_id,
            "samples": len(self.samples),
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


def _with_original_uris(decoded: Any, local: SessionSpec, original: SessionSpec) -> Any:
    """Provenance names the URIs of the manifest, not the temporary local copies."""
    if local is original:
        return decoded
    from dataclasses import replace

    mapping = dict(zip(local.source_uris(), original.source_uris()))

    def swap(x: Any) -> Any:
        if isinstance(x, str):
            return mapping.get(x, x)
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(swap(v) for v in x)
        return x

    streams = tuple(replace(s, source_uri=swap(s.source_uri)) for s in decoded.streams)
    video = replace(decoded.video, source_uri=swap(decoded.video.source_uri)) if decoded.video else None
    return replace(decoded, streams=streams, video=video, sources=swap(decoded.sources))


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

    text_pad_id: int

    def tokenize(self, aligned: AlignedSession) -> TokenizedSession: ...

    def describe(self) -> dict[str, dict[str, Any]]: ...


class LocalTokenizer:
    """Tokenize in the calling process with an already loaded ``TokenizerSet``."""

    def __init__(self, toks: "TokenizerSet") -> None:
        self.toks = toks
        self.text_pad_id = toks.text.pad_id

    def tokenize(self, aligned: AlignedSession) -> TokenizedSession:
        from microturn.pipeline.tokenize import tokenize_session

        return tokenize_session(aligned, self.toks)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Fingerprints and vocabularies, as dataset.json records them (the validator checks token ranges)."""
        t = self.toks
        return {
            "audio": {"fingerprint": t.audio.fingerprint, "vocab_size": t.audio.vocab_size,
                      "codebooks": t.audio.num_codebooks},
            "frames": {"fingerprint": t.frames.fingerprint, "vocab_size": t.frames.vocab_size,
                       "grid": list(t.frames.grid)},
            "text": {"fingerprint": t.text.fingerprint, "vocab_size": t.text.vocab_size},
        }


def process_session(spec: SessionSpec, cfg: BuildConfig, tokenizer: SessionTokenizer) -> SessionResult:
    """Run every stage on one session. Data problems raise ``StageError`` (-> quarantine);
    an unexpected exception is re-raised as ``StageError(stage, "internal:<Type>")`` so that the
    failing stage is always named."""
    from microturn.pipeline.align import align_session
    from microturn.pipeline.chunk import make_samples
    from microturn.pipeline.decode import decode_session
    from microturn.pipeline.events import detect_events, session_event_stats

    clock = _StageClock()
    local_spec = spec
    try:
        with contextlib.ExitStack() as stack:
            with clock.stage("fetch"):
                local_spec = stack.enter_context(_local_sources(spec))
            with clock.stage("decode"):
                decoded = _with_original_uris(decode_session(local_spec, cfg.decode), local_spec, spec)
            with clock.stage("align"):
                aligned = align_session(decoded, local_spec, cfg.align)
        with clock.stage("tokenize"):
            tokenized = tokenizer.tokenize(aligned)
        with clock.stage("chunk"):
            events = detect_events(aligned.activity, cfg.events)
            samples = make_samples(tokenized, events, cfg.chunk, text_pad_id=tokenizer.text_pad_id)
            event_stats = session_event_stats(aligned.activity, events, cfg.events)
    except StageError as err:
        raise _with_original_source(err, local_spec, spec) from err
    except Exception as exc:  # a bug or an unforeseen input: keep the job alive, name the stage
        err = StageError(clock.current, f"internal:{type(exc).__name__}", str(exc) or repr(exc))
        raise _with_original_source(err, local_spec, spec) from exc
    media_s = float(GRID.samples_to_seconds(decoded.num_samples))
    stats = {
        "events": event_stats,
        "quality": aligned.quality,
        "flags": list(aligned.flags),
        "warnings": list(decoded.warnings),
        "streams": len(decoded.streams),
    }
    return SessionResult(spec.session_id, samples, media_s, clock.seconds, stats)
