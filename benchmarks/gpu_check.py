"""One prepared GPU check: tokenization, decode and training throughput on one CUDA device, in minutes.

    .venv/bin/python benchmarks/gpu_check.py

Without CUDA it prints ``{"cuda": false}`` and exits 0 (only torch is imported). With CUDA it runs
each part below in a child process of its own with a hard time cap (about 7.5 minutes in all), so a
part that fails, hangs or runs out of memory is reported as ``{"error": "..."}`` and the rest still run:

- ``encodec``: EnCodec 6 kbps audio seconds per wall second (``*_rt``) of ``--streams`` speech-like
  streams of ``--stream-s`` seconds (``load_audio_tokenizer``, seeded weights), fp32 and bf16, each at
  ``batch_windows`` 8, 32 and 128 (a 60 s stream is 6 windows of 10 s); one warm-up call first;
  ``bf16_codes_differ_vs_fp32``: the fraction of codes bf16 changes; ``*_batch_invariant``: whether
  three sessions of uneven lengths tokenized in one gathered call (``encode_many``, as a tokenizer actor
  batches concurrent sessions) get exactly the codes each gets alone.
- ``dmel``: dMel audio seconds per wall second on CUDA and on the CPU with one thread, same audio;
  ``bytes_equal``: whether the two give the same tokens.
- ``vad``: the VAD's segmentation network (``align/segmentation.py``) in audio seconds per wall second on
  CUDA and on the CPU with one thread, same audio; ``max_abs_diff_vs_cpu`` of the speech scores. Where
  whisperX is not installed, ``--vad-state FILE`` reads the network's tensors from the segmenter's
  seeded-state cache file written on a machine that has it.
- ``decode``: frames per second decoding a synthetic 640x360 30 fps H.264 video of ``--video-s``
  seconds with PyAV in software (FFmpeg threads) and with PyAV's CUDA hardware decoding (NVDEC, PyAV
  >= 14), or ``"hw_decode": "unavailable: <why>"``; ``pipeline_probe``: the device the build's
  ``decode.hwaccel: auto`` would pick (``media.container.hw_device_type``), null for software.
- ``train_grouped``, ``train_padded``, ``train_loop``: tokens/s and MFU of ``train_small`` in bf16 for
  each expert dispatch (``benchmarks/train.py``'s ``run``; eager, not compiled, to fit the time).
- ``streaming``: wall time of one streaming micro-turn (``microturn.train.realtime``: the model's 15
  frames generated, then the user's chunk appended to the KV cache) of ``train_small`` as configured
  (EnCodec codes through the depth head, frame tokens) and of its encoder-free variant (dMel in and
  out, 80x80 pixels through the hMLP), bf16 weights on CUDA, ``--stream-turns`` turns after 5 warm-up
  turns: ``step_ms`` p50 / p99 / max against the 200 ms budget (goal p99 < 50 ms). Each model frame's
  depth sampling and trunk step are replayed from CUDA graphs (``RealtimeSession(cuda_graphs=True)``);
  ``graph_vs_eager``: the same greedy turns replayed and run eagerly, whether their frames are equal,
  the largest logit difference and the eager step time.

Prints one JSON line last: ``cuda``, ``device``, ``torch``, ``wall_s``, then one entry per part.
``--part NAME --device cpu`` runs one part on the CPU (smaller sizes advised), to check the code paths
on a machine without a GPU.
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

# part -> hard cap in seconds (child start-up included); 465 s in all, under the 8 minutes promised
PART_CAPS_S = {"encodec": 100, "dmel": 40, "vad": 30, "decode": 60, "train_grouped": 50, "train_padded": 50,
               "train_loop": 50, "streaming": 85}
# the encoder-free variant of train_small measured by the streaming part (sizes of configs/dmel.yaml + demo pixels)
ENCODER_FREE = {"audio": "dmel", "video": "pixels", "dmel_channels": 80, "dmel_bins": 16, "pixel_size": 80,
                "pixel_patch": 40}
SOFT_MARGIN_S = 15  # a part stops starting new measurements this long before its cap
DISPATCHES = ("grouped", "padded", "loop")
BATCH_SWEEP = (8, 32, 128)
DISTINCT_STREAMS = 8  # distinct speech-like signals; more streams repeat them (speed does not care)


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn``, the device synchronised before and after."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def speech_streams(streams: int, seconds: float) -> np.ndarray:
    """float32 [streams, samples], whole 200 ms chunks of speech-like audio."""
    from microturn.clock import CHUNK_SAMPLES, CODEC_RATE
    from microturn.tokenizers.calibration import speech_like

    samples = max(1, round(seconds * CODEC_RATE / CHUNK_SAMPLES)) * CHUNK_SAMPLES
    distinct = [speech_like(samples / CODEC_RATE, seed=s)[:samples] for s in range(min(streams, DISTINCT_STREAMS))]
    return np.stack([distinct[i % len(distinct)] for i in range(streams)]).astype(np.float32)


# ---------------------------------------------------------------- parts (each runs in a child)


def part_encodec(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    from microturn.clock import CODEC_RATE
    from microturn.config import AudioCodecConfig
    from microturn.tokenizers.audio import load_audio_tokenizer

    waves = speech_streams(args.streams, args.stream_s)
    audio_s = waves.size / CODEC_RATE
    out: dict[str, Any] = {"streams": waves.shape[0], "audio_s": round(audio_s, 1)}
    codes_by_precision: dict[str, np.ndarray] = {}
    for precision in ("fp32", "bf16"):
        for batch in BATCH_SWEEP:
            key = f"{precision}_b{batch}_rt"
            if time.monotonic() > deadline:
                out[key] = "skipped: time cap"
                continue
            try:
                cfg = AudioCodecConfig(device=args.device, precision=precision, batch_windows=batch)
                tok = load_audio_tokenizer(cfg)
                tok.encode(waves)  # warm-up: kernel choice and allocator caches for these shapes
                wall_s, codes = _timed(args.device, lambda: tok.encode(waves))
                out[key] = round(audio_s / wall_s, 1)
                codes_by_precision.setdefault(precision, codes)
            except Exception as exc:
                out[key] = _error(exc)
    if len(codes_by_precision) == 2:
        out["bf16_codes_differ_vs_fp32"] = round(float((codes_by_precision["bf16"] != codes_by_precision["fp32"]).mean()), 5)
    for precision in ("fp32", "bf16"):
        key = f"{precision}_batch_invariant"
        if time.monotonic() > deadline:
            out[key] = "skipped: time cap"
            continue
        try:
            out[key] = batch_invariant(AudioCodecConfig(device=args.device, precision=precision, batch_windows=8))
        except Exception as exc:
            out[key] = _error(exc)
    return out


def batch_invariant(cfg: Any) -> bool:
    """Whether sessions tokenized together (a tokenizer actor's gathered call, ``encode_many``) get the
    codes each gets alone: three sessions of uneven lengths, so their windows share batches unevenly."""
    from microturn.clock import CHUNK_SAMPLES
    from microturn.tokenizers.audio import load_audio_tokenizer

    tok = load_audio_tokenizer(cfg)
    sessions = [speech_streams(2, s)[:, : round(s * 5) * CHUNK_SAMPLES] for s in (23.0, 41.4, 9.8)]
    together = tok.encode_many(sessions)
    return all(np.array_equal(tok.encode(w), c) for w, c in zip(sessions, together))


def on_device_and_one_cpu_thread(args: argparse.Namespace, deadline: float, out: dict[str, Any], audio_s: float,
                                 prepare: Callable[[str], Callable[[], Any]]) -> dict[str, Any]:
    """Time ``prepare(device)()`` (after ``prepare`` made and warmed it) on ``args.device`` and on the CPU
    with one thread; ``out[NAME_rt]`` = audio seconds per wall second. Returns each run's result by name."""
    import torch

    results: dict[str, Any] = {}
    for name, device in ((f"{args.device}", args.device), ("cpu_1thread", "cpu")):
        if time.monotonic() > deadline:
            out[f"{name}_rt"] = "skipped: time cap"
            continue
        try:
            if device == "cpu":
                torch.set_num_threads(1)
            wall_s, results[name] = _timed(device, prepare(device))
            out[f"{name}_rt"] = round(audio_s / wall_s, 1)
        except Exception as exc:
            out[f"{name}_rt"] = _error(exc)
    return results


def part_dmel(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    from microturn.clock import CODEC_RATE
    from microturn.config import DMelConfig
    from microturn.tokenizers.dmel import DMelTokenizer

    waves = speech_streams(args.streams, args.stream_s)
    audio_s = waves.size / CODEC_RATE
    out: dict[str, Any] = {"streams": waves.shape[0], "audio_s": round(audio_s, 1)}

    def prepare(device: str) -> Callable[[], Any]:
        tok = DMelTokenizer(DMelConfig(device=device))
        tok.encode(waves[:, : 10 * CODEC_RATE])  # warm-up
        return lambda: tok.encode(waves)

    tokens = on_device_and_one_cpu_thread(args, deadline, out, audio_s, prepare)
    if len(tokens) == 2:
        a, b = tokens.values()
        out["bytes_equal"] = bool(np.array_equal(a, b))
    return out


def part_vad(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The VAD's segmentation network (align/segmentation.py) on the device and on one CPU thread."""
    from microturn.clock import ASR_RATE, CODEC_RATE

    waves24 = speech_streams(min(args.streams, 4), args.stream_s)
    t24 = np.arange(waves24.shape[1]) / CODEC_RATE
    t16 = np.arange(int(waves24.shape[1] * ASR_RATE / CODEC_RATE)) / ASR_RATE
    waves = np.stack([np.interp(t16, t24, w) for w in waves24]).astype(np.float32)  # speed does not care how
    audio_s = waves.size / ASR_RATE
    out: dict[str, Any] = {"streams": waves.shape[0], "audio_s": round(audio_s, 1)}

    def prepare(device: str) -> Callable[[], Any]:
        seg = segmenter(args.vad_state, device)
        seg(waves[0, : 10 * ASR_RATE])  # warm-up
        return lambda: np.concatenate([seg(w).scores for w in waves])

    scores = on_device_and_one_cpu_thread(args, deadline, out, audio_s, prepare)
    if len(scores) == 2:
        a, b = scores.values()
        out["max_abs_diff_vs_cpu"] = float(np.abs(a - b).max())
    return out


def segmenter(state_file: str | None, device: str) -> Any:
    """The VAD network: from the whisperX wheel's checkpoint, or, where whisperX is not installed (a GPU
    machine with no package index), from a seeded-state cache file the segmenter wrote on another machine
    (``~/.cache/microturn/calibration/segmentation-*.pt``; read with ``weights_only=True``)."""
    from microturn.align.segmentation import Segmenter, load_segmenter

    if not state_file:
        return load_segmenter(None, device)
    import torch

    blob = torch.load(state_file, map_location="cpu", weights_only=True)
    return Segmenter(dict(blob["state"]), device)


def write_test_video(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (640, 360)) -> int:
    """H.264 (libx264 veryfast, crf 23) of a blocky random texture panning 2 px per frame; frame count."""
    import av

    w, h = size
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(0)
    texture = np.kron(rng.integers(0, 256, (h // 8, (w + 2 * n) // 8 + 1), dtype=np.uint8), np.ones((8, 8), np.uint8))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        for i in range(n):
            img = np.repeat(texture[:, 2 * i : 2 * i + w, None], 3, axis=2)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(vs.encode(None))
    return n


def decode_fps(path: Path, hwaccel: Any) -> tuple[float, int, bool]:
    """(frames per second, frames, decoded on the device) for one full decode of ``path``."""
    import av

    with av.open(str(path), hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        if hwaccel is None:
            stream.thread_type = "AUTO"  # the software baseline gets FFmpeg's frame threads
        t0, frames = time.perf_counter(), 0
        for _ in container.decode(stream):
            frames += 1
        wall_s = time.perf_counter() - t0
        on_device = bool(getattr(stream.codec_context, "is_hwaccel", False))
    return frames / wall_s, frames, on_device


def hw_decode(path: Path) -> dict[str, Any] | str:
    """CUDA (NVDEC) decode through PyAV's hwaccel, without software fallback, or why it is unavailable."""
    import av

    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError:
        return f"unavailable: PyAV {av.__version__} has no av.codec.hwaccel (needs >= 14)"
    if "cuda" not in hwdevices_available():
        return f"unavailable: this PyAV's FFmpeg offers {hwdevices_available()}, not cuda"
    try:
        fps, frames, on_device = decode_fps(path, HWAccel(device_type="cuda", allow_software_fallback=False))
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"[:500]
    if not on_device:
        return "unavailable: the decoder did not run on the device"
    return {"fps": round(fps, 1), "frames": frames}


def part_decode(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import av

    from microturn.media.container import hw_device_type

    out: dict[str, Any] = {"pyav": av.__version__, "video": f"640x360 H.264 30 fps, {args.video_s:g} s",
                           "pipeline_probe": hw_device_type()}  # what decode.hwaccel: auto would use here
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu_check.mp4"
        out["frames"] = write_test_video(path, args.video_s)
        try:
            out["sw_fps"] = round(decode_fps(path, None)[0], 1)
        except Exception as exc:
            out["sw_fps"] = _error(exc)
        out["hw_decode"] = hw_decode(path) if time.monotonic() < deadline else "skipped: time cap"
    return out


def part_train(args: argparse.Namespace, dispatch: str) -> dict[str, Any]:
    import torch

    from benchmarks.train import bench_config, run
    from microturn.train.metrics import peak_flops

    cfg = bench_config(args.train_config, run={"compile": False})
    device = torch.device(args.device)
    r = run(cfg, device, cfg.data.batch_size, cfg.data.window_chunks, args.train_steps, dispatch)
    peak = peak_flops(cfg, device)
    return {
        "config": Path(args.train_config).name,
        "batch": cfg.data.batch_size,
        "window_chunks": cfg.data.window_chunks,
        "steps": args.train_steps,
        "compiled": False,
        "dispatch": r["dispatch"],
        "step_s": round(r["step_s"], 4),
        "tokens_per_s": round(r["tokens_per_s"], 1),
        "tflops_per_s": round(r["flops_per_s"] / 1e12, 3),
        "mfu": round(r["flops_per_s"] / peak, 4) if peak else None,
    }


def part_streaming(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import torch

    from benchmarks.train import bench_config
    from microturn.evaluate.replay import step_summary
    from microturn.train.model import InteractionModel

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # as `microturn eval --run` streams: small matmuls, threads only contend
    out: dict[str, Any] = {"config": Path(args.train_config).name, "dtype": str(dtype).removeprefix("torch."),
                           "turns": args.stream_turns, "budget_ms": 200}  # fmt: skip
    for name, variant in (("codes_tokens", {"audio": "codes", "video": "tokens"}), ("dmel_pixels", ENCODER_FREE)):
        if time.monotonic() > deadline:
            out[name] = "skipped: time cap"
            continue
        torch.manual_seed(0)
        model = InteractionModel(bench_config(args.train_config).replace(model=variant).model).to(device, dtype)
        try:
            steps = stream_turns(model, args.stream_turns, deadline)
            out[name] = {"turns": len(steps), "step_ms": step_summary(steps)} if steps else "skipped: time cap"
            if steps and device.type == "cuda":
                out[name]["graph_vs_eager"] = graph_vs_eager(model, deadline)
        except Exception as exc:
            out[name] = _error(exc)
    return out


def graph_vs_eager(model: Any, deadline: float, turns: int = 4) -> dict[str, Any]:
    """The same greedy turns replayed from CUDA graphs (depth head, trunk steps) and run eagerly: whether
    the frames are equal, the largest logit difference, and the eager step time."""
    runs = {}
    for graphs in (True, False):
        session, chunks = stream_session(model, graphs, temperature=0.0)
        outs = [session.turn(next(chunks)) for _ in range(turns) if time.monotonic() < deadline]
        runs[graphs] = (outs, session.step_ms)
    (g, _), (e, eager_ms) = runs[True], runs[False]
    if not g or len(g) != len(e):
        return {"skipped": "time cap"}
    return {
        "turns": len(g),
        "frames_equal": all(np.array_equal(a.audio_XJ, b.audio_XJ) and np.array_equal(a.text_J, b.text_J)
                            for a, b in zip(g, e)),
        "max_abs_logit_diff": max(float((a.audio_logits_JXV - b.audio_logits_JXV).abs().max()) for a, b in zip(g, e)),
        "eager_step_ms_p50": round(float(np.median(eager_ms[1:] or eager_ms)), 2),
    }


def stream_session(model: Any, cuda_graphs: bool = True, temperature: float = 1.0) -> tuple[Any, Any]:
    """A fresh session and an endless iterator of random user chunks (seeded) for it."""
    from microturn.train.realtime import RealtimeSession, UserChunk

    cfg, rng = model.cfg, np.random.default_rng(0)
    dmel = cfg.audio == "dmel"

    def chunks() -> Any:
        while True:
            audio = (rng.integers(0, cfg.dmel_bins, (cfg.dmel_channels, 15), dtype=np.uint8) if dmel
                     else rng.integers(0, cfg.audio_vocab, (cfg.codebooks, 15)))  # fmt: skip
            video = (rng.integers(0, 256, (cfg.pixel_size, cfg.pixel_size, 3), dtype=np.uint8) if cfg.video == "pixels"
                     else rng.integers(0, cfg.frame_vocab, cfg.frame_tokens))  # fmt: skip
            yield UserChunk(audio_XJ=audio, text_J=rng.integers(0, cfg.text_vocab, 15), video=video)

    return RealtimeSession(model, temperature=temperature, seed=0, cuda_graphs=cuda_graphs), chunks()


def stream_turns(model: Any, turns: int, deadline: float) -> list[float]:
    """Micro-turn wall times (ms) of a fresh session fed random user chunks, after 5 warm-up turns."""
    import torch

    session, chunks = stream_session(model)
    for _ in range(5 + turns):
        if time.monotonic() > deadline:
            break
        session.turn(next(chunks))
        if model.bos_D.device.type == "cuda":
            torch.cuda.synchronize()
    return session.step_ms[5:]


def run_part(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + PART_CAPS_S[args.part] - SOFT_MARGIN_S
    try:
        if args.part.startswith("train_"):
            return part_train(args, args.part.removeprefix("train_"))
        parts = {"encodec": part_encodec, "dmel": part_dmel, "vad": part_vad, "decode": part_decode,
                 "streaming": part_streaming}
        return parts[args.part](args, deadline)
    except Exception as exc:
        return _error(exc)


# ---------------------------------------------------------------- the parent


def child(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one part in a fresh process under its hard cap; its last stdout line is its JSON."""
    cap = PART_CAPS_S[part]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--device", args.device,
           "--streams", str(args.streams), "--stream-s", str(args.stream_s), "--video-s", str(args.video_s),
           "--train-config", str(args.train_config), "--train-steps", str(args.train_steps),
           "--stream-turns", str(args.stream_turns)] + (["--vad-state", args.vad_state] if args.vad_state else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {cap} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PART_CAPS_S), help="run one part here and print its JSON")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--streams", type=int, default=32, help="speech-like streams for EnCodec and dMel")
    ap.add_argument("--stream-s", type=float, default=60.0)
    ap.add_argument("--video-s", type=float, default=60.0)
    ap.add_argument("--train-config", default=str(_HERE.parent / "configs" / "train_small.yaml"))
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--vad-state", help="the VAD network's tensors from a segmentation-*.pt seeded-state cache "
                    "file, for a machine without whisperX (default: the whisperX wheel's checkpoint)")
    ap.add_argument("--stream-turns", type=int, default=50, help="measured streaming micro-turns per model")
    args = ap.parse_args()
    if args.part:
        print(json.dumps(run_part(args)))
        return

    t0 = time.perf_counter()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False}))
        return
    result: dict[str, Any] = {"cuda": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "wall_s": None}
    for part in PART_CAPS_S:
        result[part] = child(part, args)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
