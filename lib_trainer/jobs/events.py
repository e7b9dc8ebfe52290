"""Reading the trainer's event stream (``events.jsonl``) and its log (``trainer.log``) while they grow.

Standard library only: runs inside the WebUI process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

LOG_TAIL_LINES = 20


def parse_event_line(line: bytes) -> Optional[Dict[str, Any]]:
    """The event on one line of trainer output, or None for anything else (libraries print too)."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    return None


class EventTail:
    """Reads the complete new lines of a growing events file; a half-written last line waits for its end."""

    MAX_PARTIAL = 1 << 20

    def __init__(self, path: Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self._partial = b""

    def read(self, final: bool = False) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # replaced or truncated under us: start over
                    self.offset, self._partial = 0, b""
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final or len(self._partial) > self.MAX_PARTIAL:
            lines.append(self._partial)
            self._partial = b""
        return [e for e in map(parse_event_line, lines) if e is not None]


def last_events(path: Path, count: int) -> List[Dict[str, Any]]:
    """The last ``count`` events of an events file, reading only as much of its end as that takes."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            chunk = 64 * 1024
            while True:
                start = max(0, size - chunk)
                fh.seek(start)
                lines = fh.read(size - start).split(b"\n")
                if start > 0:
                    lines = lines[1:]  # probably cut in the middle
                events = [e for e in map(parse_event_line, lines) if e is not None]
                if len(events) >= count or start == 0:
                    return events[-count:]
                chunk *= 4
    except FileNotFoundError:
        return []


def read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except (FileNotFoundError, OSError):
        return b""


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of this run's part of trainer.log, leaving out event lines (the events say those)."""
    data = read_from(path, offset)[-256 * 1024:]
    all_lines = [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    plain = [ln for ln in all_lines if parse_event_line(ln.encode("utf-8")) is None]
    return "\n".join((plain or all_lines)[-lines:])
