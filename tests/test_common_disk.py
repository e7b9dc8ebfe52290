"""A full disk is said as a full disk (lib_trainer/common/disk.py, and atomic_save which every writer uses),
whatever the writer called it, and the file being replaced is left as it was."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lib_trainer.common import disk
from lib_trainer.common.files import atomic_save, atomic_write_text


def test_enospc_is_a_full_disk_with_the_space_left_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 3 << 20)
    target = tmp_path / "version.json"
    target.write_text("old", encoding="utf-8")

    def write(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(disk.DiskFull) as caught:
        atomic_save(target, write)
    assert str(caught.value) == f"The disk is full (3 MB free at {tmp_path})."
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value.__cause__, OSError)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["version.json"]  # no temporary file left


def test_torchs_unexpected_pos_on_a_nearly_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1 << 20)

    def write(tmp: Path) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    with pytest.raises(disk.DiskFull, match=r"The disk is full \(1 MB free at "):
        atomic_save(tmp_path / "state.pt", write)


def test_other_failures_stay_what_they_are(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 500 << 30)

    def write(tmp: Path) -> None:
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug, not the disk"):
        atomic_save(tmp_path / "x.bin", write)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1 << 20)
    with pytest.raises(ValueError):  # not a file-system error: the disk is not blamed even when it is low
        atomic_save(tmp_path / "x.bin", lambda tmp: (_ for _ in ()).throw(ValueError("bad value")))
    atomic_write_text(tmp_path / "ok.txt", "fits")  # low space but the write succeeded: nothing raised
    assert (tmp_path / "ok.txt").read_text(encoding="utf-8") == "fits"


def test_free_bytes_looks_at_the_nearest_existing_folder(tmp_path):
    assert disk.free_bytes(tmp_path / "not" / "made" / "yet") == disk.free_bytes(tmp_path) > 0
    assert disk.disk_full(tmp_path) is None  # this machine's disk is not full
