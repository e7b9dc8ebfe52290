"""Facts about model files that every host needs, read without loading a model: tensor names, the
architecture (with the trainer's own rules) and the tensor-data hash the WebUI and sd-scripts show for a LoRA.

Standard library only at import; torch is imported only for a pickled ``.ckpt`` (both hosts' processes have it).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from lib_trainer.common.files import sha256_file
from lib_trainer.common.safetensors_header import read_header, read_metadata

TINY_RESOLUTION = 64  # the tiny test and demo models (lib_trainer.demo) draw and train at 64 px


def checkpoint_keys(path: Path) -> list[str]:
    """Tensor names of a checkpoint: the header of a .safetensors, or a ``.ckpt`` read with ``weights_only``."""
    if path.suffix.lower() == ".safetensors":
        return read_header(path).tensor_names
    import torch

    data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return list(data.keys()) if isinstance(data, dict) else []


def yaml_says_v(path: Path) -> bool:
    """The WebUI's ``<checkpoint>.yaml`` beside the file declares v-prediction (how SD2 768-v models are set up)."""
    try:
        text = path.with_suffix(".yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"""^\s*parameterization:\s*["']?v["']?\s*$""", text, re.MULTILINE) is not None


def detect_checkpoint_arch(path: Path) -> str:
    """"sd1" | "sd2" | "sd2-v" | "sdxl" from the file's keys (the trainer's own detection); "unknown" otherwise."""
    from lib_trainer.trainer.models import detect_arch

    try:
        keys = checkpoint_keys(path)
        arch = detect_arch(keys)
    except Exception:  # an unreadable or foreign file is listed as unknown, never an error
        return "unknown"
    if arch == "sd2" and ("v_pred" in keys or yaml_says_v(path)):
        return "sd2-v"
    return arch


def safetensors_data_hash(path: Path) -> str:
    """sha256 of a .safetensors file's tensor data (after the header): the WebUI's and sd-scripts' Lora hash."""
    offset = read_header(path).data_offset if path.suffix.lower() == ".safetensors" else 0
    return sha256_file(path, offset)


def native_resolution(path: Path) -> Optional[int]:
    """The side a checkpoint was made for when its file says so (``modelspec.resolution`` "WxH", or Train Tools'
    own small models), else None: the architecture's usual size applies."""
    if path.suffix.lower() != ".safetensors":
        return None
    meta = read_metadata(path)
    text = meta.get("modelspec.resolution", "")
    match = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*", text)
    if match:
        return min(int(match.group(1)), int(match.group(2)))
    if "train_tools_tiny" in meta:
        return TINY_RESOLUTION
    return None


def checkpoint_facts(path: Path) -> tuple[str, Optional[int]]:
    """(architecture, native resolution or None) of a checkpoint file: what a host lists about it."""
    try:
        resolution = native_resolution(path)
    except OSError:
        resolution = None
    return detect_checkpoint_arch(path), resolution
