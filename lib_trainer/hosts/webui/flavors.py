"""Where AUTOMATIC1111 1.10 and Forge differ for a host: freeing and restoring the GPU, and checking that a LoRA's
layers all matched the checkpoint.

Measured on a real 1.10.1: ``unload_model_weights()`` only moves the model to CPU RAM and ``send_model_to_device()``
brings it back; Forge's unload frees everything and its models come back by themselves.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

from lib_trainer.hosts.webui.loras import lora_module_names
from lib_trainer.hosts.webui.webui_modules import lora_networks, webui_module


class Flavor:
    """AUTOMATIC1111 1.10: the model moves to CPU RAM on release and back on restore."""

    name = "webui"

    def release(self) -> None:
        sd_models = webui_module("sd_models")
        data = sd_models.model_data
        models = list(getattr(data, "loaded_sd_models", None) or [])
        if data.sd_model is not None and data.sd_model not in models:
            models.insert(0, data.sd_model)
        for model in models:
            # never call it without a model: shared.sd_model would load one first
            sd_models.unload_model_weights(model)

    def restore(self) -> None:
        sd_models = webui_module("sd_models")
        model = sd_models.model_data.sd_model
        if model is not None:
            sd_models.send_model_to_device(model)

    def unfit_loras(self, names: dict[str, Path]) -> list[str]:
        """Names (of ``names``: staged name → file) whose layers did not all match the loaded checkpoint."""
        networks = lora_networks()
        unfit = []
        for net in list(getattr(networks, "loaded_networks", []) or []):
            path = names.get(getattr(net, "name", None))
            modules = getattr(net, "modules", None)
            if path is None or modules is None:
                continue
            try:
                expected = len(lora_module_names(path))
            except (OSError, ValueError):
                continue
            if len(modules) < expected:
                unfit.append(net.name)
        return unfit


class ForgeFlavor(Flavor):
    """Forge: unloading frees every model, which Forge loads again by itself when it next draws; its Lora
    extension patches the model as a whole and keeps no per-layer record to check."""

    name = "forge"

    def release(self) -> None:
        webui_module("sd_models").unload_model_weights()
        with contextlib.suppress(Exception):
            importlib.import_module("backend.memory_management").soft_empty_cache()

    def restore(self) -> None:
        pass  # Forge brings its models back on the next generation

    def unfit_loras(self, names: dict[str, Path]) -> list[str]:
        return []


def detect_flavor() -> Flavor:
    sd_models = webui_module("sd_models")
    if hasattr(sd_models, "forge_model_reload") or "modules_forge" in sys.modules:
        return ForgeFlavor()
    return Flavor()
