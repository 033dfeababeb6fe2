"""Checkpoints are durable commits: fsync'd file and folder, the previous one kept until the new one is
durable, partial writes never resumed from, nothing unpickled."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from microturn.errors import TrainDataError
from microturn.train.checkpoint import checkpoints, load_latest_checkpoint, save_checkpoint
from microturn.train.loop import train

torch.set_num_threads(1)


def _save(run: Path, step: int, tiny_cfg, keep: int = 2) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(run, model=model, optimizer=optimizer, step=step, tokens_seen=10 * step,
                           loaders=[{"batches_seen": step}], cfg=tiny_cfg, keep=keep)  # fmt: skip


def test_a_checkpoint_is_fsynced_and_renamed_before_the_previous_is_deleted(tiny_cfg, tmp_path, monkeypatch):
    _save(tmp_path, 1, tiny_cfg, keep=1)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

    def fsync(fd: int) -> None:
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        events.append(("delete", self.name))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    _save(tmp_path, 2, tiny_cfg, keep=1)
    assert events == [("fsync", "file"), ("rename", "step-00000002.pt"), ("fsync", "folder"),
                      ("delete", "step-00000001.pt")]  # fmt: skip
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000002.pt"]


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tiny_cfg, tmp_path, monkeypatch):
    _save(tmp_path, 2, tiny_cfg, keep=1)
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):  # the disk fills up half way through
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        _save(tmp_path, 4, tiny_cfg, keep=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002.pt"]
    path, state = load_latest_checkpoint(tmp_path, torch.device("cpu"))
    assert path.name == "step-00000002.pt" and state["step"] == 2


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(tiny_cfg, tmp_path, caplog):
    _save(tmp_path, 2, tiny_cfg)
    latest = _save(tmp_path, 4, tiny_cfg)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # cut short: renamed before its data reached the disk
    path, state = load_latest_checkpoint(tmp_path, torch.device("cpu"))
    assert path.name == "step-00000002.pt" and state["step"] == 2 and state["tokens_seen"] == 20
    assert "cannot resume from" in caplog.text and "step-00000004.pt" in caplog.text
    # set aside, so that pruning after the next save never keeps it in place of a good checkpoint
    assert not latest.exists() and latest.with_name("step-00000004.pt.bad").exists()
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000002.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_in_a_checkpoint_is_never_executed(tiny_cfg, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with open(folder / "step-00000001.pt", "wb") as fh:
        pickle.dump({"model": Boom()}, fh)
    torch.save({"model": Boom()}, folder / "step-00000002.pt")
    with pytest.raises(TrainDataError, match="bad_checkpoint"):
        load_latest_checkpoint(tmp_path, torch.device("cpu"))


def test_resume_ignores_and_removes_a_partial_temporary_checkpoint(tiny_cfg, train_corpus, tmp_path):
    cfg = tiny_cfg.replace(data={"eval_shards": 0}, run={"max_steps": 2, "log_every": 1, "ckpt_every": 2})
    run = tmp_path / "run"
    train(cfg, str(train_corpus), run)
    partial = run / "checkpoints" / ".step-00000004.pt.tmp-12345"  # a run killed while writing step 4
    partial.write_bytes(b"PK\x03\x04 torn")
    summary = train(cfg.replace(run={"max_steps": 4}), str(train_corpus), run)
    assert summary["steps"] == 4
    assert not partial.exists()
    assert [p.name for p in checkpoints(run)] == ["step-00000002.pt", "step-00000004.pt"]
