"""LoRA files in the WebUI: what a file patches and for which family, which LoRAs a drawn image really applied
(its infotext's "Lora hashes"), and staging the files the host draws with.

``<lora:NAME:w>`` resolves a basename (or ``ss_output_name``) found recursively under the Lora folder, never a path,
and Forge caches networks by file name: LoRA files are staged by :class:`LoraStaging` under unique,
content-addressed names and referenced by those names in the prompt. The WebUI skips a ``<lora:…>`` it cannot load
and still draws, so every request is checked afterwards: the network must appear in the infotext's "Lora hashes",
no "Lora not found" / "Networks with errors" comment may name it, and (A1111) every layer of the file must have
matched the checkpoint.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from lib_trainer.common.i18n import tr
from lib_trainer.common.safetensors_header import read_header
from lib_trainer.hosts.base import HostError, LoraSpec, LoraStaging
from lib_trainer.hosts.webui.webui_modules import lora_networks, webui_module


def lora_module_names(path: Path) -> set[str]:
    """The layers a LoRA/LyCORIS .safetensors file patches (``lora_unet_…``, ``lora_te…``), from its header."""
    return {key.split(".", 1)[0] for key in read_header(path).tensor_names
            if "." in key and not key.startswith("bundle_emb.")}


def lora_family(path: Path) -> Optional[str]:
    """"sdxl" or "sd" (SD1/SD2) from a kohya-layout file's layer names; None when they do not tell."""
    try:
        names = lora_module_names(path)
    except (OSError, ValueError):
        return None
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names) or any(
            n.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_"))
            for n in names):
        return "sdxl"
    if any(n.startswith(("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_"))
           for n in names):
        return "sd"
    return None


_RE_LORA_HASHES = re.compile(r'(?:^|, )Lora hashes: ("(?:[^"\\]|\\.)*"|[^,\n]*)')


def parse_lora_hashes(infotext: str) -> dict[str, str]:
    """The "Lora hashes" field of an infotext: ``{network name: short hash}``."""
    last = infotext.rsplit("\n", 1)[-1]
    match = _RE_LORA_HASHES.search(last)
    if not match:
        return {}
    value = match.group(1)
    if value.startswith('"'):
        try:
            value = json.loads(value)
        except ValueError:
            value = value.strip('"')
    result = {}
    for item in value.split(","):
        name, sep, short = item.strip().rpartition(":")
        if sep and name.strip():
            result[name.strip()] = short.strip()
    return result


class WebUILoras:
    """The LoRA part of :class:`lib_trainer.hosts.webui.host.WebUIHost`."""

    def _staging_area(self) -> LoraStaging:
        lora_dir = self.lora_dir()
        if self._staging is None or self._staging.lora_dir != lora_dir:
            self._staging = LoraStaging(lora_dir)
        return self._staging

    def _stage(self, specs: list[LoraSpec], checkpoint: Any) -> list[tuple[LoraSpec, str]]:
        """Copy each LoRA file (weight != 0) under its unique name into the Lora folder; check the files first."""
        if specs and lora_networks() is None:
            raise HostError(tr("The WebUI's built-in Lora extension is disabled: enable it under Extensions to "
                               "draw with LoRA files."))
        target_arch = self._target_arch(checkpoint)
        staging = self._staging_area() if specs else None
        staged: list[tuple[LoraSpec, str]] = []
        for spec in specs:
            path = Path(spec.path)
            if not path.is_file():
                raise HostError(tr("LoRA file not found: {path}", path=spec.path))
            if path.suffix.lower() != ".safetensors":
                # the WebUI's safe unpickler rejects .pt/.ckpt files written by current torch
                raise HostError(tr("{name}: the WebUI host draws with .safetensors LoRA files only.", name=path.name))
            if float(spec.weight) == 0.0:
                continue
            family = lora_family(path)
            if family is not None and target_arch in ("sd1", "sd2", "sd2-v", "sdxl") and (
                    (family == "sdxl") != (target_arch == "sdxl")):
                raise HostError(tr(
                    "{name} does not fit checkpoint {checkpoint}: it was trained for {family}, the checkpoint is "
                    "{arch}.", name=path.name, checkpoint=self._checkpoint_name(checkpoint),
                    family="SDXL" if family == "sdxl" else "SD1/SD2", arch=target_arch))
            staged.append((spec, staging.stage(path)))
        if staged:
            self._make_known([name for _, name in staged])
        return staged

    def _target_arch(self, checkpoint: Any) -> str:
        if checkpoint is None:
            model = getattr(webui_module("sd_models").model_data, "sd_model", None)
            checkpoint = getattr(model, "sd_checkpoint_info", None)
        filename = getattr(checkpoint, "filename", None)
        return self._arch(filename) if filename else "unknown"

    @staticmethod
    def _checkpoint_name(checkpoint: Any) -> str:
        if checkpoint is None:
            model = getattr(webui_module("sd_models").model_data, "sd_model", None)
            checkpoint = getattr(model, "sd_checkpoint_info", None)
        return Path(getattr(checkpoint, "filename", "") or "?").name

    @staticmethod
    def _make_known(names: list[str]) -> None:
        """Let the Lora extension find freshly staged files (it would search once by itself when a name is
        missing; doing it here keeps that out of the drawing and works on versions that do not)."""
        networks = lora_networks()
        aliases = getattr(networks, "available_network_aliases", {})
        missing = [n for n in names if n not in aliases]
        if not missing:
            return
        by_names = getattr(networks, "update_available_networks_by_names", None)
        if by_names is not None:
            by_names(missing)
        else:
            networks.list_available_networks()

    def _check_loras(self, processed: Any, staged: list[tuple[LoraSpec, str]]) -> list[str]:
        """The paths of the staged LoRAs the WebUI really applied; HostError naming any it skipped."""
        if not staged:
            return []
        infotext = processed.infotexts[0] if processed.infotexts else processed.info
        hashes = parse_lora_hashes(infotext)
        comments = str(getattr(processed, "comments", "") or "")
        trouble = [line for line in comments.splitlines() if line.startswith(("Lora not found", "Networks with errors"))]
        unfit = set(self._flavor.unfit_loras({name: Path(spec.path) for spec, name in staged}))
        for spec, name in staged:
            reason = None
            if name in unfit:
                reason = tr("some of its layers have no match in this checkpoint. Was it trained on another "
                            "architecture?")
            elif any(name in line for line in trouble):
                reason = "; ".join(line for line in trouble if name in line)
            elif name not in hashes:
                reason = tr("the WebUI did not report it as applied (see the WebUI's console).")
            if reason is not None:
                raise HostError(tr("The WebUI did not apply LoRA {name}: {reason}", name=Path(spec.path).name,
                                   reason=reason))
        return [spec.path for spec, _ in staged]

    def refresh_loras(self) -> None:
        networks = lora_networks()
        if networks is not None:
            networks.list_available_networks()

    def forget_preview_loras(self, version_dir: Path) -> None:
        staging = self._staging_area()
        if not staging.version_folder(version_dir).exists():
            return
        staging.forget(version_dir)
        self.refresh_loras()
