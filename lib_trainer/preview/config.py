"""What a version's preview draws: its stored config (``previews/preview.json``), the defaults for a version (its
architecture's size, its clip skip, two of its training captions) and the trigger word put in front of every prompt.
Runs inside the WebUI process: standard library only.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from lib_trainer.common.files import atomic_write_json, read_json
from lib_trainer.common.i18n import tr
from lib_trainer.common.safetensors_header import read_metadata
from lib_trainer.hosts.base import Host
from lib_trainer.preview.cells import PreviewError
from lib_trainer.projects import Version

PREVIEW_CONFIG_FILE = "preview.json"
DEFAULT_WEIGHTS = (0.4, 0.6, 0.8, 1.0)
DEFAULT_SEED = 1234
DEFAULT_SIZES = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024}
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
        arch = arch_from_metadata(read_metadata(ckpt.path))
        if arch:
            return arch
    base = trained_base_model(version)
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


def train_config(version: Version):
    from lib_trainer.trainer.schema import ConfigError, load_config

    if not version.config_path.is_file():
        return None
    try:
        return load_config(version.config_path)[0]
    except (ConfigError, TypeError, ValueError):
        return None


def trained_base_model(version: Version) -> Optional[str]:
    cfg = train_config(version)
    return (cfg.pretrained_model_name_or_path or None) if cfg is not None else None


def version_trigger(version: Version) -> str:
    """The version's trigger word(s) (settings ``trigger``), "" when it has none."""
    value = version.state().get("settings", {}).get("trigger") or ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value if str(v).strip())
    return str(value).strip()


def default_config(version: Version, host: Optional[Host] = None) -> PreviewConfig:
    """Defaults for a version: the size it was trained at (its architecture's usual size when it has no training
    config yet), its clip skip, up to two of its training captions. A LoRA trained at 256 px on a CPU is previewed
    at 256 px, not at the base model's 1024."""
    cfg = train_config(version)
    width = height = DEFAULT_SIZES.get(version_arch(version, host), 512)
    if cfg is not None:
        try:
            width, height = (max(64, side - side % 8) for side in cfg.resolution_wh)
        except ValueError:
            pass
    clip_skip = int(cfg.clip_skip) if cfg is not None and cfg.clip_skip else 1
    prompts = _sample_captions(version, 2) or [""]
    sampler = "Euler a"
    if host is not None:
        names = host.samplers()
        if names and sampler not in names:
            sampler = names[0]
    return PreviewConfig(prompts=prompts, width=width, height=height, clip_skip=clip_skip, sampler=sampler)


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
