"""A small double of the WebUI's ``modules`` package: enough to execute ``scripts/train_tools.py`` and call its
callbacks outside a WebUI (unit tests and bench/startup.py). It is not a verification of the WebUI integration:
that runs against a real WebUI when TRAIN_TOOLS_WEBUI_DIR is set."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_tools.py"


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section = section


class Options:
    def __init__(self):
        object.__setattr__(self, "data_labels", {})
        object.__setattr__(self, "data", {"localization": "None"})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, name: str) -> Any:
        if name in self.data:
            return self.data[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.data[name] = value


def install(cmd_opts: Optional[Dict[str, Any]] = None) -> types.SimpleNamespace:
    """Put a ``modules`` double into sys.modules; returns the recorded callbacks and the shared objects."""
    callbacks: Dict[str, List[Any]] = {"ui_settings": [], "ui_tabs": [], "app_started": []}
    script_callbacks = types.ModuleType("modules.script_callbacks")
    script_callbacks.on_ui_settings = callbacks["ui_settings"].append
    script_callbacks.on_ui_tabs = callbacks["ui_tabs"].append
    script_callbacks.on_app_started = callbacks["app_started"].append
    shared = types.ModuleType("modules.shared")
    shared.OptionInfo = OptionInfo
    shared.opts = Options()
    shared.cmd_opts = types.SimpleNamespace(**{"api": False, "api_auth": None, "gradio_auth": None,
                                               **(cmd_opts or {})})
    modules = types.ModuleType("modules")
    modules.script_callbacks, modules.shared = script_callbacks, shared
    sys.modules.update({"modules": modules, "modules.script_callbacks": script_callbacks, "modules.shared": shared})
    return types.SimpleNamespace(callbacks=callbacks, shared=shared)


def uninstall() -> None:
    for name in ("modules", "modules.script_callbacks", "modules.shared", "train_tools_script"):
        sys.modules.pop(name, None)


def load_script() -> types.ModuleType:
    """Execute scripts/train_tools.py the way the WebUI does (a fresh module each time)."""
    spec = importlib.util.spec_from_file_location("train_tools_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_tools_script"] = module
    spec.loader.exec_module(module)
    return module
