"""Preview runs: every checkpoint × weight × prompt drawn by the host's txt2img with one seed, the version's
preview config, and the per-checkpoint galleries of what was drawn. This module is the public API of previews:
it also re-exports the names of preview_files (cells, manifest), preview_grid (grids), preview_text (fonts) and
recommend (which checkpoint to keep).

```
previews/preview.json                 PreviewConfig of the version
previews/manifest.json                seed, prompts, settings and every cell drawn (file, infotext, status)
previews/reference/p01.png            prompt 1 without LoRA (drawn once, shown in every row)
previews/<checkpoint>/p01-w0.8.png    prompt 1, that checkpoint at weight 0.8
previews/grid-01.png                  the labelled grid of prompt 1 (+ grid-01-page1.png … when it is tall)
```
File names never contain prompts. A run records each cell in the manifest as soon as it is drawn, so an
interrupted run resumes where it stopped; a cell is reused only for the same checkpoint file (name, size,
modification time), prompt, weight and settings. Runs inside the WebUI process: standard library, Pillow, numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lib_trainer.fsutil import atomic_write_json, read_json, short_hash
from lib_trainer.hosts.base import Host, HostError, HostInterrupted, LoraSpec, Txt2ImgRequest
from lib_trainer.i18n import tr
from lib_trainer.preview_files import (MANIFEST_FILE, MANIFEST_FORMAT, REFERENCE_DIR, PreviewBusy, PreviewCell,
                                       PreviewError, cell_key, checkpoint_dir_name, checkpoint_identity,
                                       is_running, load_manifest, lora_cell, manifest_path, prompt_number,
                                       record_matches, reference_cell, save_png, version_lock, weight_text,
                                       write_manifest)
from lib_trainer.preview_grid import (BACKGROUND, FAILED, FINAL, GRID_INFO_KEY, HEADER_BACKGROUND, MUTED, PAGE_ROWS,
                                      PLACEHOLDER, TEXT, GridCell, GridFiles, GridLayout, GridSpec, build_grids,
                                      checkpoint_label, grid_files, read_grid_info, render_grid, settings_line,
                                      webui_parameters, write_grids)
from lib_trainer.preview_text import TextRenderer
from lib_trainer.projects import CheckpointFile, Version, now_iso, read_safetensors_metadata
from lib_trainer.recommend import (TIE_TOLERANCE, CheckpointScore, Recommendation, checkpoint_scores, recommend,
                                   score_chart)

PREVIEW_CONFIG_FILE = "preview.json"
DEFAULT_WEIGHTS = (0.4, 0.6, 0.8, 1.0)
DEFAULT_SEED = 1234
DEFAULT_SIZES = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024}

ProgressCallback = Callable[[int, int, "PreviewCell"], None]
CheckpointRef = Union[CheckpointFile, str, os.PathLike]


# ---- config -----------------------------------------------------------------------------------------------------------

@dataclass
class PreviewConfig:
    """What a preview draws; stored per version in ``previews/preview.json``."""

    prompts: List[str] = field(default_factory=lambda: [""])
    negative_prompt: str = ""
    weights: List[float] = field(default_factory=lambda: list(DEFAULT_WEIGHTS))
    seed: int = DEFAULT_SEED  # -1: one random seed for the whole run, recorded in the manifest
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    clip_skip: int = 1
    reference: bool = True  # the "no LoRA" column
    trigger: Optional[str] = None  # None: the version's trigger word; "": none
    base_model: Optional[str] = None  # None: the model the version was trained on (else the host's current)
    auto_after_training: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreviewConfig":
        """A config from JSON-like data: unknown keys are ignored, values coerced, then validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        try:
            if "prompts" in values:
                prompts = values["prompts"]
                values["prompts"] = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
            if "weights" in values:
                weights = values["weights"]
                if isinstance(weights, str):
                    weights = [w for w in re.split(r"[,\s]+", weights) if w]
                values["weights"] = [float(w) for w in weights]
            for key in ("seed", "steps", "width", "height", "clip_skip"):
                if key in values:
                    values[key] = int(values[key])
            if "cfg_scale" in values:
                values["cfg_scale"] = float(values["cfg_scale"])
            for key in ("reference", "auto_after_training"):
                if key in values:
                    values[key] = bool(values[key])
            for key in ("negative_prompt", "sampler"):
                if key in values:
                    values[key] = str(values[key] or "")
            for key in ("trigger", "base_model"):
                if key in values and values[key] is not None:
                    values[key] = str(values[key])
        except (TypeError, ValueError) as exc:
            raise PreviewError(tr("The preview settings are not valid: {error}", error=str(exc))) from None
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        problems = []
        if not self.prompts:
            problems.append(tr("add at least one prompt"))
        if not self.weights:
            problems.append(tr("add at least one weight"))
        if any(not math.isfinite(w) or abs(w) > 10 for w in self.weights):
            problems.append(tr("weights must be numbers between -10 and 10"))
        if not 1 <= self.steps <= 500:
            problems.append(tr("steps must be between 1 and 500"))
        if not 0 < self.cfg_scale <= 100:
            problems.append(tr("CFG scale must be above 0 and at most 100"))
        if self.width < 8 or self.width > 8192 or self.width % 8:
            problems.append(tr("the width must be a multiple of 8 between 8 and 8192 (got {value})", value=self.width))
        if self.height < 8 or self.height > 8192 or self.height % 8:
            problems.append(tr("the height must be a multiple of 8 between 8 and 8192 (got {value})",
                               value=self.height))
        if self.clip_skip < 1:
            problems.append(tr("clip skip must be 1 or more"))
        if self.seed < -1:
            problems.append(tr("the seed must be -1 (random) or a number from 0"))
        if not self.sampler.strip():
            problems.append(tr("choose a sampler"))
        if problems:
            raise PreviewError(tr("The preview settings are not valid: {error}", error="; ".join(problems)))
        self.weights = list(dict.fromkeys(float(w) for w in self.weights))


def config_path(version: Version) -> Path:
    return version.previews_dir / PREVIEW_CONFIG_FILE


def version_arch(version: Version, host: Optional[Host] = None) -> str:
    """"sd1" | "sd2" | "sd2-v" | "sdxl" of a version: from its LoRA files' metadata, else the host's checkpoint
    list entry of its base model; "sd1" when nothing tells."""
    for ckpt in reversed(version.checkpoints()):
        arch = arch_from_metadata(read_safetensors_metadata(ckpt.path))
        if arch:
            return arch
    base = _trained_base_model(version)
    if host is not None and base:
        for info in host.checkpoints():
            if base in (info.path, info.title) and info.arch in DEFAULT_SIZES:
                return info.arch
    return "sd1"


def arch_from_metadata(meta: Dict[str, str]) -> Optional[str]:
    spec = meta.get("modelspec.architecture", "")
    base = meta.get("ss_base_model_version", "")
    if "-xl-" in spec or base.startswith("sdxl"):
        return "sdxl"
    if "v2-768-v" in spec or (base.startswith("sd_v2") and meta.get("ss_v_parameterization") == "True"):
        return "sd2-v"
    if "v2" in spec or base.startswith("sd_v2"):
        return "sd2"
    if "v1" in spec or base.startswith("sd_v1"):
        return "sd1"
    return None


def _train_config(version: Version):
    from lib_trainer.trainer.schema import ConfigError, load_config

    if not version.config_path.is_file():
        return None
    try:
        return load_config(version.config_path)[0]
    except (ConfigError, TypeError, ValueError):
        return None


def _trained_base_model(version: Version) -> Optional[str]:
    cfg = _train_config(version)
    return (cfg.pretrained_model_name_or_path or None) if cfg is not None else None


def version_trigger(version: Version) -> str:
    """The version's trigger word(s) (settings ``trigger``), "" when it has none."""
    value = version.state().get("settings", {}).get("trigger") or ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value if str(v).strip())
    return str(value).strip()


def default_config(version: Version, host: Optional[Host] = None) -> PreviewConfig:
    """Defaults for a version: its architecture's size, its clip skip, up to two of its training captions."""
    size = DEFAULT_SIZES.get(version_arch(version, host), 512)
    cfg = _train_config(version)
    clip_skip = int(cfg.clip_skip) if cfg is not None and cfg.clip_skip else 1
    prompts = _sample_captions(version, 2) or [""]
    sampler = "Euler a"
    if host is not None:
        names = host.samplers()
        if names and sampler not in names:
            sampler = names[0]
    return PreviewConfig(prompts=prompts, width=size, height=size, clip_skip=clip_skip, sampler=sampler)


def _sample_captions(version: Version, count: int) -> List[str]:
    found: List[str] = []
    if not version.train_dir.is_dir():
        return found
    for path in sorted(version.train_dir.rglob("*.txt")):
        try:
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
        except OSError:
            continue
        if text and text not in found:
            found.append(text)
        if len(found) >= count:
            break
    return found


def load_config(version: Version, host: Optional[Host] = None) -> PreviewConfig:
    """The version's stored preview config, or the defaults when it has none (or a broken one)."""
    data = read_json(config_path(version), None)
    if isinstance(data, dict):
        try:
            return PreviewConfig.from_dict(data)
        except PreviewError:
            pass
    return default_config(version, host)


def save_config(version: Version, config: PreviewConfig) -> None:
    config.validate()
    atomic_write_json(config_path(version), config.to_dict())


def should_run_after_training(version: Version) -> bool:
    data = read_json(config_path(version), None)
    return bool(data.get("auto_after_training", True)) if isinstance(data, dict) else True


def apply_trigger(prompt: str, trigger: Optional[str]) -> str:
    """``prompt`` with ``trigger`` in front, unless the prompt already contains it as a word or tag."""
    prompt = prompt.strip()
    trigger = (trigger or "").strip()
    if not trigger:
        return prompt
    if re.search(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", prompt, flags=re.IGNORECASE):
        return prompt
    return f"{trigger}, {prompt}" if prompt else trigger


# ---- running ----------------------------------------------------------------------------------------------------------

@dataclass
class CellFailure:
    key: str
    message: str


@dataclass
class PreviewResult:
    seed: int
    total: int  # cells the run covers (its checkpoints and the reference column)
    drawn: int  # drawn by this run (including failed ones)
    reused: int  # already drawn by an earlier run
    failed: List[CellFailure]
    interrupted: bool
    grids: List[GridFiles]
    manifest_path: Path
    warnings: List[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    txt2img_s: float = 0.0  # time spent inside host.txt2img
    grid_s: float = 0.0  # time spent assembling grids

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.failed


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


def resolve_base_model(version: Version, config: PreviewConfig, host: Host, warnings: List[str]) -> Optional[str]:
    wanted = config.base_model or _trained_base_model(version)
    if not wanted:
        return None
    try:
        listing = host.checkpoints()
    except HostError:
        listing = []
    if any(wanted in (info.path, info.title) for info in listing) or os.path.isfile(wanted):
        return wanted
    warnings.append(tr("The base model {name} is not available to the host; the preview uses the host's current "
                       "model.", name=wanted))
    return None


def plan_cells(prompts: Sequence[str], weights: Sequence[float], checkpoints: Sequence[CheckpointFile],
               reference: bool) -> List[PreviewCell]:
    """Every cell, in drawing order: the reference column, then checkpoint by checkpoint (one LoRA load each)."""
    cells = [reference_cell(i, p) for i, p in enumerate(prompts)] if reference else []
    for ckpt in checkpoints:
        for i, prompt in enumerate(prompts):
            cells.extend(lora_cell(ckpt, i, prompt, w) for w in weights)
    return cells


def _settings(config: PreviewConfig, base_model: Optional[str]) -> Dict[str, Any]:
    """What changes every image; another value starts a new manifest. Prompts, weights and checkpoints are
    checked per cell instead, so adding a weight or a prompt draws only the new cells."""
    return {"negative_prompt": config.negative_prompt, "seed": config.seed, "sampler": config.sampler,
            "steps": config.steps, "cfg_scale": config.cfg_scale, "width": config.width, "height": config.height,
            "clip_skip": config.clip_skip, "base_model": base_model}


def _new_manifest(version: Version, settings: Dict[str, Any], key: str, seed: int) -> Dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "version": version.key, "settings_key": key, "settings": settings,
            "seed": seed, "created": now_iso(), "updated": now_iso(), "prompts": [], "weights": [],
            "reference": True, "checkpoints": {}, "cells": {}, "grids": []}


def _lora_problem(cell: PreviewCell, infotext: str, applied: Sequence[str]) -> Optional[str]:
    """Why the image does not show what the cell asked for (the LoRA missing, or one where none belongs)."""
    lowered = (infotext or "").lower()
    if cell.reference:
        if applied:
            return tr("The host applied a LoRA ({names}) to the reference image, which must have none.",
                      names=", ".join(applied))
        return None
    if any(marker in lowered for marker in ("lora not found", "networks not found", "network not found",
                                            "networks with errors")):
        return tr("The host could not find the LoRA of {name}; its infotext says: {text}", name=cell.checkpoint.name,
                  text=_not_found_line(infotext))
    if not applied and cell.weight != 0.0:
        return tr("The host drew the image without applying {name} (it reported no LoRA applied).",
                  name=cell.checkpoint.name)
    return None


def _not_found_line(infotext: str) -> str:
    for line in infotext.splitlines():
        if "not found" in line.lower() or "with errors" in line.lower():
            return line.strip()
    return infotext.strip()[-200:]


def run_preview(
    version: Version,
    host: Host,
    config: Optional[PreviewConfig] = None,
    *,
    checkpoints: Optional[Iterable[CheckpointRef]] = None,
    stop: Optional[threading.Event] = None,
    progress: Optional[ProgressCallback] = None,
    font_path: Optional[str] = None,
    restart: bool = False,
    build_grid: bool = True,
) -> PreviewResult:
    """Draw the cells of the version's preview that are not drawn yet, then (re)build its grids.

    ``config`` defaults to the version's stored preview config. ``checkpoints`` limits the run to some
    checkpoints ("preview this checkpoint"); the grids still show every checkpoint (undrawn cells as
    placeholders). ``stop`` is checked between cells and passed to host.txt2img; ``progress(done, total, cell)``
    is called after each cell drawn (``done`` counts the cells reused from earlier runs too). ``restart`` starts
    a new manifest (and a new seed when the seed is -1). Raises PreviewBusy when a preview of the version runs.
    """
    lock = version_lock(version)
    if not lock.acquire(blocking=False):
        raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
    try:
        return _run(version, host, config, checkpoints, stop, progress, font_path, restart, build_grid)
    finally:
        lock.release()


def _run(version: Version, host: Host, config: Optional[PreviewConfig], wanted: Optional[Iterable[CheckpointRef]],
         stop: Optional[threading.Event], progress: Optional[ProgressCallback], font_path: Optional[str],
         restart: bool, build_grid: bool) -> PreviewResult:
    started = time.perf_counter()
    config = config if config is not None else load_config(version, host)
    config.validate()
    targets = resolve_checkpoints(version, wanted)
    if not version.checkpoints():
        raise PreviewError(tr("Version \"{version}\" has no checkpoints yet: train it first.", version=version.key))
    warnings: List[str] = []
    trigger = config.trigger if config.trigger is not None else version_trigger(version)
    prompts = [apply_trigger(p, trigger) for p in config.prompts]
    base_model = resolve_base_model(version, config, host, warnings)
    settings = _settings(config, base_model)
    key = short_hash(json.dumps(settings, sort_keys=True, ensure_ascii=False))

    manifest = None if restart else load_manifest(version)
    if manifest is None or manifest.get("settings_key") != key:
        seed = config.seed if config.seed >= 0 else random.randrange(2 ** 32)
        manifest = _new_manifest(version, settings, key, seed)
    seed = int(manifest["seed"])
    manifest.update(prompts=prompts, weights=list(config.weights), reference=config.reference,
                    trigger=trigger, negative_prompt=config.negative_prompt)
    for ckpt in version.checkpoints():
        manifest["checkpoints"][ckpt.name] = {"epoch": ckpt.epoch, "step": ckpt.step, "final": ckpt.final,
                                              "identity": checkpoint_identity(ckpt)}

    previews = version.previews_dir
    cells = plan_cells(prompts, config.weights, targets, config.reference)
    records: Dict[str, Any] = manifest["cells"]
    pending = [c for c in cells if not record_matches(records.get(c.key), c, previews)]
    reused = len(cells) - len(pending)
    done = reused
    failed: List[CellFailure] = []
    interrupted = False
    txt2img_s = 0.0
    path = manifest_path(version)
    write_manifest(path, manifest)

    for cell in pending:
        if stop is not None and stop.is_set():
            interrupted = True
            break
        request = Txt2ImgRequest(
            prompt=cell.prompt, negative_prompt=config.negative_prompt, seed=seed, steps=config.steps,
            cfg_scale=config.cfg_scale, width=config.width, height=config.height, sampler=config.sampler,
            clip_skip=config.clip_skip, checkpoint=base_model,
            loras=[] if cell.reference else [LoraSpec(str(cell.checkpoint.path), float(cell.weight))],
        )
        t0 = time.perf_counter()
        record: Dict[str, Any] = {"file": cell.file, "checkpoint": cell.checkpoint.name if cell.checkpoint else None,
                                  "identity": checkpoint_identity(cell.checkpoint) if cell.checkpoint else None,
                                  "prompt_index": cell.prompt_index, "prompt": cell.prompt, "weight": cell.weight,
                                  "seed": seed}
        try:
            result = host.txt2img(request, interrupt=stop)
        except HostInterrupted:
            interrupted = True
            break
        except HostError as exc:
            txt2img_s += time.perf_counter() - t0
            if stop is not None and stop.is_set():
                interrupted = True
                break
            record.update(status="failed", error=str(exc))
        else:
            txt2img_s += time.perf_counter() - t0
            if stop is not None and stop.is_set():  # the host may hand back a half-drawn image
                interrupted = True
                break
            record.update(seed=int(result.seed), infotext=result.infotext,
                          loras_applied=[str(x) for x in result.loras_applied])
            problem = _lora_problem(cell, result.infotext, result.loras_applied)
            if problem:
                record.update(status="failed", error=problem)
            else:
                save_png(previews / cell.file, result.image, result.infotext)
                record.update(status="ok")
        record.update(time_s=round(time.perf_counter() - t0, 3), drawn=now_iso())
        records[cell.key] = record
        manifest["updated"] = now_iso()
        write_manifest(path, manifest)
        if record["status"] == "failed":
            failed.append(CellFailure(cell.key, record["error"]))
        done += 1
        if progress is not None:
            progress(done, len(cells), cell)

    grids: List[GridFiles] = []
    grid_s = 0.0
    if build_grid:
        t0 = time.perf_counter()
        grids = write_grids(version, manifest, font_path)
        grid_s = time.perf_counter() - t0
    return PreviewResult(seed=seed, total=len(cells), drawn=done - reused, reused=reused, failed=failed,
                         interrupted=interrupted, grids=grids, manifest_path=path, warnings=warnings,
                         elapsed_s=time.perf_counter() - started, txt2img_s=txt2img_s, grid_s=grid_s)


# ---- reading what was drawn -------------------------------------------------------------------------------------------

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


__all__ = [
    "PreviewConfig", "PreviewError", "PreviewBusy", "PreviewCell", "PreviewResult", "CellFailure", "GridFiles",
    "GridCell", "GridSpec", "GridLayout", "GalleryItem", "CheckpointGallery", "CheckpointScore", "Recommendation",
    "TextRenderer", "read_grid_info", "run_preview", "plan_cells", "build_grids", "render_grid", "load_config",
    "save_config", "default_config", "load_manifest", "checkpoint_galleries", "cell_image", "grid_files",
    "apply_trigger", "version_trigger", "version_arch", "should_run_after_training", "is_running",
    "resolve_checkpoints", "recommend", "checkpoint_scores", "score_chart", "checkpoint_label", "save_png",
    "config_path", "manifest_path",
    # re-exported for callers that reach them through this module
    "CheckpointRef", "ProgressCallback", "arch_from_metadata", "resolve_base_model", "weight_text",
    "prompt_number", "checkpoint_dir_name", "checkpoint_identity", "cell_key", "reference_cell", "lora_cell",
    "write_manifest", "settings_line", "webui_parameters", "TIE_TOLERANCE", "PAGE_ROWS", "GRID_INFO_KEY",
    "MANIFEST_FILE", "MANIFEST_FORMAT", "REFERENCE_DIR", "PREVIEW_CONFIG_FILE", "DEFAULT_WEIGHTS", "DEFAULT_SEED",
    "DEFAULT_SIZES", "BACKGROUND", "HEADER_BACKGROUND", "TEXT", "MUTED", "PLACEHOLDER", "FAILED", "FINAL",
]
