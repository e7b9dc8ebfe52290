"""The trainer's event stream: one JSON object per line on stdout, also appended to the events file.

Kinds (DESIGN.md): start, step, sample, checkpoint, done, error, plus warning. Every event has ``event`` (its
kind) and ``time`` (Unix seconds). The runner reading stdout must survive other lines, since libraries print too.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class EventWriter:
    def __init__(self, path: Optional[Path], stream: Optional[TextIO] = None, enabled: bool = True):
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled  # only the main process of a multi-GPU run writes events
        self._fh = None
        if path is not None and enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")

    def emit(self, kind: str, **fields: Any) -> dict:
        event = {"event": kind, "time": round(time.time(), 3), **_clean(fields)}
        if not self.enabled:
            return event
        line = json.dumps(event, ensure_ascii=False)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reader went away; the events file still has everything
        return event

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
