"""Atomic file writes, file hashes and safe file names (standard library only; the trainer uses them too).

A crash or a full disk in the middle of a write must never leave a half-written JSON, TOML, picture or LoRA:
write to a temporary file in the same folder, flush it to disk, then ``os.replace`` it over the target.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Callable, Union

from lib_trainer.common.disk import disk_full

PathLike = Union[str, os.PathLike]


def atomic_save(path: PathLike, write: Callable[[Path], None], *, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it over ``path``.

    The temporary file is hidden and ends in ``.tmp``, so a folder scan (the WebUI's Lora list, the trainer's
    dataset) never takes a half-written file for a picture or a LoRA; writers name their format explicitly.
    ``durable=False`` skips the fsync, for files that can simply be made again (preview cells and grids).
    A write that failed for want of space raises :class:`~lib_trainer.common.disk.DiskFull` (whatever the writer
    called it), the target left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:40]}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if _write_failure(exc):
            full = disk_full(path.parent, exc)
            if full is not None:
                raise full from exc
        raise


def _write_failure(exc: BaseException) -> bool:
    """An error a writer raises when the file system fails it (torch's zip writer: RuntimeError; safetensors: its
    own error type), as opposed to a bug or an interrupt."""
    return isinstance(exc, (OSError, RuntimeError)) or "safetensor" in type(exc).__name__.lower()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 with LF line ends, atomically and durably."""
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    atomic_save(dst, lambda tmp: shutil.copyfile(src, tmp))


def read_json(path: PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def hash_file_into(digest: Any, path: PathLike, offset: int = 0) -> Any:
    """Feed a file's bytes from ``offset`` on into ``digest`` (a hashlib object), 1 MiB at a time; returns it."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def sha256_file(path: PathLike, offset: int = 0) -> str:
    """The hex sha256 of a file's bytes (from ``offset`` on)."""
    return hash_file_into(hashlib.sha256(), path, offset).hexdigest()


def short_hash(*parts: Union[str, bytes], length: int = 12) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:length]


_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]+')


def safe_file_stem(text: str, max_len: int = 40) -> str:
    """A short file-name stem derived from arbitrary text (a prompt, say): safe on every OS, never empty.

    For display only — uniqueness comes from whatever the caller appends (an index or a hash).
    """
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub("_", text).strip(" ._")
    text = re.sub(r"\s+", "_", text)
    return text[:max_len].rstrip(" ._") or "untitled"
