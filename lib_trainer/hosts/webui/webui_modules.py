"""The running WebUI's own modules, looked up when they are needed (never at import time, so the WebUI's start-up
order is never disturbed). With the rest of ``hosts/webui/``, the only code of Train Tools that reaches the WebUI's
``modules`` and its built-in Lora extension's ``networks``."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

_ENV_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def webui_module(name: str) -> Any:
    """``modules.<name>`` of the running WebUI."""
    return importlib.import_module(f"modules.{name}")


def lora_networks() -> Any:
    """The built-in Lora extension's ``networks`` module (A1111 ``extensions-builtin/Lora``, Forge
    ``sd_forge_lora``); None when the extension is disabled. The WebUI imported it while loading the extension's
    scripts, with the extension's folder briefly on sys.path, so it is looked up, not imported."""
    module = sys.modules.get("networks")
    return module if module is not None and hasattr(module, "list_available_networks") else None


def offline() -> bool:
    """Whether the WebUI runs without downloads (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return bool(offline_variables())


def offline_variables() -> str:
    """The offline variables that are set ("HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE"), "" when none is."""
    return ", ".join(name for name in _ENV_OFFLINE
                     if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"))
