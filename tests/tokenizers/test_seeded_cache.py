"""Seeded calibrations cached on disk: the cached state gives the same codes as a fresh build, and a
file that cannot be trusted is ignored with a warning and rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from microturn.config import AudioCodecConfig, BuildConfig, FrameCodecConfig
from microturn.tokenizers.calibration import speech_like

SMALL_FRAMES = dict(image_size=32, downsample=4, levels=(5, 5, 5), hidden=16, device="cpu")


def tiny_state() -> dict:
    import torch

    return {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(2)}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def only_file(folder: Path) -> Path:
    (path,) = folder.iterdir()
    return path


def test_the_default_cache_stays_out_of_the_home_folder_in_tests():
    from microturn.tokenizers.seeded import default_cache_dir

    assert not default_cache_dir().resolve().is_relative_to(Path.home().resolve())


def test_a_cached_encodec_calibration_gives_byte_identical_codes(tmp_path, small_windows):
    from microturn.tokenizers import audio

    built = audio._calibrated_state(0, 2)  # never touches a cache
    audio._seeded_state.cache_clear()
    first = audio.load_audio_tokenizer(AudioCodecConfig(bandwidth_kbps=1.5, **small_windows), tmp_path)
    saved = only_file(tmp_path)
    audio._seeded_state.cache_clear()
    second = audio.load_audio_tokenizer(AudioCodecConfig(bandwidth_kbps=1.5, **small_windows), tmp_path)
    assert only_file(tmp_path) == saved and saved.name.startswith("encodec24k-K2-seed0-")
    assert same_state(audio._seeded_state(0, 2, tmp_path).tensors, built)
    wave = np.stack([speech_like(2.0, 5), speech_like(2.0, 6)])
    assert first.fingerprint == second.fingerprint
    assert np.array_equal(first.encode(wave), second.encode(wave))


def test_a_cached_frame_codec_calibration_gives_identical_tokens(tmp_path):
    from microturn.tokenizers.frames import load_frame_tokenizer

    cfg = FrameCodecConfig(**SMALL_FRAMES)
    fresh = load_frame_tokenizer(cfg, tmp_path)
    cached = load_frame_tokenizer(cfg, tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert only_file(tmp_path).name.startswith("fsq-32px-seed0-")
    assert fresh.fingerprint == cached.fingerprint
    assert np.array_equal(fresh.encode(frames), cached.encode(frames))


def test_the_second_call_reads_the_cache_instead_of_building(tmp_path):
    from microturn.tokenizers.seeded import cached_state

    first = cached_state("toy", {"seed": 1}, tmp_path, tiny_state)
    again = cached_state("toy", {"seed": 1}, tmp_path, lambda: pytest.fail("built again"))
    assert same_state(first.tensors, again.tensors)
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed


def test_a_cached_state_comes_with_the_digest_of_its_tensors(tmp_path):
    from microturn.tokenizers.seeded import cached_state, state_digest

    built = cached_state("toy", {"seed": 1}, tmp_path, tiny_state)
    read = cached_state("toy", {"seed": 1}, tmp_path, lambda: pytest.fail("built again"))
    assert built.digest == read.digest == state_digest(tiny_state())
    assert state_digest({**tiny_state(), "b": tiny_state()["b"] * 2}) != built.digest


def test_the_state_digest_hashes_names_and_bytes_in_name_order():
    import hashlib

    import torch

    from microturn.tokenizers.seeded import state_digest

    # Non-contiguous, 0-d, bool and empty tensors: the bytes of their contiguous copies, as before.
    state = {"z": torch.arange(6.0).view(2, 3).t(), "a": torch.tensor(3), "m": torch.tensor([True, False]),
             "e": torch.zeros(0)}
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    assert state_digest(state) == h.hexdigest()


def test_untrained_fingerprints_name_the_weights_the_tokenizers_hold(tmp_path, small_windows):
    from microturn.tokenizers import audio
    from microturn.tokenizers.frames import load_frame_codec
    from microturn.tokenizers.seeded import state_digest

    audio._seeded_state.cache_clear()
    model, tag = audio.load_encodec(AudioCodecConfig(bandwidth_kbps=1.5, **small_windows), tmp_path)
    assert tag == f"untrained:0@{state_digest(model.state_dict())[:8]}"
    codec, tag = load_frame_codec(FrameCodecConfig(**SMALL_FRAMES), tmp_path)
    assert tag == f"untrained:0@{state_digest(codec.state_dict())[:8]}"


def test_another_key_is_another_file(tmp_path):
    from microturn.tokenizers.seeded import cached_state

    cached_state("toy", {"seed": 1}, tmp_path, tiny_state)
    cached_state("toy", {"seed": 2}, tmp_path, tiny_state)
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_key", "altered_tensor", "pickled_code"])
def test_an_untrustworthy_cache_file_is_ignored_with_a_warning_and_rebuilt(tmp_path, caplog, damage):
    import torch

    from microturn.tokenizers.seeded import cached_state

    cached_state("toy", {"seed": 1}, tmp_path, tiny_state)
    path = only_file(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "pickled_code":  # weights_only loading refuses arbitrary objects
        torch.save({"format": "microturn-seeded-state-v1", "state": {"w": logging.getLogger}}, path)
    else:
        blob = torch.load(path, weights_only=True)
        if damage == "other_key":
            blob["key"] = blob["key"].replace('"seed": 1', '"seed": 9')
        else:
            blob["state"]["w"][0, 0] = 42.0
        torch.save(blob, path)
    with caplog.at_level(logging.WARNING, logger="microturn.tokenizers.seeded"):
        state = cached_state("toy", {"seed": 1}, tmp_path, tiny_state)
    assert same_state(state.tensors, tiny_state())
    assert "rebuilding" in caplog.text
    caplog.clear()
    again = cached_state("toy", {"seed": 1}, tmp_path, lambda: pytest.fail("the rebuilt file was not saved"))
    assert same_state(again.tensors, tiny_state()) and not caplog.text


def test_an_unwritable_cache_only_costs_the_rebuild(tmp_path, caplog):
    from microturn.tokenizers.seeded import cached_state

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="microturn.tokenizers.seeded"):
        state = cached_state("toy", {"seed": 1}, blocker / "cache", tiny_state)
    assert same_state(state.tensors, tiny_state()) and "could not save" in caplog.text


def test_the_cache_folder_is_not_part_of_the_config_hash():
    moved = BuildConfig.model_validate({"tokenizers": {"cache_dir": "/somewhere/else"}})
    assert moved.config_hash() == BuildConfig().config_hash()
