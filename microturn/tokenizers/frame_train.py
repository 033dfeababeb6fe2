"""Train the FSQ frame codec on video frames; the checkpoint is what ``tokenizers.frames.checkpoint`` loads.

    train_frame_codec(frames, cfg, out_path, steps=2000, device="auto", log=print)

``frames`` is an iterable of uint8 arrays ([H, W, 3] or [n, H, W, 3]), a video file, or a sessions
manifest (JSONL/Parquet: every row's video is read). Frames are cropped/resized to ``image_size``,
kept in a bounded reservoir, and batches are drawn from it with a seeded generator. The loss is
mean squared error on [-1, 1] pixels (FSQ needs no codebook or commitment losses); PSNR is logged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from microturn.config import FrameCodecConfig
from microturn.devices import resolve_device
from microturn.media.container import open_container
from microturn.records import StageError

FrameSource = Union[Iterable[np.ndarray], str, Path]
RESERVOIR = 4096  # frames kept in memory for sampling batches


def iter_video_frames(uri: Any, size: int, every_s: float = 0.2) -> Iterator[np.ndarray]:
    """uint8 [size, size, 3] frames of a video (path or URI), one per ``every_s`` of presentation time."""
    import av

    from microturn.tokenizers.frames import resize_frames

    with open_container(str(uri), "tokenize") as container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = None
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is not None and next_t is not None and t < next_t:
                    continue
                next_t = (t or 0.0) + every_s
                yield resize_frames(frame.to_ndarray(format="rgb24")[None], size)[0]
        except av.error.FFmpegError:
            return  # keep what decoded; a broken tail is not fatal for training data


def _frames_from(source: FrameSource, size: int) -> Iterator[np.ndarray]:
    from microturn.tokenizers.frames import resize_frames

    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix in (".jsonl", ".json", ".parquet"):
            from microturn.manifest import load_manifest

            sessions, _problems = load_manifest(path)  # bad rows are the build's business, not ours
            for spec in sessions:
                if spec.video is not None:
                    yield from iter_video_frames(spec.video.uri, size)
        else:
            yield from iter_video_frames(str(path), size)
        return
    for item in source:
        arr = np.asarray(item)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [n, H, W, 3] or [H, W, 3], got {arr.dtype} {arr.shape}")
        yield from resize_frames(arr, size)


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error measured on [-1, 1] pixels (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train_frame_codec(
    frames: FrameSource,
    cfg: FrameCodecConfig,
    out_path: Path,
    steps: int = 2000,
    device: str = "auto",
    log: Optional[Callable[[str], Any]] = print,
    batch_size: int = 32,
    lr: float = 2e-3,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train from the seeded initial weights; write a checkpoint; return a summary with PSNR history."""
    import torch

    from microturn.tokenizers.frames import CHECKPOINT_FORMAT, seeded_codec

    dev = resolve_device(device, "tokenize")
    rng = np.random.default_rng(cfg.seed)
    pool: list[np.ndarray] = []
    for i, frame in enumerate(_frames_from(frames, cfg.image_size)):
        if len(pool) < RESERVOIR:
            pool.append(frame)
        else:  # reservoir sampling keeps a uniform sample of a long stream of frames
            j = int(rng.integers(0, i + 1))
            if j < RESERVOIR:
                pool[j] = frame
    if not pool:
        raise StageError("tokenize", "no_frames", "no video frames to train the frame codec on")
    data = torch.from_numpy(np.stack(pool)).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, S, S]

    model = seeded_codec(cfg)[0].to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    window: list[float] = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, data.shape[0], (min(batch_size, data.shape[0]),), generator=gen)
        x = data[idx].to(dev).float() / 127.5 - 1
        loss = torch.nn.functional.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            mse = float(np.mean(window))
            window = []
            row = {"step": step, "mse": mse, "psnr_db": psnr(mse), "elapsed_s": time.perf_counter() - t0}
            history.append(row)
            if log is not None:
                log(f"step {step}/{steps}  mse {mse:.5f}  psnr {row['psnr_db']:.2f} dB")

    model.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": {"image_size": cfg.image_size, "downsample": cfg.downsample, "levels": list(cfg.levels), "hidden": cfg.hidden},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "steps": steps,
    }
    torch.save(blob, tmp)
    tmp.replace(out_path)
    with torch.inference_mode():  # PSNR of the saved model on (up to) 256 pooled frames, in eval mode
        x = data[: min(256, data.shape[0])].to(dev).float() / 127.5 - 1
        final_mse = float(torch.nn.functional.mse_loss(model(x), x))
    return {
        "checkpoint": str(out_path),
        "frames": int(data.shape[0]),
        "steps": steps,
        "history": history,
        "final_psnr_db": psnr(final_mse),
    }
