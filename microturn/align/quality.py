"""Quality measures per session and stream, the duplicate-channel check, and the filters.

Everything returned is plain JSON (floats, ints, None) because it travels into meta.json and stats.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from microturn.align.vad import frame_energy_db
from microturn.clock import CODEC_RATE, GRID
from microturn.media import spill
from microturn.records import StageError

CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped (float audio, full scale 1.0)


def channel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """|Pearson correlation| of two waveforms (0 when either is silent)."""
    n = min(a.shape[0], b.shape[0])
    x = a[:n].astype(np.float64) - _mean(a[:n])
    y = b[:n].astype(np.float64) - _mean(b[:n])
    den = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return abs(float(np.dot(x, y)) / den) if den > 0 else 0.0


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-12)) if x.size else -120.0


# The functions above make float64 copies of whole waves (0.7 GB per stream-hour each). The ones below
# sum block by block instead and give what they would give: sums of the same n terms in two orders
# differ by at most 2 n u (sum of |terms|) (u = 2^-53), so the blockwise value brackets theirs within a
# margin of a few n u; when the bracket decides the answer (a threshold, a rounded figure) it is
# theirs, else they run (rarely: a margin of 1e-7 against a rounding step of 1e-4).
_BLOCK = 1 << 20  # samples per block: 8 MB of float64


def _margin(n: int, terms: float) -> float:
    return terms * n * 2.0**-53 + 1e-12


def _blocks(x: np.ndarray, n: Optional[int] = None) -> Iterator[np.ndarray]:
    """``x[:n]`` a block at a time; a spilled wave's pages go back once each block is used."""
    n = x.shape[0] if n is None else n
    for start in range(0, n, _BLOCK):
        block = x[start : min(start + _BLOCK, n)]
        yield block
        spill.release(block)


def _mean(x: np.ndarray) -> float:
    """Mean in float64, block by block (the same value whatever the wave's storage)."""
    return sum(float(np.sum(b, dtype=np.float64)) for b in _blocks(x)) / x.shape[0] if x.size else 0.0


def similarity_bounds(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """[lo, hi] holding ``channel_similarity(a, b)``, without whole-wave copies."""
    n = min(a.shape[0], b.shape[0])
    ma, mb = _mean(a[:n]), _mean(b[:n])
    sxx = syy = sxy = 0.0
    for xa, yb in zip(_blocks(a, n), _blocks(b, n)):
        x, y = xa.astype(np.float64), yb.astype(np.float64)
        x -= ma  # the same float64 values as channel_similarity's
        y -= mb
        sxx, syy, sxy = sxx + float(np.dot(x, x)), syy + float(np.dot(y, y)), sxy + float(np.dot(x, y))
    den = float(np.sqrt(sxx * syy))
    if den == 0.0:  # a constant wave: channel_similarity's zero too, without its whole-wave copies
        return 0.0, 0.0
    if den < 1e-100:  # (near) silence: channel_similarity's own zero test decides
        sim = channel_similarity(a, b)
        return sim, sim
    sim, margin = abs(sxy) / den, _margin(n, 8.0)  # |sum xy| <= den: 2 n u each for xy, xx, yy
    return max(sim - margin, 0.0), sim + margin


def rounded_similarity(pairs: list[tuple[np.ndarray, np.ndarray]], digits: int) -> float:
    """``round(max(channel_similarity(a, b) for a, b in pairs), digits)``, without whole-wave copies."""
    bounds = [similarity_bounds(a, b) for a, b in pairs]
    lo, hi = max(b[0] for b in bounds), max(b[1] for b in bounds)
    if round(lo, digits) == round(hi, digits):
        return round(lo, digits)
    return round(max(channel_similarity(a, b) for a, b in pairs), digits)


def rounded_rms_db(x: np.ndarray, digits: int) -> float:
    """``round(rms_db(x), digits)``, without a whole-wave float64 copy."""
    if not x.size:
        return round(rms_db(x), digits)
    total = sum(float(np.sum(np.square(b, dtype=np.float64))) for b in _blocks(x))
    power, slack = total / x.shape[0], _margin(x.shape[0], 4.0 * total / x.shape[0])
    lo = float(10 * np.log10(max(power - slack, 0.0) + 1e-12))
    hi = float(10 * np.log10(power + slack + 1e-12))
    if round(lo, digits) == round(hi, digits):
        return round(lo, digits)
    return round(rms_db(x), digits)


def clipped_ratio(x: np.ndarray) -> float:
    """``np.mean(np.abs(x) >= CLIP_LEVEL)`` (a count over the length: exact), block by block."""
    count = sum(int(np.count_nonzero(np.abs(b) >= CLIP_LEVEL)) for b in _blocks(x))
    return float(np.float64(count) / np.float64(x.shape[0]))


def are_duplicates(a: np.ndarray, b: np.ndarray, threshold: float, level_db: float = 6.0) -> tuple[bool, float]:
    """Two channels carry the same signal: highly correlated *and* at similar levels (a leakage
    channel correlates with the talker's channel when only one person speaks, but sits far lower).
    The similarity returned with False may be the blockwise estimate (within 1e-7 of the exact one)."""
    lo, hi = similarity_bounds(a, b)
    if hi < threshold:  # clearly not the same signal: no whole-wave copies
        return False, (lo + hi) / 2
    sim = channel_similarity(a, b)
    return sim >= threshold and abs(rms_db(a) - rms_db(b)) <= level_db, sim


def stream_quality(wave_24k: np.ndarray, activity: np.ndarray, valid_frames: int) -> dict[str, Optional[float]]:
    act = activity[:valid_frames].astype(bool)
    db = frame_energy_db(wave_24k, activity.shape[0])[:valid_frames]
    power = 10 ** (db / 10)
    snr: Optional[float] = None
    if act.any() and (~act).any():
        snr = float(10 * np.log10(power[act].mean() / max(power[~act].mean(), 1e-12)))
    return {
        "speech_ratio": float(act.mean()) if act.size else 0.0,
        "clipping_ratio": clipped_ratio(wave_24k) if wave_24k.size else 0.0,
        "snr_db": None if snr is None else round(snr, 2),
        "level_db": rounded_rms_db(wave_24k, 2),
    }


def activity_correlation(activity: np.ndarray) -> Optional[float]:
    """Highest Pearson correlation of two streams' activity (None with fewer than two streams).

    Two people in conversation mostly take turns: their activity is uncorrelated or negatively
    correlated. A high positive value means one voice is labelled on several microphones (bleed
    not attributed), so it flags a session for a data engineer alongside ``overlap_ratio``."""
    rows = activity.astype(np.float64)
    best: Optional[float] = None
    for i in range(rows.shape[0]):
        for j in range(i + 1, rows.shape[0]):
            a, b = rows[i] - rows[i].mean(), rows[j] - rows[j].mean()
            den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
            r = float(np.dot(a, b)) / den if den > 0 else 0.0
            best = r if best is None else max(best, r)
    return None if best is None else round(best, 4)


def session_quality(
    waves_24k: list[np.ndarray], activity: np.ndarray, num_samples: int, speakers: list[str]
) -> dict[str, Any]:
    valid = GRID.valid_frames(num_samples)
    per_stream = [stream_quality(w, a, valid) for w, a in zip(waves_24k, activity)]
    any_speech = activity[:, :valid].any(axis=0) if activity.size else np.zeros(0, dtype=bool)
    overlap = (activity[:, :valid].sum(axis=0) >= 2) if activity.size else np.zeros(0, dtype=bool)
    pairs = [(waves_24k[i], waves_24k[j]) for i in range(len(waves_24k)) for j in range(i + 1, len(waves_24k))]
    snrs = [q["snr_db"] for q in per_stream if q["snr_db"] is not None]
    return {
        "duration_s": round(num_samples / CODEC_RATE, 3),
        "speech_ratio": float(any_speech.mean()) if any_speech.size else 0.0,
        "overlap_ratio": float(overlap.mean()) if overlap.size else 0.0,
        "clipping_ratio": max((q["clipping_ratio"] or 0.0) for q in per_stream) if per_stream else 0.0,
        "snr_db": min(snrs) if snrs else None,
        "channel_similarity": rounded_similarity(pairs, 4) if pairs else None,
        "activity_correlation": activity_correlation(activity[:, :valid]) if activity.size else None,
        "streams": {spk: q for spk, q in zip(speakers, per_stream)},
    }


def apply_filters(quality: dict[str, Any], filters: Any, session_id: str) -> None:
    """Raise ``StageError("align", "filtered:<rule>")`` for the first filter the session fails."""
    if quality["speech_ratio"] < filters.min_speech_ratio:
        raise StageError(
            "align",
            "filtered:speech_ratio",
            f"speech ratio {quality['speech_ratio']:.3f} < {filters.min_speech_ratio}",
            source=session_id,
        )
    if quality["clipping_ratio"] > filters.max_clipping_ratio:
        raise StageError(
            "align",
            "filtered:clipping_ratio",
            f"clipping ratio {quality['clipping_ratio']:.4f} > {filters.max_clipping_ratio}",
            source=session_id,
        )
    if filters.min_snr_db is not None and quality["snr_db"] is not None and quality["snr_db"] < filters.min_snr_db:
        raise StageError(
            "align", "filtered:snr", f"SNR {quality['snr_db']:.1f} dB < {filters.min_snr_db} dB", source=session_id
        )
