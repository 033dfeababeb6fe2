"""`microturn render`: a PNG with real content and a stereo WAV decoded from the dMel (the demo config writes it)."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from microturn.storage import read_parquet

pytestmark = pytest.mark.slow  # needs the built corpus; decoding loads both codecs (~20 s on 2 cores)


@pytest.fixture(scope="module")
def rendered(corpus, tmp_path_factory):
    from typer.testing import CliRunner

    from microturn.cli import app
    rows = read_parquet(corpus / "index.parquet").to_pylist()
    row = max(rows, key=lambda r: (r["valid_frames"], r["word_count"], r["key"]))
    out = tmp_path_factory.mktemp("render")
    result = CliRunner().invoke(app, ["render", str(corpus), row["key"], "--out", str(out), "--threads", "2"],
                                catch_exceptions=False)
    return result, row, out


def test_render_exits_0_and_names_both_files(rendered):
    result, row, out = rendered
    assert result.exit_code == 0, result.stderr
    assert f"{row['key']}.png" in result.stdout and f"{row['key']}.wav" in result.stdout


def test_png_is_1200_by_800_and_not_blank(rendered):
    from PIL import Image

    _, row, out = rendered
    with Image.open(out / f"{row['key']}.png") as im:
        assert im.size == (1200, 800)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # a blank or single-colour picture has ~0
    colours = np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(colours) > 200  # heat map + activity bands + thumbnails
    # the code heat map fills the lower third with many colours, not a flat block
    heat = pixels[560:740, 150:1100]
    assert heat.std(axis=(0, 1)).mean() > 20


def test_wav_is_stereo_24k_and_as_long_as_the_valid_frames(rendered):
    _, row, out = rendered
    with wave.open(str(out / f"{row['key']}.wav")) as w:
        assert w.getnchannels() == 2
        assert w.getframerate() == 24000
        assert w.getsampwidth() == 2
        assert w.getnframes() == row["valid_frames"] * 320
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert w.getnframes() / 24000 == pytest.approx(row["duration_s"], abs=1e-6)
    assert (np.abs(pcm).max(axis=0) > 0).all()  # each channel carries decoded sound
