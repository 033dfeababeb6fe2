"""Streaming inference: the interaction model run 200 ms at a time with an append-only KV cache.

    model, cfg = load_run("runs/cpu")
    session = RealtimeSession(model, temperature=1.0, seed=0)
    reply = session.turn(UserChunk(audio_XJ=dmel_MJ, text_J=text_J))   # the model's 15 frames of this chunk

Each ``turn`` is one chunk of the training layout (microturn.train.model): the model's 15 frames of
chunk c are generated one by one, each fed back as the next position, from what the cache holds (BOS
and chunks 0..c-1); then the user's chunk c (its video positions and 15 frames) is appended. So a
reply depends on the user only up to the previous chunk, exactly as in training: the same positions,
the same RoPE offsets, the same logits as the full-sequence forward (tested).

Audio is codes [K, J] (the codes variant; its depth head is sampled step by step: text, then codebook
0..K-1) or dMel bins [M, J] (all channels sampled in parallel); J = 15 frames per chunk. Absent input
uses the training absent values: bin B (dMel), code V_audio, text V_text (e.g. the user's text when
the run trained without it, ``data.user_text: false``).

Speed: a turn is 16 small trunk calls (15 single positions, then the user's block), too small to split
across threads; run it with ``torch.set_num_threads(1)`` (measured on 2 shared CPU cores,
configs/train_cpu.yaml's model: ~35 ms per turn, p99 ~50 ms; with 2 threads, stalls of seconds). On
CUDA each model frame's depth sampling and trunk step are replayed from CUDA graphs (``DepthSampler``,
``TrunkStep``): train_small in bf16 on an H200, p50 88 ms, p99 90 ms per turn (353 ms eager).

``max_context_chunks`` bounds memory and time per turn: beyond it the oldest whole chunks are evicted
(BOS stays). RoPE makes scores depend on position differences, so kept keys stay valid, but the model
never saw a sequence whose start was cut away, nor one longer than its training window
(``data.window_chunks``): past that window streaming is an approximation of what it learned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from microturn.clock import FRAMES_PER_CHUNK
from microturn.errors import TrainDataError
from microturn.train.checkpoint import latest_checkpoint, load_checkpoint
from microturn.train.config import TrainConfig, load_train_config
from microturn.train.model import InteractionModel, KVCache

J = FRAMES_PER_CHUNK
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserChunk:
    """What the user sent in one 200 ms chunk. ``video``: the chunk's frame, pixels uint8 [Y, X, 3]
    (``model.video: pixels``) or frame tokens [P] (``tokens``); None = no frame in this chunk."""

    audio_XJ: np.ndarray  # codes [K, J] or dMel bins [M, J]
    text_J: np.ndarray
    video: Optional[np.ndarray] = None


@dataclass(frozen=True)
class ModelChunk:
    """The model's 15 frames of one chunk and the logits they were drawn from (float32, CPU):
    text [J, V_text], audio [J, K, V_audio] (codes) or [J, M, B] (dMel)."""

    audio_XJ: np.ndarray  # codes [K, J] int64 or dMel bins [M, J] uint8
    text_J: np.ndarray  # int64
    text_logits_JV: Optional[torch.Tensor] = None
    audio_logits_JXV: Optional[torch.Tensor] = None


class RealtimeSession:
    """One conversation's state: the KV cache of every layer, the absolute position of the next input,
    the hidden state that predicts the model's next frame, and ``step_ms`` (wall time of each turn)."""

    def __init__(self, model: InteractionModel, *, temperature: float = 1.0, seed: int = 0,
                 max_context_chunks: Optional[int] = None, cuda_graphs: bool = True):  # fmt: skip
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_context_chunks is not None and max_context_chunks < 1:
            raise ValueError(f"max_context_chunks must be >= 1, got {max_context_chunks}")
        self.model = model.eval()
        self.cfg = model.cfg
        self.temperature = temperature
        self.max_context_chunks = max_context_chunks
        self.device = model.bos_D.device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.cache = KVCache(len(model.blocks))
        self.position = 0  # absolute position of the next input (RoPE), evictions included
        self.chunks_cached = 0  # whole chunk blocks (model frames, video, user frames) in the cache
        self.block = model.layout(1).block
        self.step_ms: list[float] = []
        self._depth = DepthSampler(model.depth, cuda_graphs) if self.cfg.audio == "codes" else None
        self._trunk_step = TrunkStep(model, self.cache, self.block, cuda_graphs)
        with torch.inference_mode():
            self._h_D = self._append(model.bos_D[None, None])

    def turn(self, user: UserChunk, force: Optional[ModelChunk] = None) -> ModelChunk:
        """The model's frames of this chunk (sampled, or ``force``'s teacher-forced), then the user's
        chunk appended to the context."""
        t0 = time.perf_counter()
        _check_chunk(user, "user")
        if force is not None:
            _check_chunk(force, "force")
        with torch.inference_mode():
            audio, text, text_logits, audio_logits = [], [], [], []
            for j in range(J):
                forced = None if force is None else (force.audio_XJ[:, j], force.text_J[j])
                a_X, t, tl_V, al_XV = self._frame(self._h_D, forced)
                audio.append(a_X)
                text.append(t)
                text_logits.append(tl_V)
                audio_logits.append(al_XV)
                x_11D = self.model.embed_frames(a_X[None, :, None], t.view(1, 1), "model")
                self._h_D = self._append(x_11D)
            self._h_D = self._append(self._user_block(user))
            self.chunks_cached += 1
            self._evict()
        audio_XJ = torch.stack(audio, dim=1).cpu().numpy()
        out = ModelChunk(
            audio_XJ=audio_XJ.astype(np.uint8) if self.cfg.audio == "dmel" else audio_XJ,
            text_J=torch.stack(text).cpu().numpy(),
            text_logits_JV=torch.stack(text_logits).float().cpu(),
            audio_logits_JXV=torch.stack(audio_logits).float().cpu(),
        )
        self.step_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    # -- one model frame

    def _frame(self, h_D: torch.Tensor, forced: Optional[tuple[np.ndarray, int]]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """(audio [X], text [], text logits [V], audio logits [X, V]) of the frame that ``h_D`` predicts."""
        if forced is not None:
            audio_X = torch.as_tensor(np.asarray(forced[0]), device=self.device).long()
            text = torch.as_tensor(int(forced[1]), device=self.device)
        if self.cfg.audio == "dmel":
            tl_1V, dl_1MB = self.model.dmel_logits(h_D[None])
            if forced is None:
                text, audio_X = self._sample(tl_1V[0]), self._sample(dl_1MB[0])
            return audio_X, text, tl_1V[0], dl_1MB[0]
        if forced is not None:
            tl_1V, al_1KV = self.model.depth(h_D[None], text.view(1), audio_X[None])
            return audio_X, text, tl_1V[0], al_1KV[0]
        return self._sample_depth(h_D)

    def _sample_depth(self, h_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The depth head step by step (``DepthHead.generate``): text, then codebook 0..K-1."""
        assert self._depth is not None  # the codes variant has a depth head
        cfg = self.cfg
        noise = self._noise((1, cfg.codebooks + 1, max(cfg.text_vocab, cfg.audio_vocab)))
        text_1, codes_1K, text_logits_1V, audio_logits_1KV = self._depth(h_D[None], noise)
        return codes_1K[0], text_1[0], text_logits_1V[0], audio_logits_1KV[0]

    def _sample(self, logits_XV: torch.Tensor) -> torch.Tensor:
        """One draw per row of the last axis: greedy at temperature 0, else softmax(logits / T)."""
        noise = self._noise(logits_XV.shape)
        return (logits_XV.float() if noise is None else logits_XV.float() + noise).argmax(dim=-1)

    def _noise(self, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        """Gumbel noise times the temperature (None when greedy): argmax(logits + noise) draws from
        softmax(logits / T), and the noise can be drawn before the logits exist (the depth head's graph)."""
        if self.temperature == 0:
            return None
        u = torch.rand(shape, generator=self.generator, device=self.device).clamp_(1e-20, 1.0 - 1e-7)
        return -torch.log(-torch.log(u)) * self.temperature

    # -- the user's chunk, the cache

    def _user_block(self, user: UserChunk) -> torch.Tensor:
        """[1, V + J, D]: the chunk's video positions, then the user's 15 frames."""
        m, cfg = self.model, self.cfg
        audio = torch.as_tensor(np.asarray(user.audio_XJ), device=self.device)
        text = torch.as_tensor(np.asarray(user.text_J), device=self.device)
        user_1JD = m.embed_frames(audio[None], text[None], "user")
        if cfg.video == "none":
            if user.video is not None:
                raise ValueError("this model has no video input (model.video: none)")
            return user_1JD
        return torch.cat([m.embed_video(self._video_batch(user.video))[:, 0], user_1JD], dim=1)

    def _video_batch(self, video: Optional[np.ndarray]) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.device
        if cfg.video == "tokens":
            absent_P = np.full(cfg.frame_tokens or 0, cfg.frame_vocab)
            frame_P = absent_P if video is None else np.asarray(video).reshape(-1)
            return {"frames": torch.as_tensor(frame_P, device=dev).long().view(1, 1, -1)}
        size = cfg.pixel_size or 0
        pixels = np.zeros((size, size, 3), np.uint8) if video is None else np.asarray(video, dtype=np.uint8)
        if pixels.shape != (size, size, 3):
            raise ValueError(f"pixels must be uint8 [{size}, {size}, 3], got {pixels.shape}")
        return {"pixels": torch.as_tensor(pixels, device=dev).view(1, 1, size, size, 3),
                "has_frame": torch.tensor([[video is not None]], device=dev)}  # fmt: skip

    def _append(self, x_1LD: torch.Tensor) -> torch.Tensor:
        """Run the L new positions through the trunk into the cache; the last one's hidden state [D].
        One position (a model frame) goes through the replayable ``TrunkStep``."""
        if x_1LD.shape[1] == 1 and self.cache.length > 0:
            h_D = self._trunk_step(x_1LD, self.position)
            self.position += 1
            return h_D
        h_1LD, _ = self.model.trunk(x_1LD, cache=self.cache, start=self.position)
        self.position += x_1LD.shape[1]
        return h_1LD[0, -1]

    def _evict(self) -> None:
        """Drop the oldest whole chunks beyond max_context_chunks (BOS, cache position 0, stays)."""
        if self.max_context_chunks is None or self.chunks_cached <= self.max_context_chunks:
            return
        drop = self.chunks_cached - self.max_context_chunks
        self.cache.evict(1, 1 + drop * self.block)
        self.chunks_cached -= drop


def capture_graph(fn: Callable[..., Any], *inputs: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, Any]:
    """``fn(*inputs)`` captured as a CUDA graph: (graph, its outputs). Replaying it reruns the same
    kernels on whatever ``inputs`` then hold and overwrites the same outputs. ``fn`` runs twice first
    on a side stream (kernel choice, allocator pools), as capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*inputs)
    return graph, out


class _Replayed:
    """A step run eagerly, or on CUDA captured once and replayed (``capture_graph``). Launched one by
    one from Python, a step's many small kernels cost far more than they compute: on an H200 an eager
    micro-turn of train_small took ~1.1 s of its 200 ms. If capture fails, it says so and stays eager."""

    what = "step"

    def __init__(self, device: torch.device, cuda_graphs: bool):
        self.use_graph = cuda_graphs and device.type == "cuda"
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.out: Any = None

    def replay(self, fn: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        """``fn(*inputs)``: eagerly, or by copying ``inputs`` into the captured graph's and replaying it."""
        if self.use_graph and self.graph is None:
            try:
                self.static = tuple(t.clone() for t in inputs)
                self.graph, self.out = capture_graph(fn, *self.static)
            except Exception as exc:  # an old driver, a kernel that cannot be captured: eager still works
                log.warning("CUDA graph capture of the %s failed (%s: %s); streaming runs it eagerly, which is "
                            "much slower per turn", self.what, type(exc).__name__, exc)
                self.use_graph, self.graph, self.static, self.out = False, None, (), None
        if self.graph is None:
            return fn(*inputs)
        for dst, src in zip(self.static, inputs):
            dst.copy_(src)
        self.graph.replay()
        return tuple(t.clone() for t in self.out) if isinstance(self.out, tuple) else self.out.clone()

    def invalidate(self) -> None:
        """Drop the captured graph (its memory too); the next call captures again."""
        self.graph, self.static, self.out = None, (), None


class DepthSampler(_Replayed):
    """``DepthHead.generate`` for one frame at a time (K + 1 depth steps of ~100 kernels each)."""

    what = "depth head"

    def __init__(self, depth: torch.nn.Module, cuda_graphs: bool = True):
        super().__init__(next(depth.parameters()).device, cuda_graphs)
        self.depth = depth

    def __call__(self, h_1D: torch.Tensor, noise_1SV: Optional[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        if noise_1SV is None:
            return self.replay(lambda h: self.depth.generate(h, None), h_1D)
        return self.replay(self.depth.generate, h_1D, noise_1SV)


class TrunkStep(_Replayed):
    """One position through the trunk into the cache (a model frame). It runs in the cache's slot mode:
    the position's index and its RoPE offset are device tensors, and attention reads the whole storage
    with the keys past the slot masked, so every step has the same shapes and can be replayed. The
    storage is reserved ahead (``headroom`` positions beyond the next one, at least doubling) and a
    reallocation, by this or by an eager append, makes the graph be captured again."""

    what = "trunk step"

    def __init__(self, model: InteractionModel, cache: KVCache, headroom: int, cuda_graphs: bool = True):
        device = model.bos_D.device
        super().__init__(device, cuda_graphs)
        self.model, self.cache, self.headroom = model, cache, headroom
        self.min_reserve = 4096 if self.use_graph else 64  # fewer captures on a GPU, where memory is ample
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.generation = -1

    def __call__(self, x_11D: torch.Tensor, position: int) -> torch.Tensor:
        """The new position's hidden state [D]; ``cache.length`` advances by one."""
        cache = self.cache
        need = cache.length + 1 + self.headroom
        if cache.capacity < need:  # a multiple of 64 keeps the attention mask aligned for fused kernels
            cache.reserve(-(-max(self.min_reserve, 2 * need) // 64) * 64)
        if cache.generation != self.generation:
            self.invalidate()
            self.generation = cache.generation
        self.slot.fill_(cache.length)
        self.position.fill_(position)
        h_D = self.replay(self._step, x_11D)
        cache.length += 1
        return h_D

    def _step(self, x_11D: torch.Tensor) -> torch.Tensor:
        self.cache.slot = self.slot
        try:
            h_11D, _ = self.model.trunk(x_11D, cache=self.cache, start=self.position)
        finally:
            self.cache.slot = None
        return h_11D[0, -1]


def _check_chunk(chunk: UserChunk | ModelChunk, what: str) -> None:
    audio, text = np.shape(chunk.audio_XJ), np.shape(chunk.text_J)
    if len(audio) != 2 or audio[1] != J or text != (J,):
        raise ValueError(f"a {what} chunk holds {J} frames: audio [X, {J}], text [{J}]; got {audio}, {text}")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[InteractionModel, TrainConfig]:
    """The model of a training run: RUN_DIR/config.yaml (the resolved config) and the weights of its
    newest checkpoint (``torch.load(weights_only=True)``), in eval mode on ``device``."""
    run = Path(run_dir)
    cfg = load_train_config(run / "config.yaml")
    path = latest_checkpoint(run)
    if path is None:
        raise TrainDataError("no_checkpoint", f"no checkpoint under {run / 'checkpoints'}", source=str(run))
    state = load_checkpoint(path, torch.device(device))
    model = InteractionModel(cfg.model).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), cfg
