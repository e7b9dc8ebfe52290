"""Telling a full disk from other write failures, in words a person can act on.

A full disk rarely says so: Python raises ``OSError(ENOSPC)``, but torch's zip writer reports
"[enforce fail at inline_container.cc:672] unexpected pos", safetensors a Rust I/O error, and a write that fails
only once the next one starts looks like anything. So a failed write is judged by the errno *or* by the space left
where it wrote: under :data:`LOW_SPACE_BYTES` free, the disk is full for every purpose of this tool.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional, Union

from lib_trainer.common.i18n import tr

LOW_SPACE_BYTES = 64 << 20  # less than this free and a checkpoint, a state or even version.json may not fit


class DiskFull(OSError):
    """A write that failed because the disk is full; ``str()`` is the translated sentence."""

    def __init__(self, folder: Path, free_bytes: Optional[int]):
        self.folder = folder
        self.free_bytes = free_bytes
        super().__init__(errno.ENOSPC, describe(folder, free_bytes))

    def __str__(self) -> str:
        return self.strerror or ""


def free_bytes(folder: Union[str, Path]) -> Optional[int]:
    """Free space of the disk holding ``folder`` (its nearest existing parent); None when it cannot be told."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def describe(folder: Path, free: Optional[int]) -> str:
    if free is None:
        return tr("The disk is full at {folder}.", folder=folder)
    return tr("The disk is full ({free} MB free at {folder}).", free=free >> 20, folder=folder)


def disk_full(folder: Union[str, Path], error: Optional[BaseException] = None) -> Optional[DiskFull]:
    """A DiskFull for a write into ``folder`` that failed with ``error`` (or for no error: whether the disk is full
    now), or None when the disk is not the cause."""
    if isinstance(error, DiskFull):
        return error
    free = free_bytes(folder)
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < LOW_SPACE_BYTES):
        return DiskFull(Path(folder), free)
    return None


__all__ = ["DiskFull", "disk_full", "free_bytes", "LOW_SPACE_BYTES"]
