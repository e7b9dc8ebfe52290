"""Running a preview: every checkpoint × weight × prompt drawn by the host's txt2img with one seed.

A run records each cell in the manifest as soon as it is drawn (``preview.cells``), so an interrupted run resumes
where it stopped; a cell is reused only for the same checkpoint file (name, size, modification time), prompt,
weight and settings. Then the labelled grids are (re)built (``preview.grid``). Runs inside the WebUI process:
standard library, Pillow, numpy.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from lib_trainer.common.files import short_hash
from lib_trainer.common.i18n import tr
from lib_trainer.hosts.base import Host, HostError, HostInterrupted, LoraSpec, Txt2ImgRequest
from lib_trainer.preview.cells import (MANIFEST_FORMAT, CheckpointRef, PreviewBusy, PreviewCell, PreviewError,
                                       checkpoint_identity,
                                       load_manifest, lora_cell, manifest_path, record_matches, reference_cell,
                                       resolve_checkpoints, save_png, version_lock, write_manifest)
from lib_trainer.preview.config import (PreviewConfig, apply_trigger, load_config, trained_base_model,
                                        version_trigger)
from lib_trainer.preview.grid import GridFiles, write_grids
from lib_trainer.projects import CheckpointFile, now_iso, Version

ProgressCallback = Callable[[int, int, PreviewCell], None]
PlanCallback = Callable[[int, int], None]


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


def resolve_base_model(version: Version, config: PreviewConfig, host: Host, warnings: List[str]) -> Optional[str]:
    wanted = config.base_model or trained_base_model(version)
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
    planned: Optional[PlanCallback] = None,
    font_path: Optional[str] = None,
    restart: bool = False,
    build_grid: bool = True,
) -> PreviewResult:
    """Draw the cells of the version's preview that are not drawn yet, then (re)build its grids.

    ``config`` defaults to the version's stored preview config. ``checkpoints`` limits the run to some
    checkpoints ("preview this checkpoint"); the grids still show every checkpoint (undrawn cells as
    placeholders). ``stop`` is checked between cells and passed to host.txt2img; ``progress(done, total, cell)``
    is called after each cell drawn (``done`` counts the cells reused from earlier runs too), ``planned(done, total)``
    once before the first cell is drawn. ``restart`` starts
    a new manifest (and a new seed when the seed is -1). Raises PreviewBusy when a preview of the version runs.
    """
    lock = version_lock(version)
    if not lock.acquire(blocking=False):
        raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
    try:
        return _run(version, host, config, checkpoints, stop, progress, planned, font_path, restart, build_grid)
    finally:
        lock.release()


def _run(version: Version, host: Host, config: Optional[PreviewConfig], wanted: Optional[Iterable[CheckpointRef]],
         stop: Optional[threading.Event], progress: Optional[ProgressCallback], planned: Optional[PlanCallback],
         font_path: Optional[str], restart: bool, build_grid: bool) -> PreviewResult:
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
    if planned is not None:
        planned(done, len(cells))

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
