"""dMel against EnCodec: tokenization speed on one CPU thread, and how well each round trip keeps speech.

    .venv/bin/python benchmarks/dmel.py [--inputs A B ...] [--speed-seconds 60] [--repeats 3]

Speed: the same audio (the inputs' first channels, end to end, tiled to ``--speed-seconds``) through
``DMelTokenizer`` (default config) and the seeded EnCodec (``load_audio_tokenizer(AudioCodecConfig())``,
the one every machine has), one torch thread, in this process, interleaved repeats, best of each;
``*_rt`` = audio seconds per wall second, ``ratio`` = dmel_rt / encodec_rt.

Round trip, per input (default: speech/jfk.flac and dialogue/katiesteve_mono.wav from ../shared/media),
every channel a stream: encode, decode (dMel: Griffin-Lim; EnCodec: its decoder), then
- ``corr``: median over frames of the Pearson correlation across the 80 mel channels between the
  original's log-mel and the decoded wave's, both from dMel's analysis (unbinned) clipped to its log
  range (below it is silence); frames flat in both are skipped;
- ``stoi``: pystoi's STOI of decoded against original at 24 kHz.
The seeded EnCodec is untrained, so its figures are the contrast of a codec that keeps nothing.

``--demo-share DIR``: instead, dMel's share of a demo build's wall time. Builds the demo corpus (``make
demo``'s 8 sessions of 30 s, configs/demo.yaml) under DIR, then decodes each session's audio as the
build does and times ``DMelTokenizer.tokenize`` on it (one thread, best of ``--repeats``);
``share_of_wall`` = those seconds / the build's wall time, ``share_of_stages`` = / the seconds its
workers spent in all stages together (stats.json ``stage_s``: CPU time the build asked for).

Prints one JSON line last.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would come first on sys.path: put the repo there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from microturn.clock import CHUNK_SAMPLES, CODEC_RATE  # noqa: E402

MEDIA = _HERE.parent / ".." / "shared" / "media"
DEFAULT_INPUTS = ("speech/jfk.flac", "dialogue/katiesteve_mono.wav")


def read_24k(path: Path) -> np.ndarray:
    """float32 [channels, samples] at 24 kHz, padded with silence to whole 200 ms chunks."""
    from tests.media_helpers import read_audio

    wave = read_audio(path, CODEC_RATE).astype(np.float32)
    n = -(-wave.shape[1] // CHUNK_SAMPLES) * CHUNK_SAMPLES
    return np.pad(wave, ((0, 0), (0, n - wave.shape[1])))


def frame_correlation(a_MF: np.ndarray, b_MF: np.ndarray) -> float:
    """Median over frames of the Pearson correlation across mel channels (frames flat in both skipped)."""
    a, b = a_MF - a_MF.mean(0), b_MF - b_MF.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    ok = den > 0
    return float(np.median((a * b).sum(0)[ok] / den[ok]))


def round_trip(dmel, wave: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """Mean over streams of the log-mel correlation and STOI of ``decoded`` against ``wave`` [S, N]."""
    from pystoi import stoi

    lo, hi = dmel.cfg.log_min, dmel.cfg.log_max
    before = np.clip(np.log(np.maximum(dmel.mel_power(wave), 1e-300)), lo, hi)  # [S, M, F]
    after = np.clip(np.log(np.maximum(dmel.mel_power(decoded), 1e-300)), lo, hi)
    corr = [frame_correlation(b, a) for b, a in zip(before, after)]
    scores = [stoi(w, d, CODEC_RATE) for w, d in zip(wave, decoded)]
    return {"corr": round(float(np.mean(corr)), 4), "stoi": round(float(np.mean(scores)), 4)}


def speed(dmel, codec, wave: np.ndarray, repeats: int) -> tuple[float, float]:
    """(dMel seconds, EnCodec seconds) for float32 [1, N], best of interleaved repeats."""
    dmel.encode(wave[:, :48000])  # warm-up (FFT plans, oneDNN primitive caches)
    codec.encode(wave[:, :48000])
    dmel_s = codec_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dmel.encode(wave)
        dmel_s = min(dmel_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        codec.encode(wave)
        codec_s = min(codec_s, time.perf_counter() - t0)
    return dmel_s, codec_s


def demo_share(workdir: Path, repeats: int) -> dict[str, float]:
    """dMel seconds on the demo sessions' audio against the demo build's wall and stage seconds."""
    import torch

    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.manifest import load_manifest
    from microturn.pipeline.decode import decode_session
    from microturn.pipeline.tokenize import padded_waves
    from microturn.records import TokenizeInput
    from microturn.synth import synthesize_corpus
    from microturn.tokenizers.dmel import DMelTokenizer

    manifest = synthesize_corpus(workdir / "media", sessions=8, seed=0, duration_s=30.0)
    cfg = load_config(_HERE.parent / "configs" / "demo.yaml", [])
    shutil.rmtree(workdir / "corpus", ignore_errors=True)  # a whole build, not a resumed one
    summary = run_build(str(manifest), str(workdir / "corpus"), cfg, progress=False)
    specs, _ = load_manifest(manifest)
    inputs = []
    for spec in specs:  # what the tokenize stage hands dMel: the padded 24 kHz streams
        media = decode_session(spec, cfg.decode)
        inputs.append(TokenizeInput(media.num_samples, padded_waves(media), np.zeros((0, 1, 1, 3), np.uint8),
                                    np.zeros((0,), np.int32), ()))
    torch.set_num_threads(1)
    dmel = DMelTokenizer(cfg.tokenizers.dmel.model_copy(update={"device": "cpu"}))
    dmel.tokenize(inputs[:1])  # warm-up
    dmel_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dmel.tokenize(inputs)
        dmel_s = min(dmel_s, time.perf_counter() - t0)
    stages_s = sum(summary.stage_s.values())
    return {"sessions": len(inputs), "media_s": round(summary.media_s_in, 1), "dmel_s": round(dmel_s, 3),
            "build_wall_s": round(summary.wall_s, 2), "build_stage_s": round(stages_s, 2),
            "share_of_wall": round(dmel_s / summary.wall_s, 4), "share_of_stages": round(dmel_s / stages_s, 4),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=[str(MEDIA / p) for p in DEFAULT_INPUTS])
    ap.add_argument("--speed-seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-share", type=Path, metavar="DIR", help="dMel's share of a demo build's wall time "
                    "(builds the demo corpus under DIR)")
    args = ap.parse_args()
    if args.demo_share:
        print(json.dumps(demo_share(args.demo_share, args.repeats)))
        return

    import torch

    from microturn.config import AudioCodecConfig, DMelConfig
    from microturn.tokenizers.audio import load_audio_tokenizer
    from microturn.tokenizers.dmel import DMelTokenizer

    torch.set_num_threads(1)
    dmel = DMelTokenizer(DMelConfig(device="cpu"))
    codec = load_audio_tokenizer(AudioCodecConfig(device="cpu"))
    waves = {Path(p).name: read_24k(Path(p)) for p in args.inputs}

    speech = np.concatenate([w[0] for w in waves.values()])
    n = int(args.speed_seconds * CODEC_RATE) // CHUNK_SAMPLES * CHUNK_SAMPLES
    tiled = np.tile(speech, -(-n // len(speech)))[None, :n]
    dmel_s, codec_s = speed(dmel, codec, tiled, args.repeats)

    trips = {}
    for name, wave in waves.items():
        trips[name] = {"dmel": round_trip(dmel, wave, dmel.decode(dmel.encode(wave))),
                       "encodec": round_trip(dmel, wave, codec.decode(codec.encode(wave)))}

    seconds = n / CODEC_RATE
    result = {
        "audio_s": round(seconds, 2),
        "threads": 1,
        "dmel": dmel.fingerprint,
        "encodec": codec.fingerprint,
        "dmel_rt": round(seconds / dmel_s, 1),  # audio seconds per wall second
        "encodec_rt": round(seconds / codec_s, 2),
        "round_trip": trips,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ratio": round(codec_s / dmel_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
