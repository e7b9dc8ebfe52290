"""What every command shares: the workspace, the version a target names, its settings and the standalone host."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lib_trainer.cli.errors import CliError, EXIT_USAGE
from lib_trainer.common.i18n import tr

WORKSPACE_ENV = "TRAIN_TOOLS_WORKSPACE"
CKPT_DIR_ENV = "TRAIN_TOOLS_CKPT_DIR"
LORA_DIR_ENV = "TRAIN_TOOLS_LORA_DIR"
LANG_ENV = "TRAIN_TOOLS_LANG"
DEFAULT_WORKSPACE = Path("outputs") / "train_tools"
EXTENSION_ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m lib_trainer.cli"

POLL_S = 0.25


def open_workspace(args: argparse.Namespace):
    from lib_trainer.projects import Workspace

    return Workspace(Path(args.workspace).expanduser())


def split_target(target: str) -> Tuple[str, Optional[str]]:
    """``PROJECT/VERSION`` → (project, version); ``PROJECT`` → (project, None). Names cannot hold "/"."""
    text = target.strip()
    if "/" in text:
        project, version = text.split("/", 1)
        return project, version or None
    return text, None


def find_version(ws, target: str):
    """The version a target names; a project alone means its newest version."""
    from lib_trainer.projects import NotFound

    project_name, version_name = split_target(target)
    project = ws.project(project_name)
    if version_name:
        return project.version(version_name)
    versions = project.versions()
    if not versions:
        raise NotFound(tr("Project \"{project}\" has no version yet: create one with \"new {project}/v1\".",
                          project=project.name))
    return versions[-1]


def ckpt_dirs(args: argparse.Namespace) -> List[Path]:
    dirs = list(getattr(args, "ckpt_dir", None) or [])
    if not dirs and os.environ.get(CKPT_DIR_ENV):
        dirs = [d for d in os.environ[CKPT_DIR_ENV].split(os.pathsep) if d]
    if not dirs:
        dirs = [str(Path("models") / "Stable-diffusion")]
    return [Path(d).expanduser().resolve() for d in dirs]


def resolve_lora_dir(args: argparse.Namespace, required: bool) -> Optional[Path]:
    wanted = getattr(args, "lora_dir", None) or os.environ.get(LORA_DIR_ENV)
    if wanted:
        return Path(wanted).expanduser().resolve()
    default = Path("models") / "Lora"
    if default.is_dir():
        return default.resolve()
    if required:
        raise CliError(tr("Say where the Lora folder is: --lora-dir DIR (for a WebUI: its models/Lora)."),
                       code=EXIT_USAGE)
    return None


def use_trainer_deps() -> None:
    """Put the trainer's private dependencies on this process's path (the CLI is not the WebUI process)."""
    from lib_trainer import deps

    folder = str(deps.default_deps_dir())
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)


def make_host(args: argparse.Namespace, ws):
    """The standalone host: checkpoints from --ckpt-dir, LoRAs into --lora-dir."""
    use_trainer_deps()
    from lib_trainer.hosts.standalone import StandaloneHost

    lora_dir = resolve_lora_dir(args, required=False) or ws.root / "models" / "Lora"
    return StandaloneHost(ws.root, ckpt_dirs(args), lora_dir=lora_dir, outputs_dir=ws.root)


def version_settings(version) -> Dict[str, Any]:
    return dict(version.state().get("settings") or {})


def update_settings(version, **changes: Any) -> Dict[str, Any]:
    settings = version_settings(version)
    settings.update(changes)
    version.update(settings=settings)
    return settings
