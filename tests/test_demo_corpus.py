"""A corpus built with configs/demo.yaml (dMel, pixel frames, EnCodec codes, frame-codec tokens, text):
plain webdataset reads it without microturn, `validate --deep` checks its dMel, `render` plays the
dMel, and the training loader refuses a corpus without the codes it reads.

One corpus is built per module (2 generated sessions of 6 s, 2 s windows; the real job, an embedded
Ray: about a minute on 2 cores, hence slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["chunk.window_chunks=10", "chunk.hop_chunks=10", "shard.target_bytes=1000", "job.num_cpus=2",
             "job.session_timeout_base_s=600"]


def _build(root: Path, overrides: list[str]) -> Path:
    from microturn.config import load_config
    from microturn.jobs.build import run_build
    from microturn.synth import synthesize_corpus

    manifest = synthesize_corpus(root / "media", sessions=2, seed=0, duration_s=6.0)
    cfg = load_config(REPO / "configs" / "demo.yaml", OVERRIDES + overrides)
    summary = run_build(str(manifest), str(root / "corpus"), cfg, progress=False)
    assert summary.samples == 6, summary
    return root / "corpus"


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory) -> Path:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _build(tmp_path_factory.mktemp("demo_corpus"), [])


def _members(corpus: Path) -> list[str]:
    return [m["suffix"] for m in json.loads((corpus / "dataset.json").read_text())["members"]]


def test_the_demo_writes_dmel_pixels_codes_frames_and_text(demo_corpus):
    assert {"dmel.npy", "pixels.npy", "codes.npy", "frames.npy", "text.npy"} <= set(_members(demo_corpus))


READ_WITHOUT_MICROTURN = """
import sys, numpy as np, webdataset as wds
urls, members = sys.argv[1:-1], sys.argv[-1].split(",")
n = 0
for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
    assert set(members) <= set(sample), (members, sorted(sample))
    dmel, meta = sample["dmel.npy"], sample["meta.json"]
    S, F = len(meta["speakers"]), meta["num_frames"]
    assert dmel.dtype == np.uint8 and dmel.shape == (S, 80, F), dmel.shape
    assert dmel[:, :, : meta["valid_frames"]].max() > 0  # speech, not the silence bin throughout
    if "pixels.npy" in members:
        pixels, chunks = sample["pixels.npy"], sample["frame_chunks.npy"]
        assert pixels.dtype == np.uint8 and pixels.shape == (len(chunks), 80, 80, 3), pixels.shape
        assert pixels.std() > 1  # real frames, not a flat fill
    n += 1
assert "microturn" not in sys.modules, "decoding imported microturn"
print(n)
"""


def test_plain_webdataset_decodes_dmel_and_pixels_without_microturn(demo_corpus):
    urls = sorted(str(p) for p in (demo_corpus / "shards").glob("*.tar"))
    members = [m for m in _members(demo_corpus) if m in ("dmel.npy", "pixels.npy", "frame_chunks.npy", "meta.json")]
    out = subprocess.run([sys.executable, "-c", READ_WITHOUT_MICROTURN, *urls, ",".join(members)],
                         capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 6


def _edit_first_sample(corpus: Path, member: str, edit) -> None:
    """Rewrite ``member`` of the first sample of the first shard with the build's tar writer, and the
    shard's size and checksum in dataset.json: only a deep look at the values can see the change."""
    from microturn.format import TarStream, decode_npy, encode_npy, iter_samples

    doc = json.loads((corpus / "dataset.json").read_text())
    entry = doc["shards"][0]
    path = corpus / "shards" / entry["name"]
    samples = [(k, dict(m)) for k, m in iter_samples(str(path))]
    samples[0][1][member] = encode_npy(edit(decode_npy(samples[0][1][member]).copy()))
    with open(path, "wb") as fh:
        stream = TarStream(fh)
        for key, members in samples:
            stream.add_sample(key, members)
        stream.finish()
    entry.update(bytes=stream.bytes, sha256=stream.sha256.hexdigest())
    (corpus / "dataset.json").write_text(json.dumps(doc))


@pytest.fixture
def corpus_copy(demo_corpus, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(demo_corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("_work")))


def _set_bin(bins: np.ndarray) -> np.ndarray:
    bins[1, 7, 3] = 16  # the 16 bins are 0..15 (tokenizers.dmel.vocab_size)
    return bins


@pytest.mark.parametrize("edit, code, words", [
    (_set_bin, "token_range", "dmel.npy holds tokens in [0, 16] (first bad at [1, 7, 3]), dmel vocab_size is 16"),
    (lambda bins: bins[:, :40], "bad_shape", "M=80"),
])
def test_validate_deep_checks_dmel_bins_and_channels(corpus_copy, edit, code, words):
    from microturn.validate import validate_dataset

    assert validate_dataset(str(corpus_copy), deep=True).ok
    _edit_first_sample(corpus_copy, "dmel.npy", edit)
    assert validate_dataset(str(corpus_copy)).ok  # sizes and checksums agree
    report = validate_dataset(str(corpus_copy), deep=True)
    assert report.codes() == {code}, report.problems
    assert words in report.problems[0].message


def test_render_plays_the_dmel_and_says_so(demo_corpus, tmp_path):
    from typer.testing import CliRunner

    from microturn.cli import app

    key = "synth-0-000-000001"
    result = CliRunner().invoke(app, ["render", str(demo_corpus), key, "--out", str(tmp_path), "--threads", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "audio decoded from dmel (Griffin-Lim)" in result.stdout
    assert "video frames: pixels (stored frames)" in result.stdout
    with wave.open(str(tmp_path / f"{key}.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 24000, 10 * 15 * 320)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert (np.abs(pcm).max(axis=0) > 300).all()  # each speaker's stream is heard


def test_show_and_inspect_name_the_representations(demo_corpus):
    from typer.testing import CliRunner

    from microturn.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["show", str(demo_corpus), "synth-0-000-000001"], catch_exceptions=False)
    assert shown.exit_code == 0 and "representations" in shown.stdout
    assert "dmel (dmel.npy)" in shown.stdout and "audio (codes.npy)" in shown.stdout
    report = runner.invoke(app, ["inspect", str(demo_corpus), "--json"], catch_exceptions=False)
    reps = json.loads(report.stdout)["dataset"]["representations"]
    assert reps["dmel"] == ["dmel.npy"] and reps["audio"] == ["codes.npy"] and reps["text"] == ["text.npy"]


def test_the_loader_refuses_a_corpus_without_the_codes_it_reads(tmp_path_factory):
    """A real corpus of dMel and text only: training (which reads codes, text and frame tokens) is
    refused when the corpus is opened, naming what is missing and what the corpus holds."""
    from microturn.errors import TrainDataError
    from microturn.train.corpus import read_corpus
    from microturn.train.config import ModelConfig
    from microturn.train.examples import example_members

    corpus = _build(tmp_path_factory.mktemp("dmel_text"), ["tokenizers.representations=[dmel, text]"])
    assert "codes.npy" not in _members(corpus)
    with pytest.raises(TrainDataError) as err:
        read_corpus(str(corpus), example_members(ModelConfig()))
    assert err.value.code == "missing_member"
    assert "codes.npy, frames.npy" in err.value.message and "dmel.npy" in err.value.message
