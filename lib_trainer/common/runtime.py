"""Objects that live once per process.

The WebUI re-executes ``scripts/`` on "Reload UI", but keeps imported library modules: the job runner (with its
worker thread following a trainer) and the host are kept here, so a reload shows the same run instead of
starting a second runner. Standard library only.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, TypeVar

T = TypeVar("T")

_objects: Dict[str, Any] = {}
_lock = threading.Lock()


def process_singleton(key: str, factory: Callable[[], T]) -> T:
    """The object stored under ``key``, made by ``factory`` the first time it is asked for."""
    with _lock:
        if key not in _objects:
            _objects[key] = factory()
        return _objects[key]


def forget(key: str) -> Any:
    """Drop (and return) the object under ``key``; the next :func:`process_singleton` makes a new one."""
    with _lock:
        return _objects.pop(key, None)
