"""Reading what a preview drew: each checkpoint's cells for the per-checkpoint galleries, and the cell of a
checkpoint at a weight. Runs inside the WebUI process: standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from lib_trainer.common.i18n import tr
from lib_trainer.preview.cells import (CheckpointRef, load_manifest, lora_cell, record_matches, reference_cell,
                                       resolve_checkpoints, weight_text)
from lib_trainer.preview.grid import checkpoint_label
from lib_trainer.projects import CheckpointFile, Version

@dataclass
class GalleryItem:
    path: Path
    caption: str
    prompt_index: int
    weight: Optional[float]


@dataclass
class CheckpointGallery:
    name: Optional[str]  # None: the reference (no LoRA)
    label: str
    checkpoint: Optional[CheckpointFile]
    items: List[GalleryItem]


def checkpoint_galleries(version: Version, include_reference: bool = True) -> List[CheckpointGallery]:
    """Each checkpoint's drawn cells (prompt by prompt, weight by weight), for the per-checkpoint galleries."""
    manifest = load_manifest(version)
    if manifest is None:
        return []
    previews = version.previews_dir
    prompts = manifest.get("prompts", [])
    weights = manifest.get("weights", [])
    galleries = []
    if include_reference and manifest.get("reference", True):
        items = []
        for i, prompt in enumerate(prompts):
            cell = reference_cell(i, prompt)
            if record_matches(manifest["cells"].get(cell.key), cell, previews):
                items.append(GalleryItem(previews / cell.file, tr("prompt {n} · no LoRA", n=i + 1), i, None))
        galleries.append(CheckpointGallery(None, tr("no LoRA"), None, items))
    for ckpt in version.checkpoints():
        items = []
        for i, prompt in enumerate(prompts):
            for w in weights:
                cell = lora_cell(ckpt, i, prompt, w)
                if record_matches(manifest["cells"].get(cell.key), cell, previews):
                    items.append(GalleryItem(previews / cell.file,
                                             tr("prompt {n} · weight {weight}", n=i + 1, weight=weight_text(w)), i, w))
        galleries.append(CheckpointGallery(ckpt.name, " · ".join(checkpoint_label(ckpt)), ckpt, items))
    return galleries


def cell_image(version: Version, checkpoint: CheckpointRef, weight: float, prompt_index: int = 0) -> Optional[Path]:
    """The drawn cell of ``checkpoint`` for a prompt at ``weight`` (or the nearest weight drawn); None if none."""
    manifest = load_manifest(version)
    if manifest is None:
        return None
    ckpt = resolve_checkpoints(version, [checkpoint])[0]
    prompts = manifest.get("prompts", [])
    if not 0 <= prompt_index < len(prompts):
        return None
    best: Optional[Tuple[float, Path]] = None
    for w in set(manifest.get("weights", [])) | {float(weight)}:
        cell = lora_cell(ckpt, prompt_index, prompts[prompt_index], w)
        if record_matches(manifest["cells"].get(cell.key), cell, version.previews_dir):
            distance = abs(w - weight)
            if best is None or distance < best[0]:
                best = (distance, version.previews_dir / cell.file)
    return best[1] if best else None
