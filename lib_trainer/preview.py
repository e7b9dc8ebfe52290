"""Preview grids: every checkpoint × weight × prompt drawn by the host's txt2img with one seed, and the hint
which checkpoint to keep.

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
import functools
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from lib_trainer.fsutil import atomic_write_json, read_json, safe_file_stem, short_hash
from lib_trainer.hosts.base import Host, HostError, HostInterrupted, LoraSpec, Txt2ImgRequest
from lib_trainer.i18n import tr
from lib_trainer.projects import CheckpointFile, Version, now_iso, read_safetensors_metadata

PREVIEW_CONFIG_FILE = "preview.json"
MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"
MANIFEST_FORMAT = 1
DEFAULT_WEIGHTS = (0.4, 0.6, 0.8, 1.0)
DEFAULT_SEED = 1234
DEFAULT_SIZES = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024}
PAGE_ROWS = 10  # rows of one grid page
GRID_CELL_MAX = 512  # cells larger than this are scaled down in grids (the cell files keep their size)
FULL_GRID_MAX_PIXELS = 40_000_000  # the one-piece grid shrinks its cells further to stay below this
TIE_TOLERANCE = 0.01
GRID_INFO_KEY = "train_tools"  # the PNG text chunk of a grid holding its JSON description  # scores within 1 % of the lowest count as a tie (the earlier checkpoint wins)

ProgressCallback = Callable[[int, int, "PreviewCell"], None]
CheckpointRef = Union[CheckpointFile, str, os.PathLike]


class PreviewError(Exception):
    """A user-facing problem with a preview; the message says what to do."""


class PreviewBusy(PreviewError):
    """A preview of this version is already running."""


# ---- config ------------------------------------------------------------------------------------------------------

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


def manifest_path(version: Version) -> Path:
    return version.previews_dir / MANIFEST_FILE


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


# ---- cells and the manifest -------------------------------------------------------------------------------------

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


def load_manifest(version: Version) -> Optional[Dict[str, Any]]:
    """The version's manifest; None when there is none or it is unreadable (then every cell is drawn again)."""
    try:
        data = read_json(manifest_path(version), None)
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("cells"), dict):
        return None
    return data


def _record_matches(record: Optional[Dict[str, Any]], cell: PreviewCell, previews_dir: Path) -> bool:
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


# ---- running ------------------------------------------------------------------------------------------------------

@dataclass
class CellFailure:
    key: str
    message: str


@dataclass
class GridFiles:
    prompt_index: int
    prompt: str
    path: Path  # the whole grid
    pages: List[Path]  # the same rows split into pages of PAGE_ROWS (empty when one page holds them all)


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


_version_locks: Dict[str, threading.Lock] = {}
_version_locks_guard = threading.Lock()


def _version_lock(version: Version) -> threading.Lock:
    with _version_locks_guard:
        return _version_locks.setdefault(str(version.path), threading.Lock())


def is_running(version: Version) -> bool:
    return _version_lock(version).locked()


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


def _replace_into(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file next to ``path`` and move it over ``path``: readers never see a half-written file.

    Unlike fsutil.atomic_save there is no fsync: everything written here (cell pictures, grids, the manifest) can
    be drawn again, and a flush per cell costs more than the preview's own work on a busy disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem[:40]}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_manifest(path: Path, manifest: Dict[str, Any]) -> None:
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"))  # compact: the C encoder, no indent
    _replace_into(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_png(path: Path, image: Image.Image, parameters: str, extra: Optional[Dict[str, str]] = None) -> None:
    """``image`` as a PNG (replaced atomically) with the WebUI's "parameters" text chunk and extra chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    _replace_into(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info, compress_level=4))


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
    lock = _version_lock(version)
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
    pending = [c for c in cells if not _record_matches(records.get(c.key), c, previews)]
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
        grids = _build_grids(version, manifest, font_path)
        grid_s = time.perf_counter() - t0
    return PreviewResult(seed=seed, total=len(cells), drawn=done - reused, reused=reused, failed=failed,
                         interrupted=interrupted, grids=grids, manifest_path=path, warnings=warnings,
                         elapsed_s=time.perf_counter() - started, txt2img_s=txt2img_s, grid_s=grid_s)


# ---- reading what was drawn -------------------------------------------------------------------------------------

def _valid_record(manifest: Dict[str, Any], cell: PreviewCell, previews: Path) -> Optional[Dict[str, Any]]:
    record = manifest["cells"].get(cell.key)
    if _record_matches(record, cell, previews) or _record_failed(record, cell):
        return record
    return None


def checkpoint_label(ckpt: Union[CheckpointFile, Dict[str, Any]], name: str = "") -> List[str]:
    """The row label of a checkpoint: "epoch N · step S", plus a "final" line for the last one."""
    get = ckpt.get if isinstance(ckpt, dict) else lambda k: getattr(ckpt, k)
    epoch, step = get("epoch"), get("step")
    if epoch is not None and step is not None:
        lines = [tr("epoch {epoch} · step {step}", epoch=epoch, step=step)]
    elif epoch is not None:
        lines = [tr("epoch {epoch}", epoch=epoch)]
    else:
        lines = [name or (ckpt.name if isinstance(ckpt, CheckpointFile) else "?")]
    if get("final"):
        lines.append(tr("final"))
    return lines


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
            if _record_matches(manifest["cells"].get(cell.key), cell, previews):
                items.append(GalleryItem(previews / cell.file, tr("prompt {n} · no LoRA", n=i + 1), i, None))
        galleries.append(CheckpointGallery(None, tr("no LoRA"), None, items))
    for ckpt in version.checkpoints():
        items = []
        for i, prompt in enumerate(prompts):
            for w in weights:
                cell = lora_cell(ckpt, i, prompt, w)
                if _record_matches(manifest["cells"].get(cell.key), cell, previews):
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
        if _record_matches(manifest["cells"].get(cell.key), cell, version.previews_dir):
            distance = abs(w - weight)
            if best is None or distance < best[0]:
                best = (distance, version.previews_dir / cell.file)
    return best[1] if best else None


def grid_files(version: Version) -> List[GridFiles]:
    """The grids the last build wrote (those still on disk)."""
    manifest = load_manifest(version)
    found = []
    for entry in (manifest or {}).get("grids", []):
        path = version.previews_dir / entry["file"]
        if path.is_file():
            found.append(GridFiles(entry["prompt_index"], entry["prompt"], path,
                                   [version.previews_dir / p for p in entry.get("pages", [])]))
    return found


# ---- grids --------------------------------------------------------------------------------------------------------

def settings_line(settings: Dict[str, Any], seed: int) -> str:
    return tr("seed {seed} · {sampler} · {steps} steps · CFG {cfg} · {width}×{height} · clip skip {clip_skip}",
              seed=seed, sampler=settings.get("sampler"), steps=settings.get("steps"),
              cfg=format(float(settings.get("cfg_scale", 0)), "g"), width=settings.get("width"),
              height=settings.get("height"), clip_skip=settings.get("clip_skip"))


def webui_parameters(prompt: str, settings: Dict[str, Any], seed: int) -> str:
    """The WebUI's infotext for the grid's settings (what "PNG Info" shows and "Send to txt2img" reads)."""
    lines = [prompt]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    params = [f"Steps: {settings.get('steps')}", f"Sampler: {settings.get('sampler')}",
              f"CFG scale: {format(float(settings.get('cfg_scale', 0)), 'g')}", f"Seed: {seed}",
              f"Size: {settings.get('width')}x{settings.get('height')}"]
    if int(settings.get("clip_skip") or 1) > 1:
        params.append(f"Clip skip: {settings['clip_skip']}")
    lines.append(", ".join(params))
    return "\n".join(lines)


def build_grids(version: Version, *, font_path: Optional[str] = None, page_rows: int = PAGE_ROWS) -> List[GridFiles]:
    """One labelled grid per prompt of the manifest: rows = the version's checkpoints, columns = weights (+ the
    reference), cells not drawn or failed as labelled placeholders; tall grids also split into pages of
    ``page_rows`` rows. Raises PreviewBusy while a preview of the version runs (it rebuilds them at its end)."""
    lock = _version_lock(version)
    if not lock.acquire(blocking=False):
        raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
    try:
        manifest = load_manifest(version)
        return _build_grids(version, manifest, font_path, page_rows) if manifest is not None else []
    finally:
        lock.release()


def _build_grids(version: Version, manifest: Dict[str, Any], font_path: Optional[str],
                 page_rows: int = PAGE_ROWS) -> List[GridFiles]:
    previews = version.previews_dir
    checkpoints = version.checkpoints()
    weights = [float(w) for w in manifest.get("weights", [])]
    reference = bool(manifest.get("reference", True))
    settings = manifest.get("settings", {})
    seed = int(manifest["seed"])
    columns = [tr("weight {weight}", weight=weight_text(w)) for w in weights] + ([tr("no LoRA")] if reference else [])
    cell_size = _grid_cell_size(manifest, previews, settings)
    results = []
    for p_index, prompt in enumerate(manifest.get("prompts", [])):
        ref_cell = None
        if reference:
            ref_cell = _grid_cell(manifest, reference_cell(p_index, prompt), previews)
        rows, labels = [], []
        for ckpt in checkpoints:
            row = [_grid_cell(manifest, lora_cell(ckpt, p_index, prompt, w), previews) for w in weights]
            if ref_cell is not None:
                row.append(ref_cell)
            rows.append(row)
            labels.append(checkpoint_label(ckpt))
        header = [tr("Prompt {n}: {prompt}", n=p_index + 1, prompt=prompt or tr("(empty)"))]
        if settings.get("negative_prompt"):
            header.append(tr("Negative prompt: {negative}", negative=settings["negative_prompt"]))
        header.append(settings_line(settings, seed))
        header.append(tr("{version} · {count} checkpoints", version=version.key, count=len(checkpoints)))
        parameters = webui_parameters(prompt, settings, seed)
        base_info = {"version": version.key, "prompt_index": p_index, "prompt": prompt, "seed": seed,
                     "settings": settings, "weights": weights, "reference": reference}
        number = prompt_number(p_index)
        full_name = f"grid-{number}.png"
        scale = _full_grid_scale(cell_size, len(rows), len(columns))
        spec = GridSpec(header=header, columns=columns, rows=labels, cells=rows,
                        cell_size=(max(8, int(cell_size[0] * scale)), max(8, int(cell_size[1] * scale))),
                        final_rows={i for i, c in enumerate(checkpoints) if c.final})
        info = dict(base_info, rows=[c.name for c in checkpoints], page=None, pages=None)
        _write_grid(previews / full_name, spec, parameters, info, font_path)
        pages: List[str] = []
        if len(rows) > page_rows:
            count = math.ceil(len(rows) / page_rows)
            for k in range(count):
                lo, hi = k * page_rows, min(len(rows), (k + 1) * page_rows)
                page_header = header + [tr("page {page} of {pages}", page=k + 1, pages=count)]
                page_spec = GridSpec(header=page_header, columns=columns, rows=labels[lo:hi], cells=rows[lo:hi],
                                     cell_size=cell_size,
                                     final_rows={i - lo for i in spec.final_rows if lo <= i < hi})
                page_name = f"grid-{number}-page{k + 1}.png"
                page_info = dict(base_info, rows=[c.name for c in checkpoints[lo:hi]], page=k + 1, pages=count)
                _write_grid(previews / page_name, page_spec, parameters, page_info, font_path)
                pages.append(page_name)
        _remove_stale_pages(previews, number, len(pages))
        results.append({"prompt_index": p_index, "prompt": prompt, "file": full_name, "pages": pages})
    for stale in previews.glob("grid-*.png"):
        match = re.fullmatch(r"grid-(\d+)(?:-page\d+)?\.png", stale.name)
        if match and int(match.group(1)) > len(manifest.get("prompts", [])):
            stale.unlink(missing_ok=True)
    manifest["grids"] = results
    write_manifest(manifest_path(version), manifest)
    return [GridFiles(r["prompt_index"], r["prompt"], previews / r["file"], [previews / p for p in r["pages"]])
            for r in results]


def _remove_stale_pages(previews: Path, number: str, keep: int) -> None:
    for page in previews.glob(f"grid-{number}-page*.png"):
        match = re.fullmatch(rf"grid-{number}-page(\d+)\.png", page.name)
        if match and int(match.group(1)) > keep:
            page.unlink(missing_ok=True)


def _grid_cell(manifest: Dict[str, Any], cell: PreviewCell, previews: Path) -> "GridCell":
    record = _valid_record(manifest, cell, previews)
    if record is None:
        return GridCell(status="missing", message=tr("not drawn yet"))
    if record.get("status") == "failed":
        return GridCell(status="failed", message=tr("failed: {error}", error=record.get("error", "")))
    return GridCell(image=previews / cell.file)


def _grid_cell_size(manifest: Dict[str, Any], previews: Path, settings: Dict[str, Any]) -> Tuple[int, int]:
    size = None
    for record in manifest.get("cells", {}).values():
        if record.get("status") == "ok" and (previews / record.get("file", "")).is_file():
            try:
                with Image.open(previews / record["file"]) as im:
                    size = im.size
                break
            except OSError:
                continue
    if size is None:
        size = (int(settings.get("width") or 512), int(settings.get("height") or 512))
    scale = min(1.0, GRID_CELL_MAX / max(size))
    return max(8, int(size[0] * scale)), max(8, int(size[1] * scale))


def _full_grid_scale(cell_size: Tuple[int, int], rows: int, cols: int) -> float:
    pixels = cell_size[0] * cell_size[1] * max(1, rows) * max(1, cols)
    return min(1.0, math.sqrt(FULL_GRID_MAX_PIXELS / pixels))


def _write_grid(path: Path, spec: "GridSpec", parameters: str, info: Dict[str, Any], font_path: Optional[str]) -> None:
    image, layout = render_grid(spec, font_path=font_path)
    info = dict(info, layout=dataclasses.asdict(layout))
    save_png(path, image, parameters, {GRID_INFO_KEY: json.dumps(info, ensure_ascii=False)})


def read_grid_info(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The JSON a grid PNG carries: version, prompt, seed, settings, weights, row checkpoint names, page, and its
    layout (so a click on the picture maps to a cell: see GridLayout.cell_at)."""
    with Image.open(path) as im:
        text = im.text.get(GRID_INFO_KEY) if hasattr(im, "text") else None
    return json.loads(text) if text else {}


@dataclass
class GridCell:
    image: Union[Path, Image.Image, None] = None
    status: str = "ok"  # "ok" | "missing" | "failed"
    message: str = ""


@dataclass
class GridSpec:
    header: List[str]  # lines of text above the grid (each wrapped to the grid's width)
    columns: List[str]  # column labels
    rows: List[List[str]]  # each row's label lines
    cells: List[List[GridCell]]  # rows × columns
    cell_size: Tuple[int, int]
    final_rows: set = field(default_factory=set)  # rows marked as the final checkpoint


@dataclass
class GridLayout:
    width: int
    height: int
    header_height: int
    column_header_height: int
    label_width: int
    row_height: int
    cell_size: Tuple[int, int]
    gap: int
    font_size: int
    rows: int
    columns: int

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GridLayout":
        values = dict(data)
        values["cell_size"] = tuple(values["cell_size"])
        return cls(**values)

    def cell_at(self, x: int, y: int) -> Optional[Tuple[int, int]]:
        """(row, column) of the cell image under a point of the grid, None outside every cell."""
        cw, _ = self.cell_size
        col = (x - self.label_width) // (cw + self.gap) if x >= self.label_width else -1
        row = (y - self.header_height - self.column_header_height) // (self.row_height + self.gap)
        if not (0 <= col < self.columns and 0 <= row < self.rows):
            return None
        x0, y0, x1, y1 = self.cell_box(row, col)
        return (row, col) if x0 <= x < x1 and y0 <= y < y1 else None

    def cell_box(self, row: int, col: int) -> Tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell's image in the grid."""
        cw, ch = self.cell_size
        x0 = self.label_width + col * (cw + self.gap)
        y0 = self.header_height + self.column_header_height + row * (self.row_height + self.gap)
        y0 += (self.row_height - ch) // 2
        return x0, y0, x0 + cw, y0 + ch


BACKGROUND = (255, 255, 255)
HEADER_BACKGROUND = (240, 241, 244)
TEXT = (20, 20, 24)
MUTED = (110, 110, 120)
PLACEHOLDER = (222, 223, 228)
FAILED = (250, 224, 224)
FINAL = (0, 110, 200)


def render_grid(spec: GridSpec, font_path: Optional[str] = None) -> Tuple[Image.Image, GridLayout]:
    """Draw a labelled grid: header text, column labels, row labels and the cells (images or placeholders)."""
    cw, ch = spec.cell_size
    n_rows, n_cols = len(spec.cells), len(spec.columns)
    font_size = max(12, min(40, round(cw / 20)))
    text = TextRenderer(font_size, font_path)
    pad = max(4, font_size // 2)
    gap = max(2, font_size // 6)
    line_h = text.line_height

    label_limit = max(cw, 10 * font_size)
    row_lines = [[w for line in label for w in text.wrap(line, label_limit)] for label in spec.rows]
    widest = max([text.width(line) for lines in row_lines for line in lines] or [0])
    label_w = min(widest, label_limit) + 2 * pad
    row_h = max([ch] + [len(lines) * line_h + pad for lines in row_lines])
    col_lines = [text.wrap(label, cw) for label in spec.columns]
    col_h = max([1] + [len(lines) for lines in col_lines]) * line_h + 2 * pad
    width = max(label_w + n_cols * (cw + gap) - gap + pad, 32 * font_size)
    header_lines: List[str] = []
    for line in spec.header:
        header_lines.extend(text.wrap(line, width - 2 * pad))
    if len(header_lines) > 24:
        header_lines = header_lines[:23] + ["…"]
    header_h = len(header_lines) * line_h + 2 * pad
    height = header_h + col_h + n_rows * (row_h + gap) - (gap if n_rows else 0) + pad
    layout = GridLayout(width=width, height=height, header_height=header_h, column_header_height=col_h,
                        label_width=label_w, row_height=row_h, cell_size=(cw, ch), gap=gap, font_size=font_size,
                        rows=n_rows, columns=n_cols)

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, header_h - 1), fill=HEADER_BACKGROUND)
    for i, line in enumerate(header_lines):
        text.draw(draw, (pad, pad + i * line_h), line, TEXT if i == 0 else MUTED)
    for c, lines in enumerate(col_lines):
        x0 = label_w + c * (cw + gap)
        for i, line in enumerate(lines):
            x = x0 + max(0, (cw - text.width(line)) // 2)
            text.draw(draw, (x, header_h + pad + i * line_h), line, TEXT)
    for r in range(n_rows):
        y_row = header_h + col_h + r * (row_h + gap)
        lines = row_lines[r] if r < len(row_lines) else []
        y = y_row + max(0, (row_h - len(lines) * line_h) // 2)
        final = r in spec.final_rows
        if final:
            draw.rectangle((0, y_row, max(2, pad // 2) - 1, y_row + row_h - 1), fill=FINAL)
        for i, line in enumerate(lines):
            text.draw(draw, (pad, y + i * line_h), line, FINAL if final and i == len(lines) - 1 else TEXT)
        for c in range(n_cols):
            cell = spec.cells[r][c] if c < len(spec.cells[r]) else GridCell(status="missing")
            box = layout.cell_box(r, c)
            _draw_cell(image, draw, text, cell, box, pad)
    return image, layout


def _draw_cell(image: Image.Image, draw: ImageDraw.ImageDraw, text: "TextRenderer", cell: GridCell,
               box: Tuple[int, int, int, int], pad: int) -> None:
    x0, y0, x1, y1 = box
    size = (x1 - x0, y1 - y0)
    if cell.status == "ok" and cell.image is not None:
        try:
            picture = cell.image if isinstance(cell.image, Image.Image) else Image.open(cell.image)
            try:
                picture = picture.convert("RGB")
                if picture.size != size:
                    picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
                image.paste(picture, (x0, y0))
                return
            finally:
                if not isinstance(cell.image, Image.Image):
                    picture.close()
        except OSError as exc:
            cell = GridCell(status="failed", message=tr("failed: {error}", error=str(exc)))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=FAILED if cell.status == "failed" else PLACEHOLDER)
    inner = max(8, size[0] - pad)
    lines = text.wrap(cell.message or tr("not drawn yet"), inner)
    fit = max(1, (size[1] - pad) // text.line_height)
    if len(lines) > fit:
        lines = lines[: fit - 1] + [lines[fit - 1][: max(1, len(lines[fit - 1]) - 1)] + "…"]
    y = y0 + max(0, (size[1] - len(lines) * text.line_height) // 2)
    for i, line in enumerate(lines):
        x = x0 + max(0, (size[0] - text.width(line)) // 2)
        text.draw(draw, (x, y + i * text.line_height), line, MUTED)


# ---- text that never crashes on a glyph ------------------------------------------------------------------------

LATIN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf", "C:/Windows/Fonts/segoeui.ttf", "C:/Windows/Fonts/arial.ttf",
    "/System/Library/Fonts/Helvetica.ttc", "/Library/Fonts/Arial.ttf",
)
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc", "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "C:/Windows/Fonts/msyh.ttc", "C:/Windows/Fonts/msyh.ttf", "C:/Windows/Fonts/simhei.ttf",
    "C:/Windows/Fonts/YuGothM.ttc", "C:/Windows/Fonts/meiryo.ttc", "C:/Windows/Fonts/malgun.ttf",
    "/System/Library/Fonts/PingFang.ttc", "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc", "/Library/Fonts/Arial Unicode.ttf",
)


@functools.lru_cache(maxsize=1)
def _font_candidates() -> Tuple[str, ...]:
    found = [p for p in LATIN_FONTS + CJK_FONTS if os.path.isfile(p)]
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")):
        if os.path.isdir(root):
            for pattern in ("**/*CJK*.tt[cf]", "**/*CJK*.otf", "**/wqy*.tt[cf]", "**/*DroidSansFallback*.ttf"):
                found.extend(str(p) for p in sorted(Path(root).glob(pattern)))
    return tuple(dict.fromkeys(found))


@functools.lru_cache(maxsize=64)
def _truetype(path: str, size: int) -> Optional[ImageFont.FreeTypeFont]:
    try:
        # the basic layout is many times faster than raqm and enough for labels (no complex-script shaping)
        return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
    except (OSError, ValueError):
        return None


class TextRenderer:
    """Text in one size, each character drawn with the first font that has a glyph for it (a given font, a Latin
    font, CJK fonts found on the system), PIL's built-in font as the last resort (unknown characters become "?")."""

    _PROBE = "\U0010fffd"  # a private-use code point: every font draws it with its "missing glyph" box

    def __init__(self, size: int, font_path: Optional[str] = None):
        self.size = size
        paths = ([font_path] if font_path else []) + list(_font_candidates())
        self._paths = list(dict.fromkeys(paths))
        self._loaded: Dict[int, Optional[ImageFont.FreeTypeFont]] = {}
        self._missing_box: Dict[int, bytes] = {}
        self._choice: Dict[str, int] = {}
        self._lengths: Dict[Tuple[int, str], float] = {}
        self.default = ImageFont.load_default()
        primary = self._font(0) if self._paths else None
        self._primary = 0 if primary is not None else -1
        if primary is None:
            for i in range(1, len(self._paths)):
                if self._font(i) is not None:
                    self._primary = i
                    break
        if self._primary >= 0:
            ascent, descent = self._font(self._primary).getmetrics()
            self.ascent = ascent
            self.line_height = int(math.ceil((ascent + descent) * 1.2))
        else:
            self.ascent = 0
            self.line_height = 14

    def _font(self, index: int) -> Optional[ImageFont.FreeTypeFont]:
        if index not in self._loaded:
            self._loaded[index] = _truetype(self._paths[index], self.size)
        return self._loaded[index]

    def _render(self, font: ImageFont.FreeTypeFont, ch: str) -> bytes:
        canvas = Image.new("L", (self.size * 3, self.size * 3), 0)
        ImageDraw.Draw(canvas).text((self.size, self.size), ch, font=font, fill=255)
        return canvas.tobytes()

    def _has_glyph(self, index: int, ch: str) -> bool:
        font = self._font(index)
        if font is None:
            return False
        try:
            if index not in self._missing_box:
                self._missing_box[index] = self._render(font, self._PROBE)
            return self._render(font, ch) != self._missing_box[index]
        except Exception:  # a font that cannot draw the character at all
            return False

    def font_index(self, ch: str) -> int:
        """Index of the font drawing ``ch`` (-1: PIL's built-in font)."""
        if ch in self._choice:
            return self._choice[ch]
        choice = self._primary
        if not ch.isspace() and ch.isprintable():
            for i in range(len(self._paths)):
                if self._has_glyph(i, ch):
                    choice = i
                    break
        self._choice[ch] = choice
        return choice

    def runs(self, line: str) -> List[Tuple[int, str]]:
        result: List[Tuple[int, str]] = []
        for ch in line:
            if ch in "\r\n\t":
                ch = " "
            index = self.font_index(ch)
            if index < 0:
                ch = ch if ord(ch) < 256 and ch.isprintable() else "?"
            if result and result[-1][0] == index:
                result[-1] = (index, result[-1][1] + ch)
            else:
                result.append((index, ch))
        return result

    def _length(self, index: int, run: str) -> float:
        key = (index, run)
        if key not in self._lengths:
            font = self._font(index) if index >= 0 else self.default
            try:
                self._lengths[key] = font.getlength(run)
            except Exception:
                left, _, right, _ = font.getbbox(run)
                self._lengths[key] = right - left
        return self._lengths[key]

    def width(self, line: str) -> int:
        return int(math.ceil(sum(self._length(i, run) for i, run in self.runs(line))))

    def draw(self, draw: ImageDraw.ImageDraw, xy: Tuple[int, int], line: str, fill: Tuple[int, int, int]) -> None:
        x, y = xy
        for index, run in self.runs(line):
            if index >= 0:
                draw.text((x, y + self.ascent), run, font=self._font(index), fill=fill, anchor="ls")
            else:
                draw.text((x, y), run, font=self.default, fill=fill)
            x += self._length(index, run)

    def wrap(self, text: str, max_width: int) -> List[str]:
        """``text`` broken into lines of at most ``max_width`` pixels: at spaces, or anywhere in a word (CJK text
        has no spaces) that is wider than a line."""
        lines: List[str] = []
        for paragraph in str(text).split("\n"):
            line = ""
            for token in re.findall(r"\s*\S+", paragraph) or [""]:
                candidate = line + token if line else token.lstrip()
                if self.width(candidate) <= max_width:
                    line = candidate
                    continue
                if line:
                    lines.append(line)
                candidate = token.lstrip()
                while len(candidate) > 1 and self.width(candidate) > max_width:
                    cut = self._fitting_prefix(candidate, max_width)
                    lines.append(candidate[:cut])
                    candidate = candidate[cut:]
                line = candidate
            lines.append(line)
        return lines

    def _fitting_prefix(self, text: str, max_width: int) -> int:
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.width(text[:mid]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        return lo


# ---- recommendation --------------------------------------------------------------------------------------------

class CheckpointScore(NamedTuple):
    name: str
    epoch: Optional[int]
    step: Optional[int]
    eval_loss: float
    eval_set: str  # "held_out" | "train_subset"


@dataclass
class Recommendation:
    best: Optional[str]  # checkpoint name, None when no score was recorded
    scores: List[CheckpointScore]  # every scored checkpoint still on disk, in training order
    note: str  # a translated sentence: what the hint is based on, and that it is a hint, not a verdict
    eval_set: Optional[str] = None  # the set the recommendation compares

    @property
    def best_score(self) -> Optional[CheckpointScore]:
        return next((s for s in self.scores if s.name == self.best), None)


def checkpoint_scores(version: Version) -> List[CheckpointScore]:
    """The eval score of each checkpoint file still on disk (from the ``checkpoint`` events; the last event of a
    file wins when a resumed run wrote it again), in training order."""
    present = {c.name: c for c in version.checkpoints()}
    latest: Dict[str, Dict[str, Any]] = {}
    for event in version.read_events():
        if event.get("event") != "checkpoint" or not event.get("path"):
            continue
        loss = event.get("eval_loss")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            continue
        name = Path(str(event["path"])).stem
        if name in present:
            latest[name] = event
    scores = []
    for name, event in latest.items():
        ckpt = present[name]
        epoch = event.get("epoch", ckpt.epoch)
        step = event.get("step", ckpt.step)
        # events written before the trainer knew held-out sets scored training pictures
        scores.append(CheckpointScore(name, epoch, step, float(event["eval_loss"]),
                                      str(event.get("eval_set") or "train_subset")))
    order = {c.name: i for i, c in enumerate(present.values())}
    scores.sort(key=lambda s: (s.step if s.step is not None else -1, order[s.name]))
    return scores


def recommend(version: Version, tolerance: float = TIE_TOLERANCE) -> Recommendation:
    """The checkpoint with the lowest held-out score (the earlier one when scores are within ``tolerance``)."""
    scores = checkpoint_scores(version)
    if not scores:
        return Recommendation(None, [], tr(
            "No checkpoint scores were recorded (they are computed while training). Compare the preview grid "
            "instead."))
    eval_set = "held_out" if any(s.eval_set == "held_out" for s in scores) else "train_subset"
    comparable = [s for s in scores if s.eval_set == eval_set]
    lowest = min(s.eval_loss for s in comparable)
    limit = lowest + abs(lowest) * tolerance
    best = next(s for s in comparable if s.eval_loss <= limit)
    where = tr("epoch {epoch}", epoch=best.epoch) if best.epoch is not None else best.name
    if eval_set == "held_out":
        note = tr("Suggested: {name} ({where}), the lowest denoising score on pictures held out of training. This "
                  "is a hint, not a verdict: check the preview grid and trust your eyes.", name=best.name, where=where)
    else:
        note = tr("Suggested: {name} ({where}), the lowest denoising score on a fixed set of training pictures "
                  "(too few pictures to hold some out, so the score cannot see overfitting). This is a hint, not a "
                  "verdict: check the preview grid and trust your eyes.", name=best.name, where=where)
    return Recommendation(best.name, scores, note, eval_set)


def score_chart(version: Version, size: Tuple[int, int] = (640, 320), font_path: Optional[str] = None,
                recommendation: Optional[Recommendation] = None) -> Image.Image:
    """A line chart of the score per checkpoint (x: training step, labelled by epoch) with the recommended one
    ringed; a message in the chart when there is nothing to plot."""
    rec = recommendation if recommendation is not None else recommend(version)
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    text = TextRenderer(max(11, min(18, height // 22)), font_path)
    pad = text.line_height + 8
    points = [s for s in rec.scores if rec.eval_set is None or s.eval_set == rec.eval_set]
    if not points:
        for i, line in enumerate(text.wrap(rec.note, width - 20)):
            text.draw(draw, (10, 10 + i * text.line_height), line, MUTED)
        return image
    left, right, top, bottom = pad * 3, width - pad, pad + text.line_height, height - pad * 2
    xs = [float(s.step if s.step is not None else i) for i, s in enumerate(points)]
    ys = [s.eval_loss for s in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    margin = (y_hi - y_lo) * 0.1 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def at(x: float, y: float) -> Tuple[int, int]:
        return (int(left + (x - x_lo) / (x_hi - x_lo) * (right - left)),
                int(bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)))

    title = tr("Checkpoint score (lower is better)") if rec.eval_set != "held_out" else \
        tr("Held-out score (lower is better)")
    text.draw(draw, (left, 6), title, TEXT)
    draw.line((left, top, left, bottom, right, bottom), fill=MUTED, width=1)
    for y in (y_lo + margin, y_hi - margin):
        px, py = at(x_lo, y)
        label = f"{y:.4g}"
        text.draw(draw, (max(2, left - 6 - text.width(label)), py - text.line_height // 2), label, MUTED)
        draw.line((left - 3, py, left, py), fill=MUTED)
    coords = [at(x, y) for x, y in zip(xs, ys)]
    if len(coords) > 1:
        draw.line(coords, fill=(60, 120, 200), width=2)
    for score, (px, py) in zip(points, coords):
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(60, 120, 200))
        label = str(score.epoch) if score.epoch is not None else "?"
        text.draw(draw, (px - text.width(label) // 2, bottom + 4), label, MUTED)
        if score.name == rec.best:
            r = 8
            draw.ellipse((px - r, py - r, px + r, py + r), outline=(220, 60, 40), width=2)
            mark = tr("suggested")
            text.draw(draw, (min(px + r + 2, width - text.width(mark) - 2), py - r - text.line_height), mark,
                      (220, 60, 40))
    axis = tr("epoch")
    text.draw(draw, (right - text.width(axis), bottom + 4 + text.line_height), axis, MUTED)
    return image


__all__ = [
    "PreviewConfig", "PreviewError", "PreviewBusy", "PreviewCell", "PreviewResult", "CellFailure", "GridFiles",
    "GridCell", "GridSpec", "GridLayout", "GalleryItem", "CheckpointGallery", "CheckpointScore", "Recommendation",
    "TextRenderer", "read_grid_info", "run_preview", "plan_cells", "build_grids", "render_grid", "load_config", "save_config",
    "default_config", "load_manifest", "checkpoint_galleries", "cell_image", "grid_files", "apply_trigger",
    "version_trigger", "version_arch", "should_run_after_training", "is_running", "resolve_checkpoints",
    "recommend", "checkpoint_scores", "score_chart", "checkpoint_label", "save_png", "config_path", "manifest_path",
]
