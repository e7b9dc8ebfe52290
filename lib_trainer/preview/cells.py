"""The files of a preview: cell names, the manifest that records each cell drawn, atomic PNG and manifest
writes, and the per-version lock that keeps one preview run or grid build at a time.

```
previews/manifest.json                seed, prompts, settings and every cell drawn (file, infotext, status)
previews/reference/p01.png            prompt 1 without LoRA (drawn once, shown in every row)
previews/<checkpoint>/p01-w0.8.png    prompt 1, that checkpoint at weight 0.8
```
File names never contain prompts. Runs inside the WebUI process: standard library and Pillow.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from PIL import Image, PngImagePlugin

from lib_trainer.common.files import atomic_save, read_json, safe_file_stem
from lib_trainer.common.i18n import tr
from lib_trainer.projects import CheckpointFile, Version

MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"
MANIFEST_FORMAT = 1

CheckpointRef = Union[CheckpointFile, str, os.PathLike]


class PreviewError(Exception):
    """A user-facing problem with a preview; the message says what to do."""


class PreviewBusy(PreviewError):
    """A preview of this version is already running."""


# ---- cells ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreviewCell:
    """One image of a preview: a prompt with one checkpoint at one weight, or without LoRA (reference)."""

    key: str
    prompt_index: int  # 0-based; files and grids number prompts from 1
    prompt: str
    weight: Optional[float]  # None for the reference
    checkpoint: Optional[CheckpointFile]  # None for the reference
    file: str  # relative to previews/, with "/"

    @property
    def reference(self) -> bool:
        return self.checkpoint is None


def weight_text(weight: float) -> str:
    return format(round(float(weight), 4), "g")


def prompt_number(index: int) -> str:
    return f"{index + 1:02d}"


def checkpoint_dir_name(name: str) -> str:
    """The folder of a checkpoint's cells: its file stem made safe; never the reference folder."""
    stem = safe_file_stem(name, max_len=80)
    if stem.casefold() == REFERENCE_DIR or stem.casefold().startswith("grid-"):
        stem = f"ckpt-{stem}"
    return stem


def checkpoint_identity(ckpt: CheckpointFile) -> str:
    return f"{ckpt.name}|{ckpt.size}|{ckpt.mtime:.6f}"


def cell_key(checkpoint: Optional[str], prompt_index: int, weight: Optional[float]) -> str:
    if checkpoint is None:
        return f"{REFERENCE_DIR}/p{prompt_number(prompt_index)}"
    return f"{checkpoint}/p{prompt_number(prompt_index)}/w{weight_text(weight or 0.0)}"


def reference_cell(prompt_index: int, prompt: str) -> PreviewCell:
    return PreviewCell(key=cell_key(None, prompt_index, None), prompt_index=prompt_index, prompt=prompt, weight=None,
                       checkpoint=None, file=f"{REFERENCE_DIR}/p{prompt_number(prompt_index)}.png")


def lora_cell(ckpt: CheckpointFile, prompt_index: int, prompt: str, weight: float) -> PreviewCell:
    file = f"{checkpoint_dir_name(ckpt.name)}/p{prompt_number(prompt_index)}-w{weight_text(weight)}.png"
    return PreviewCell(key=cell_key(ckpt.name, prompt_index, weight), prompt_index=prompt_index, prompt=prompt,
                       weight=float(weight), checkpoint=ckpt, file=file)


# ---- the manifest -----------------------------------------------------------------------------------------------------

def manifest_path(version: Version) -> Path:
    return version.previews_dir / MANIFEST_FILE


def load_manifest(version: Version) -> Optional[Dict[str, Any]]:
    """The version's manifest; None when there is none or it is unreadable (then every cell is drawn again)."""
    try:
        data = read_json(manifest_path(version), None)
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("cells"), dict):
        return None
    return data


def record_matches(record: Optional[Dict[str, Any]], cell: PreviewCell, previews_dir: Path) -> bool:
    """A manifest record that still stands for ``cell``: same prompt and file, same checkpoint file, on disk."""
    if not record or record.get("status") != "ok" or record.get("prompt") != cell.prompt:
        return False
    if record.get("file") != cell.file or not (previews_dir / cell.file).is_file():
        return False
    identity = checkpoint_identity(cell.checkpoint) if cell.checkpoint is not None else None
    return record.get("identity") == identity


def _record_failed(record: Optional[Dict[str, Any]], cell: PreviewCell) -> bool:
    if not record or record.get("status") != "failed" or record.get("prompt") != cell.prompt:
        return False
    identity = checkpoint_identity(cell.checkpoint) if cell.checkpoint is not None else None
    return record.get("identity") == identity


def valid_record(manifest: Dict[str, Any], cell: PreviewCell, previews: Path) -> Optional[Dict[str, Any]]:
    record = manifest["cells"].get(cell.key)
    if record_matches(record, cell, previews) or _record_failed(record, cell):
        return record
    return None


# ---- writing ----------------------------------------------------------------------------------------------------------

def write_manifest(path: Path, manifest: Dict[str, Any]) -> None:
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"))  # compact: the C encoder, no indent
    # No fsync here or below: everything in previews/ can be drawn again, and a flush per cell costs more than
    # the preview's own work on a busy disk.
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=False)


def save_png(path: Path, image: Image.Image, parameters: str, extra: Optional[Dict[str, str]] = None) -> None:
    """``image`` as a PNG (replaced atomically) with the WebUI's "parameters" text chunk and extra chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    atomic_save(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info, compress_level=4), durable=False)


# ---- one run at a time ------------------------------------------------------------------------------------------------

_version_locks: Dict[str, threading.Lock] = {}
_version_locks_guard = threading.Lock()


def version_lock(version: Version) -> threading.Lock:
    with _version_locks_guard:
        return _version_locks.setdefault(str(version.path), threading.Lock())


def is_running(version: Version) -> bool:
    return version_lock(version).locked()


def resolve_checkpoints(version: Version, wanted: Optional[Iterable[CheckpointRef]]) -> List[CheckpointFile]:
    """The version's checkpoints named by ``wanted`` (CheckpointFile, name or path), in the version's order."""
    available = version.checkpoints()
    if wanted is None:
        return available
    by_name = {c.name: c for c in available}
    chosen = set()
    for item in wanted:
        if isinstance(item, CheckpointFile):
            name = item.name
        elif isinstance(item, os.PathLike) or str(item).endswith(".safetensors"):
            name = Path(item).stem
        else:
            name = str(item)
        if name not in by_name:
            raise PreviewError(tr("Version \"{version}\" has no checkpoint \"{name}\".", version=version.name,
                                  name=name))
        chosen.add(name)
    return [c for c in available if c.name in chosen]
