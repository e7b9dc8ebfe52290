"""The cross-process lock of a workspace: an OS file lock (the ``filelock`` package) that the OS drops when the
process holding it dies, so a crashed WebUI never leaves a workspace locked.

The WebUI does not pin filelock (it comes with torch, transformers and huggingface-hub, in whatever version they
brought), so only what every filelock 3.x and 4.x has is used: ``acquire(timeout=0)`` raising ``Timeout``. Two lock
objects on one path exclude each other even inside one process (an OS lock belongs to the open file), which lets
tests play two processes with two runners. A lock is acquired and released by the same thread (newer filelock
versions keep the lock's state per thread).
"""
from __future__ import annotations

import os
from typing import Union

from filelock import FileLock, Timeout


def workspace_lock(path: Union[str, os.PathLike]) -> FileLock:
    return FileLock(str(path))


def try_acquire(lock: FileLock) -> bool:
    """Take ``lock`` if nobody holds it; False at once otherwise."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True
