"""`microturn render`: one sample as a picture and as sound.

The PNG (matplotlib, Agg) has three panels on one time axis (session seconds): each speaker's speech
activity with their words and the turn-taking events, thumbnails of the video frames at their chunk times
(the stored ``pixels.npy`` frames when the sample has them, else the frame codec's decoding of its
tokens), and a heat map of the audio (dMel bins, stream x mel channel rows, when the sample has them,
else the codes, stream x codebook rows). The WAV is the audio decoded from dMel (Griffin-Lim: real,
recognisable speech, no weights) when the sample has it, else from the codes by the audio codec; one
speaker per channel, cut to the valid frames. Both say what they were decoded from.

Decoding uses the tokenizers of the corpus' own config (config.yaml beside dataset.json); when their
fingerprints differ from the sample's, the result is still written and a warning says why it may be noise.
"""

from __future__ import annotations

import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from microturn.clock import CODEC_RATE, GRID
from microturn.report import UserError
from microturn.report.sample import SampleView

log = logging.getLogger(__name__)

FIGSIZE_IN = (12.0, 8.0)
DPI = 100  # 1200 x 800 pixels
MAX_THUMBNAILS = 12
EVENT_STYLE = {  # colour, alpha, where it is drawn
    "overlap": ("tab:red", 0.25),
    "gap": ("0.6", 0.25),
    "pause": ("tab:olive", 0.18),
    "backchannel": ("tab:purple", 0.9),
    "interruption": ("tab:orange", 0.9),
}
STREAM_COLOURS = ("tab:blue", "tab:green", "tab:brown", "tab:cyan")


@dataclass(frozen=True)
class RenderResult:
    png: Path
    wav: Path
    width_px: int
    height_px: int
    wav_seconds: float
    wav_channels: int
    audio_from: str  # what the WAV was decoded from, e.g. "dmel (Griffin-Lim)"
    frames_from: str  # where the thumbnails come from, e.g. "pixels (stored frames)"
    warnings: list[str] = field(default_factory=list)


AUDIO_SOURCES = {"dmel": "dmel (Griffin-Lim)", "audio": "codes (audio codec)"}
FRAME_SOURCES = {"pixels": "pixels (stored frames)", "frames": "frame-codec tokens (decoded)", "": "no video"}


def fingerprint_warnings(sample_fps: dict, codec_fps: dict,
                         names: tuple[str, ...] = ("audio", "frames")) -> list[str]:
    """A warning for each representation decoded (``names``) whose tokenizer differs from the sample's."""
    out = []
    for name in names:
        want, have = sample_fps.get(name), codec_fps.get(name)
        if want is not None and want != have:
            out.append(f"{name} codec fingerprint {have} differs from the sample's {want}: the decoded {name} may be noise")
    return out


def audio_source(view: SampleView) -> str:
    """The representation the WAV is decoded from: dMel when the sample has it, else the codes."""
    if view.dmel is not None:
        return "dmel"
    if view.codes is not None:
        return "audio"
    raise UserError(f"sample {view.key} holds no audio representation (dmel.npy or codes.npy)")


def frame_source(view: SampleView) -> str:
    """Where the thumbnails come from: the stored pixels, else the frame codec's tokens ("" for none)."""
    return "pixels" if view.pixels is not None else "frames" if view.frames is not None else ""


def decode_audio(view: SampleView, toks, source: str) -> np.ndarray:
    """float32 [S, valid_frames * 320] at 24 kHz, decoded from the sample's ``source`` member."""
    tokens = view.dmel if source == "dmel" else view.codes
    wave_SN = np.asarray(toks.get_or_build(source).decode(tokens), dtype=np.float32)
    return wave_SN[:, : GRID.frame_to_sample(view.valid_frames)]


def decode_frames(view: SampleView, toks, source: str) -> np.ndarray:
    """uint8 [N, height, width, 3]: the stored pixels, or the frame codec's decoding of the tokens."""
    if source == "pixels":
        return np.asarray(view.pixels)
    if source == "frames" and view.frames.shape[0]:
        return toks.frames.decode(view.frames)
    return np.zeros((0, 1, 1, 3), np.uint8)


def write_wav(path: Path, wave_SN: np.ndarray, rate: int = CODEC_RATE) -> None:
    """16-bit PCM, one stream per channel (interleaved), with the stdlib ``wave`` module."""
    pcm = (np.clip(wave_SN, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(int(wave_SN.shape[0]))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm.T).tobytes())


def render_sample(view: SampleView, toks, out_dir: Path, *, torch_threads: int = 0) -> RenderResult:
    """Write ``<key>.png`` and ``<key>.wav`` under ``out_dir``."""
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a_src, f_src = audio_source(view), frame_source(view)
    decoded_names = (a_src, *(("frames",) if f_src == "frames" else ()))
    warnings = fingerprint_warnings(view.meta.get("fingerprints") or {}, toks.fingerprints(), decoded_names)
    images = decode_frames(view, toks, f_src)
    audio = decode_audio(view, toks, a_src)
    png = out_dir / f"{view.key}.png"
    wav = out_dir / f"{view.key}.wav"
    w, h = draw_png(view, images, png, warnings, (AUDIO_SOURCES[a_src], FRAME_SOURCES[f_src]))
    write_wav(wav, audio)
    return RenderResult(png, wav, w, h, audio.shape[1] / CODEC_RATE, int(audio.shape[0]), AUDIO_SOURCES[a_src],
                        FRAME_SOURCES[f_src], warnings)


def draw_png(view: SampleView, images: np.ndarray, path: Path, warnings: list[str],
             sources: tuple[str, str] = ("", "")) -> tuple[int, int]:
    """``sources``: (what the audio, what the thumbnails were decoded from), written on the picture."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=FIGSIZE_IN, dpi=DPI)
    gs = fig.add_gridspec(3, 1, height_ratios=[2.2, 1.2, 2.4], hspace=0.35, left=0.08, right=0.93, top=0.87, bottom=0.07)
    ax_act = fig.add_subplot(gs[0])
    ax_img = fig.add_subplot(gs[1], sharex=ax_act)
    ax_codes = fig.add_subplot(gs[2], sharex=ax_act)
    t0 = view.start_s
    t_end = t0 + float(GRID.frames_to_seconds(view.num_frames))
    t_valid = t0 + view.duration_s

    _draw_activity(ax_act, view, t0)
    _draw_thumbnails(ax_img, view, images, t0, sources[1])
    if view.dmel is not None:
        _draw_dmel(ax_codes, view, t0)
    else:
        _draw_codes(ax_codes, view, t0)
    for ax in (ax_act, ax_img, ax_codes):
        ax.set_xlim(t0, t_end)
        if t_valid < t_end:
            ax.axvspan(t_valid, t_end, color="0.85", alpha=0.6, zorder=0, hatch="//", lw=0)
    ax_codes.set_xlabel("session time (s)")
    fps = view.meta.get("fingerprints") or {}
    title = (f"{view.key}  —  session {view.session_id}, window {view.window_index}, "
             f"{view.duration_s:.1f} s, speakers {', '.join(view.speakers)}")
    fig.suptitle(title, fontsize=12, x=0.08, y=0.975, ha="left")
    fig.text(0.08, 0.93, "codecs: " + "  |  ".join(f"{k} {v}" for k, v in sorted(fps.items())), fontsize=7,
             color="0.35")
    if sources[0]:
        fig.text(0.93, 0.975, f"audio decoded from {sources[0]}", fontsize=9, ha="right", va="top")
    if warnings:
        fig.text(0.98, 0.005, "; ".join(warnings)[:200], fontsize=6, color="tab:red", ha="right")
    fig.savefig(path, dpi=DPI)
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    plt.close(fig)
    return width, height


def _frame_times(view: SampleView, t0: float) -> np.ndarray:
    return t0 + np.arange(view.activity.shape[1] + 1) / float(GRID.frame_rate)


def _draw_activity(ax, view: SampleView, t0: float) -> None:
    t = _frame_times(view, t0)
    S = view.activity.shape[0]
    for s in range(S):
        y = S - 1 - s  # first speaker on top
        row = np.append(view.activity[s], 0).astype(float)
        ax.fill_between(t, y + 0.05, y + 0.05 + 0.5 * row, step="post", color=STREAM_COLOURS[s % 4], alpha=0.8,
                        lw=0)
        level = 0
        for w in sorted((w for w in view.words if int(w.get("stream", -1)) == s), key=lambda w: int(w["start_frame"])):
            x = t0 + float(GRID.frames_to_seconds(int(w["start_frame"])))
            # words are data (a model's, any bytes): drawn literally, never as mathtext, unprintables dropped
            label = "".join(ch for ch in str(w.get("text", "")) if ch.isprintable())
            ax.text(x, y + 0.62 + 0.17 * level, label, fontsize=7, va="bottom", clip_on=True, parse_math=False)
            level = (level + 1) % 2  # alternate heights so neighbours do not overprint
    labelled: set[str] = set()
    for e in view.events:
        kind = str(e.get("kind"))
        if kind not in EVENT_STYLE:
            continue
        colour, alpha = EVENT_STYLE[kind]
        a = t0 + float(GRID.frames_to_seconds(int(e["start_frame"])))
        b = t0 + float(GRID.frames_to_seconds(int(e["end_frame"])))
        label = kind if kind not in labelled else None
        labelled.add(kind)
        if kind in ("backchannel", "interruption"):
            s = e.get("stream")
            y = S - 1 - int(s) if s is not None else S - 0.5
            ax.plot([a], [y + 0.02], marker="^" if kind == "backchannel" else "v", color=colour, ms=8, ls="",
                    label=label, clip_on=False)
        else:
            ax.axvspan(a, b, color=colour, alpha=alpha, lw=0, label=label)
    ax.set_ylim(-0.1, S + 0.1)
    ax.set_yticks([S - 1 - s + 0.3 for s in range(S)], view.speakers)
    ax.set_title("speech activity, words and turn-taking events", fontsize=9, loc="left")
    if labelled:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=len(labelled), frameon=False)


def _draw_thumbnails(ax, view: SampleView, images: np.ndarray, t0: float, source: str = "") -> None:
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.set_title(f"video frames at their chunk times: {source or 'none'}", fontsize=9, loc="left")
    n = images.shape[0]
    if n == 0:
        ax.text(0.5, 0.5, "no video frames in this window", transform=ax.transAxes, ha="center", va="center")
        return
    pick = np.unique(np.linspace(0, n - 1, min(n, MAX_THUMBNAILS)).round().astype(int))
    span = float(GRID.frames_to_seconds(view.num_frames)) / max(len(pick), 1)
    for i in pick:
        t = t0 + float(GRID.chunk_seconds) * int(view.frame_chunks[i])
        ax.imshow(images[i], extent=(t, t + 0.92 * span, 0.02, 0.98), aspect="auto", interpolation="nearest",
                  zorder=2)
        ax.axvline(t, color="k", lw=0.6, zorder=3)


def _draw_codes(ax, view: SampleView, t0: float) -> None:
    _draw_heat(ax, view.codes, view.speakers, t0, "codebooks", "audio codes (rows: stream x codebook)", "viridis")


def _draw_dmel(ax, view: SampleView, t0: float) -> None:
    # low channels at the bottom of each stream's band, like a spectrogram
    _draw_heat(ax, view.dmel[:, ::-1, :], view.speakers, t0, "mel",
               "dMel bins (rows: stream x mel channel, low frequencies at the bottom)", "magma")


def _draw_heat(ax, values_SRF: np.ndarray, speakers: list[str], t0: float, unit: str, title: str, cmap: str) -> None:
    """A [streams, rows, frames] array as one heat map on the session time axis, streams stacked."""
    S, R, F = values_SRF.shape
    heat = values_SRF.reshape(S * R, F).astype(np.float32)
    t1 = t0 + float(GRID.frames_to_seconds(F))
    im = ax.imshow(heat, aspect="auto", interpolation="nearest", cmap=cmap, extent=(t0, t1, S * R, 0))
    for s in range(1, S):
        ax.axhline(s * R, color="w", lw=1.5)
    ax.set_yticks([s * R + R / 2 for s in range(S)], [f"{spk}\n{R} {unit}" for spk in speakers], fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    pos = ax.get_position()  # a colorbar beside the panel, so the three panels keep one time axis
    ax.figure.colorbar(im, cax=ax.figure.add_axes((0.94, pos.y0, 0.01, pos.height)))


def load_codecs(dataset_uri: Optional[str]):
    """The tokenizers of the corpus' config (defaults when the shard has no corpus beside it)."""
    from microturn.report.corpus import load_build_config
    from microturn.tokenizers import load_tokenizers

    cfg, found = load_build_config(dataset_uri)
    if not found:
        log.warning("no config.yaml next to the shards: decoding with the default tokenizer config")
    return load_tokenizers(cfg.tokenizers)
