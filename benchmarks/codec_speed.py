"""Audio tokenization throughput: microturn's AudioTokenizer against the stock EnCodec usage.

    .venv/bin/python benchmarks/codec_speed.py [--input PATH] [--seconds N] [--threads 2] [--repeats 2]

Baseline ("stock"): the encodec README usage, one ``model.encode(wav)`` per file at 6 kbps with
default settings (weight norm recomputed per call, NCW Conv1d), the same weights, the same audio, the
same thread count. Ours: ``AudioTokenizer`` with the default config (fast engine: folded weight
norm, channels-last convs run tile by tile in cache; float32, 10 s windows + 1 s context, 8 windows
per call), then the opt-in bf16 path. Both without trained
weights (the same seeded untrained codec; speed does not depend on weight values).

Codes: the fraction of our codes that differ from the stock codes is reported next to the
"noise floor" (the fraction that differs when the stock model itself runs with one thread instead
of N), so that numerical near-ties are told apart from real disagreement.

Two figures for ours: ``ours_fp32_rt`` is one tokenizer in one process with N threads, like the stock
run; ``ours_deployed_rt`` is how the build job runs it: N worker processes with one thread each (one
per CPU, each holding its own tokenizer), the same audio split between them by file. Small-channel
convolutions scale poorly across threads and well across processes; the job is built around that.

Prints one JSON line last; ``ratio`` = our deployed audio seconds per wall second over the stock one's
(``ratio_same_process`` compares the one-process figure).
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
import time  # noqa: E402

import numpy as np  # noqa: E402

from microturn.clock import CODEC_RATE, HOP  # noqa: E402


def load_audio(path: str | None, seconds: float) -> np.ndarray:
    from microturn.clock import CHUNK_SAMPLES

    if path is None:
        from microturn.tokenizers.calibration import speech_like

        wave = speech_like(seconds, seed=2024)
    else:
        import av

        with av.open(path) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=CODEC_RATE)
            parts = [f.to_ndarray().reshape(-1) for fr in container.decode(audio=0) for f in resampler.resample(fr)]
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        wave = np.concatenate(parts).astype(np.float32)[: int(seconds * CODEC_RATE)]
    n = -(-len(wave) // CHUNK_SAMPLES) * CHUNK_SAMPLES
    return np.pad(wave, (0, n - len(wave)))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _deployed_worker(wave: np.ndarray, ready, start, done) -> None:
    """One build worker: single-threaded torch, its own tokenizer; encodes its file when told to."""
    import torch

    torch.set_num_threads(1)
    from microturn.config import AudioCodecConfig
    from microturn.tokenizers.audio import load_audio_tokenizer

    tok = load_audio_tokenizer(AudioCodecConfig())
    tok.encode(wave[None, : 2 * CODEC_RATE])  # warm-up, like the in-process runs
    ready.put(True)
    start.wait()
    codes = tok.encode(wave[None])
    done.put((time.perf_counter(), codes))


def deployed_seconds(waves: list[np.ndarray], repeats: int) -> tuple[float, list[np.ndarray]]:
    """Wall time for one single-threaded worker process per file to encode its file (load not timed)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    best, codes = float("inf"), []
    for _ in range(repeats):
        ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_deployed_worker, args=(w, ready, start, done)) for w in waves]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)
        t0 = time.perf_counter()
        start.set()
        results = [done.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        best = min(best, max(end for end, _ in results) - t0)
        codes = [c for _, c in results]
    return best, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="an audio/video file (default: 30 s of speech-like audio)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=256, help="frames for the frame codec figure")
    args = ap.parse_args()

    import torch
    from encodec import EncodecModel

    from microturn.config import AudioCodecConfig, FrameCodecConfig
    from microturn.tokenizers.audio import _seeded_state, load_audio_tokenizer
    from microturn.tokenizers.frames import load_frame_tokenizer

    torch.set_num_threads(args.threads)
    wave = load_audio(args.input, args.seconds)
    seconds = len(wave) / CODEC_RATE
    # The deployed run gets the same audio as one file per worker (a session's speakers, say).
    waves = [wave] * args.threads

    # -- stock usage (encodec README): model.encode per file, 6 kbps
    stock = EncodecModel._get_model([1.5, 3.0, 6.0, 12.0, 24.0], CODEC_RATE, 1, causal=True, model_norm="weight_norm")
    stock.load_state_dict(_seeded_state(0, 8).tensors)
    stock.eval()
    stock.set_target_bandwidth(6.0)
    x = torch.from_numpy(wave).view(1, 1, -1)

    def stock_encode() -> np.ndarray:
        with torch.no_grad():
            frames = stock.encode(x)
        return torch.cat([f[0] for f in frames], dim=-1)[0].numpy()

    ours32 = load_audio_tokenizer(AudioCodecConfig())
    ours16 = load_audio_tokenizer(AudioCodecConfig(precision="bf16"))
    ours32.encode(wave[None, : 2 * CODEC_RATE])  # warm-up (oneDNN primitive caches)
    ours16.encode(wave[None, : 2 * CODEC_RATE])
    # Interleaved repeats, best of each: other processes on a shared machine slow runs at random,
    # and interleaving keeps a burst of contention from landing on one contender only.
    stock_s = ours_s = bf16_s = float("inf")
    for _ in range(args.repeats):
        t, stock_codes = best_of(stock_encode, 1)
        stock_s = min(stock_s, t)
        t, ours_codes = best_of(lambda: ours32.encode(wave[None])[0], 1)
        ours_s = min(ours_s, t)
        t, bf16_codes = best_of(lambda: ours16.encode(wave[None])[0], 1)
        bf16_s = min(bf16_s, t)

    deployed_s, deployed_codes = deployed_seconds(waves, args.repeats)
    deployed_differ = float(np.mean([(c[0] != ours_codes).mean() for c in deployed_codes]))

    # noise floor: the stock model with 1 thread on the first 10 s
    head = min(len(wave), 240_000)
    torch.set_num_threads(1)
    with torch.no_grad():
        one = torch.cat([f[0] for f in stock.encode(x[..., :head])], -1)[0].numpy()
    torch.set_num_threads(args.threads)
    head_frames = head // HOP

    # frame codec
    ftok = load_frame_tokenizer(FrameCodecConfig())
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 64, 64, 3), dtype=np.uint8)
    ftok.encode(frames[:8])
    frame_s, _ = best_of(lambda: ftok.encode(frames), args.repeats)

    result = {
        "audio_s": round(seconds, 2),
        "threads": args.threads,
        "input": args.input or "speech_like(seed=2024)",
        "stock_rt": round(seconds / stock_s, 2),  # audio seconds per wall second
        "ours_fp32_rt": round(seconds / ours_s, 2),
        "ours_deployed_rt": round(len(waves) * seconds / deployed_s, 2),
        "deployed": f"{len(waves)} worker processes x 1 thread, one {seconds:g} s file each",
        "deployed_codes_differ_vs_ours_nthreads": round(deployed_differ, 5),
        "ours_bf16_rt": round(seconds / bf16_s, 2),
        "bf16_ratio": round(stock_s / bf16_s, 3),
        "fp32_codes_differ_vs_stock": round(float((ours_codes != stock_codes).mean()), 5),
        "fp32_codes_differ_vs_stock_first_window": round(float((ours_codes[:, :750] != stock_codes[:, :750]).mean()), 5),
        "stock_1thread_vs_nthreads_differ": round(float((one != stock_codes[:, :head_frames]).mean()), 5),
        "bf16_codes_differ_vs_fp32": round(float((bf16_codes != ours_codes).mean()), 5),
        "bf16_codes_differ_per_codebook": [round(float(v), 4) for v in (bf16_codes != ours_codes).mean(1)],
        "frame_codec_fps": round(args.frames / frame_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ratio_same_process": round(stock_s / ours_s, 3),
        "ratio": round((len(waves) * seconds / deployed_s) / (seconds / stock_s), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
