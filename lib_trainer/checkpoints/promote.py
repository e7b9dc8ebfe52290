"""Picking the checkpoint to keep: "Use this checkpoint" and "Keep only this one".

``use_checkpoint`` copies a checkpoint into the host's Lora folder as ``<project>/<name>.safetensors`` (its
``ss_output_name`` set to the new name, so the WebUI's alias cannot point at another file), with the card's preview
image ``<name>.png`` and the WebUI 1.10 user metadata ``<name>.json`` (description, sd version, activation text,
preferred weight, negative text, notes: what extensions-builtin/Lora's metadata editor writes). Nothing is ever
overwritten silently. ``keep_only`` moves the version's other checkpoints to the workspace trash (restorable).
Runs inside the WebUI process: standard library + Pillow.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from lib_trainer.checkpoints.recommend import checkpoint_scores
from lib_trainer.preview.cells import (checkpoint_dir_name, CheckpointRef, is_running, load_manifest, PreviewError,
                                       resolve_checkpoints, save_png, weight_text)
from lib_trainer.preview.config import apply_trigger, arch_from_metadata, load_config, version_trigger
from lib_trainer.preview.gallery import cell_image
from lib_trainer.preview.run import resolve_base_model
from lib_trainer.common.files import atomic_copy, atomic_save, atomic_write_text
from lib_trainer.hosts.base import PREVIEW_FOLDER, Host, HostError, LoraSpec, Txt2ImgRequest
from lib_trainer.common.i18n import tr
from lib_trainer.common.names import InvalidName, validate_name
from lib_trainer.common.safetensors_header import NotSafetensors, header_bytes, read_header, read_metadata
from lib_trainer.projects import Busy, CheckpointFile, now_iso, ProjectError, TrashEntry, Version, Workspace

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
DEFAULT_WEIGHT = 0.8


class PickError(ProjectError):
    """A user-facing problem with picking a checkpoint; the message says what to do."""


class NameTaken(PickError):
    """The chosen name is already used by a LoRA in the host's Lora folder."""

    def __init__(self, message: str, suggestion: str):
        super().__init__(message)
        self.suggestion = suggestion


@dataclass
class PickResult:
    name: str
    lora_path: Path
    preview_path: Optional[Path]  # None when no preview image could be had
    metadata_path: Path
    prompt: str  # "<lora:NAME:W>, trigger" — for the txt2img prompt
    sent: bool  # True when the host put the prompt into its txt2img box
    preview_source: str  # "preview" (a cell of the preview grid), "generated" or "none"
    warnings: List[str] = field(default_factory=list)


def _checkpoint(version: Version, checkpoint: CheckpointRef) -> CheckpointFile:
    try:
        return resolve_checkpoints(version, [checkpoint])[0]
    except PreviewError as exc:
        raise PickError(str(exc)) from None


def default_name(version: Version, ckpt: CheckpointFile) -> str:
    """The version's output name plus the checkpoint's epoch (and step, for a checkpoint saved mid-epoch)."""
    if ckpt.epoch is None:
        return ckpt.name
    suffix = f"-e{ckpt.epoch}"
    if "-step" in ckpt.name and ckpt.step is not None:
        suffix += f"-s{ckpt.step}"
    base = version.output_name[: max(1, 64 - len(suffix))].rstrip(" .")
    return base + suffix


def _clean_name(name: str) -> str:
    name = name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    name = validate_name(name, tr("LoRA name"))
    if any(c in name for c in "<>,"):
        raise InvalidName(tr("The LoRA name may not contain < > or a comma (they break <lora:…> in prompts)."))
    return name


def _existing_loras(lora_dir: Path) -> Dict[str, List[Path]]:
    """Every LoRA file under the Lora folder by lower-cased stem (the staging folder of previews excluded)."""
    found: Dict[str, List[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(lora_dir):
        dirnames[:] = [d for d in dirnames if d != PREVIEW_FOLDER and not d.startswith(".")]
        for filename in filenames:
            stem, ext = os.path.splitext(filename)
            if ext.lower() in LORA_SUFFIXES:
                found.setdefault(stem.casefold(), []).append(Path(dirpath) / filename)
    return found


def _suggest(name: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    n = 2
    while f"{name}-{n}".casefold() in taken:
        n += 1
    return f"{name}-{n}"


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def check_name(host: Host, project: str, name: str, overwrite: bool = False) -> Path:
    """The target path of ``name``; NameTaken when a LoRA of that name exists (anywhere in the Lora folder:
    ``<lora:NAME:w>`` resolves by file name, so a second file of the same name would be ambiguous). With
    ``overwrite`` only a file at the target itself (the same name in the project's folder) may be replaced."""
    name = _clean_name(name)
    lora_dir = Path(host.lora_dir())
    target = lora_dir / project / f"{name}.safetensors"
    existing = _existing_loras(lora_dir)
    found = existing.get(name.casefold(), [])
    if not found:
        return target
    suggestion = _suggest(name, existing)
    elsewhere = [p for p in found if not (_same_path(p.parent, target.parent) and p.suffix.lower() == ".safetensors")]
    if elsewhere:
        raise NameTaken(tr("Another LoRA named \"{name}\" exists at {path}; <lora:{name}:…> would not know which one "
                           "to use. Choose another name, for example \"{suggestion}\".", name=name,
                           path=str(elsewhere[0]), suggestion=suggestion), suggestion)
    if not overwrite:
        raise NameTaken(tr("A LoRA named \"{name}\" already exists ({path}). Choose another name, for example "
                           "\"{suggestion}\", or confirm replacing it.", name=name, path=str(found[0]),
                           suggestion=suggestion), suggestion)
    return found[0]  # keeps the spelling of the existing file on case-insensitive disks


def copy_with_metadata(src: Path, dst: Path, updates: Dict[str, str]) -> None:
    """Copy a .safetensors file (atomically) with some ``__metadata__`` entries changed; tensors are untouched."""
    try:
        header = read_header(src)
    except NotSafetensors:
        raise PickError(tr("{path} is not a valid .safetensors file.", path=str(src))) from None
    blob = header_bytes(header.entries, {**header.metadata, **{k: str(v) for k, v in updates.items()}})

    def write(tmp: Path) -> None:
        with open(src, "rb") as fh, open(tmp, "wb") as out:
            out.write(blob)
            fh.seek(header.data_offset)
            shutil.copyfileobj(fh, out, 1 << 20)

    atomic_save(dst, write)


def sd_version(meta: Dict[str, str]) -> str:
    """The Lora card's "sd version" (SD1 / SD2 / SDXL / Unknown) from a LoRA's metadata."""
    arch = arch_from_metadata(meta)
    return {"sd1": "SD1", "sd2": "SD2", "sd2-v": "SD2", "sdxl": "SDXL"}.get(arch or "", "Unknown")


def _trigger_text(version: Version, trigger_words: Union[str, Sequence[str], None]) -> str:
    if trigger_words is None:
        return version_trigger(version)
    if isinstance(trigger_words, str):
        return trigger_words.strip()
    return ", ".join(w.strip() for w in trigger_words if w and w.strip())


def lora_prompt_text(name: str, weight: float, trigger: str) -> str:
    tag = f"<lora:{name}:{weight_text(weight)}>"
    return f"{tag}, {trigger}" if trigger else tag


def use_checkpoint(version: Version, checkpoint: CheckpointRef, host: Host, *, name: Optional[str] = None,
                   weight: float = DEFAULT_WEIGHT, trigger_words: Union[str, Sequence[str], None] = None,
                   send_prompt: bool = False, overwrite: bool = False) -> PickResult:
    """Copy a checkpoint into the host's Lora folder as ``<project>/<name>.safetensors`` with a preview image and
    the Lora card's metadata, refresh the host's Lora list, and (``send_prompt``) put ``<lora:NAME:W>, trigger``
    into txt2img. ``name`` defaults to the version's output name plus the epoch. NameTaken when the name is used
    (``overwrite=True`` replaces a file of that name in the project's folder)."""
    ckpt = _checkpoint(version, checkpoint)
    name = _clean_name(name if name is not None else default_name(version, ckpt))
    target = check_name(host, version.project.name, name, overwrite=overwrite)
    name = target.stem
    trigger = _trigger_text(version, trigger_words)
    warnings: List[str] = []

    src_meta = read_metadata(ckpt.path)
    copy_with_metadata(ckpt.path, target, {"ss_output_name": name, "modelspec.title": name})

    preview_path: Optional[Path] = target.with_suffix(".png")
    source = "none"
    cell = cell_image(version, ckpt, weight)
    if cell is not None:
        atomic_copy(cell, preview_path)
        source = "preview"
    else:
        try:
            _generate_preview(version, ckpt, host, weight, preview_path)
            source = "generated"
        except HostError as exc:
            warnings.append(tr("No preview image: {error}", error=str(exc)))
            preview_path = None

    score = next((s for s in checkpoint_scores(version) if s.name == ckpt.name), None)
    notes = [tr("Trained with Train Tools: {version}, checkpoint {checkpoint}.", version=version.key,
                checkpoint=ckpt.name)]
    if score is not None:
        notes.append(tr("Score at this checkpoint: {score} ({set}).", score=f"{score.eval_loss:.6g}",
                        set=score.eval_set))
    if src_meta.get("ss_sd_model_name"):
        notes.append(tr("Base model: {model}.", model=src_meta["ss_sd_model_name"]))
    card = {
        "description": tr("{project} — epoch {epoch}, step {step}", project=version.project.name,
                          epoch=ckpt.epoch if ckpt.epoch is not None else "?",
                          step=ckpt.step if ckpt.step is not None else "?"),
        "sd version": sd_version(src_meta),
        "activation text": trigger,
        "preferred weight": float(weight),
        "negative text": "",
        "notes": "\n".join(notes),
    }
    metadata_path = target.with_suffix(".json")
    atomic_write_text(metadata_path, json.dumps(card, indent=4, ensure_ascii=False))
    host.refresh_loras()

    prompt = lora_prompt_text(name, weight, trigger)
    sent = bool(host.send_to_txt2img(prompt)) if send_prompt else False
    picks = [p for p in version.state().get("picks", []) if p.get("path") != str(target)]
    picks.append({"name": name, "checkpoint": ckpt.name, "path": str(target), "weight": float(weight),
                  "time": now_iso()})
    version.update(picks=picks)
    return PickResult(name=name, lora_path=target, preview_path=preview_path, metadata_path=metadata_path,
                      prompt=prompt, sent=sent, preview_source=source, warnings=warnings)


def _generate_preview(version: Version, ckpt: CheckpointFile, host: Host, weight: float, path: Path) -> None:
    """Draw the card's picture with the version's preview settings (first prompt, its seed) at ``weight``."""
    config = load_config(version, host)
    trigger = config.trigger if config.trigger is not None else version_trigger(version)
    seed = config.seed if config.seed >= 0 else 0
    manifest = load_manifest(version)
    if manifest is not None:
        seed = int(manifest.get("seed", seed))
    request = Txt2ImgRequest(
        prompt=apply_trigger(config.prompts[0] if config.prompts else "", trigger),
        negative_prompt=config.negative_prompt, seed=seed, steps=config.steps, cfg_scale=config.cfg_scale,
        width=config.width, height=config.height, sampler=config.sampler, clip_skip=config.clip_skip,
        checkpoint=resolve_base_model(version, config, host, []),
        loras=[LoraSpec(str(ckpt.path), float(weight))],
    )
    result = host.txt2img(request)
    save_png(path, result.image, result.infotext)


def keep_only(version: Version, checkpoint: CheckpointRef, workspace: Workspace, *,
              confirm: bool = False) -> Optional[TrashEntry]:
    """Move every other checkpoint of the version (with its resume-state folder and its preview images) to the
    workspace trash, restorable with ``workspace.restore(entry.id)``. ``confirm=True`` is required: the caller
    asks the person first. Returns the trash entry, None when there was nothing else to move."""
    if not confirm:
        raise PickError(tr("Keeping only one checkpoint moves the others to the trash: confirm first."))
    if version.busy:
        raise Busy(tr("Version \"{version}\" is training or queued; wait for it to finish.", version=version.name))
    if is_running(version):
        raise PickError(tr("A preview of \"{version}\" is running; stop it first.", version=version.key))
    keep = _checkpoint(version, checkpoint)
    others = [c for c in version.checkpoints() if c.name != keep.name]
    paths: List[Path] = []
    for ckpt in others:
        paths.append(ckpt.path)
        state = ckpt.path.with_name(f"{ckpt.name}-state")
        if state.is_dir():
            paths.append(state)
        cells = version.previews_dir / checkpoint_dir_name(ckpt.name)
        if cells.is_dir():
            paths.append(cells)
    if not paths:
        return None
    return workspace.move_to_trash(paths, kind="files", label=tr(
        "{version}: {count} checkpoints other than {name}", version=version.key, count=len(others), name=keep.name))


__all__ = ["PickResult", "PickError", "NameTaken", "use_checkpoint", "keep_only", "check_name", "default_name",
           "copy_with_metadata", "sd_version", "lora_prompt_text"]
