"""What every command shares: the workspace, the version a target names, its settings and the standalone host."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lib_trainer.cli.errors import CliError, EXIT_USAGE
from lib_trainer.common.i18n import tr

WORKSPACE_ENV = "TRAIN_TOOLS_WORKSPACE"
CKPT_DIR_ENV = "TRAIN_TOOLS_CKPT_DIR"
LORA_DIR_ENV = "TRAIN_TOOLS_LORA_DIR"
LANG_ENV = "TRAIN_TOOLS_LANG"
DEFAULT_WORKSPACE = Path("outputs") / "train_tools"
TINY_MODEL_NAME = "tiny-sd1-embedded.safetensors"  # the file name the standalone app gives it (lib_trainer.app)
EXTENSION_ROOT = Path(__file__).resolve().parents[2]

POLL_S = 0.25


def workspace_dir(args: argparse.Namespace) -> Path:
    """--workspace, else $TRAIN_TOOLS_WORKSPACE, else ./outputs/train_tools (a WebUI's Train Tools folder when run
    from the WebUI's folder)."""
    return Path(getattr(args, "workspace", None) or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser()


def open_workspace(args: argparse.Namespace):
    from lib_trainer.projects import Workspace

    return Workspace(workspace_dir(args))


def split_target(target: str) -> Tuple[str, Optional[str]]:
    """``PROJECT/VERSION`` → (project, version); ``PROJECT`` → (project, None). Names cannot hold "/", so a target
    has at most one."""
    from lib_trainer.common.names import InvalidName

    text = target.strip()
    if text.count("/") > 1:
        if ".." in text:
            raise InvalidName(tr("\"{target}\" may not contain \"..\": projects and versions are folders of the "
                                 "workspace, named, never reached by a path.", target=target))
        raise CliError(tr("\"{target}\" has more than one \"/\": a target is PROJECT or PROJECT/VERSION, and names "
                          "cannot contain \"/\".", target=target), code=EXIT_USAGE)
    if "/" in text:
        project, version = text.split("/", 1)
        return project, version or None
    return text, None


def find_version(ws, target: str, args: Optional[argparse.Namespace] = None):
    """The version a target names; a project alone means its newest version."""
    from lib_trainer.cli.hints import command
    from lib_trainer.projects import NotFound

    project_name, version_name = split_target(target)
    try:
        project = ws.project(project_name)
    except NotFound:
        known = [p.name for p in ws.projects()]
        there = (tr("the projects there: {names}", names=", ".join(known[:10])) if known
                 else tr("it has no projects yet"))
        raise NotFound(tr("Project \"{project}\" does not exist in {workspace} ({there}). To create it:\n  {command}",
                          project=project_name, workspace=str(ws.root), there=there,
                          command=command(args, "new", project_name))) from None
    if version_name:
        return project.version(version_name)
    versions = project.versions()
    if not versions:
        raise NotFound(tr("Project \"{project}\" has no version yet; create one with:\n  {command}",
                          project=project.name, command=command(args, "new", f"{project.name}/v1")))
    return versions[-1]


def default_model_dirs(ws_root: Path, kind: str) -> List[Path]:
    """Where models of a kind ("Stable-diffusion", "Lora") are looked for by default: ./models/KIND when it exists
    (run from a WebUI's folder: the WebUI's own), and <workspace>/models/KIND, which the standalone app uses."""
    here = Path("models") / kind
    dirs = [here.resolve()] if here.is_dir() else []
    return dirs + [(ws_root / "models" / kind).resolve()]


def ckpt_dirs(args: argparse.Namespace) -> List[Path]:
    dirs = list(getattr(args, "ckpt_dir", None) or [])
    if not dirs and os.environ.get(CKPT_DIR_ENV):
        dirs = [d for d in os.environ[CKPT_DIR_ENV].split(os.pathsep) if d]
    if not dirs:
        return default_model_dirs(workspace_dir(args), "Stable-diffusion")
    return [Path(d).expanduser().resolve() for d in dirs]


def lora_dir(args: argparse.Namespace) -> Path:
    """--lora-dir, else $TRAIN_TOOLS_LORA_DIR, else ./models/Lora when it exists (a WebUI's folder), else
    <workspace>/models/Lora (the standalone app's; made when the first LoRA is copied there)."""
    wanted = getattr(args, "lora_dir", None) or os.environ.get(LORA_DIR_ENV)
    if wanted:
        return Path(wanted).expanduser().resolve()
    return default_model_dirs(workspace_dir(args), "Lora")[0]


def use_trainer_deps() -> None:
    """Put the trainer's private dependencies on this process's path (the CLI is not the WebUI process)."""
    from lib_trainer.common.deps_dir import add_deps_to_path

    add_deps_to_path()


def embedded_model(ws_root: Path) -> Path:
    """The model the standalone host offers without any checkpoint file: the pretrained toy model where it has
    been made (lib_trainer.demo.toy_model), else the tiny one the standalone app writes into its workspace."""
    try:
        from lib_trainer.demo.toy_model import MODEL_FILE
    except ImportError:  # a checkout from before the toy model
        MODEL_FILE = None
    if MODEL_FILE is not None and MODEL_FILE.is_file():
        return MODEL_FILE
    return ws_root / "models" / TINY_MODEL_NAME


def make_host(args: argparse.Namespace, ws):
    """The standalone host: checkpoints from --ckpt-dir, LoRAs into --lora-dir, and the embedded model."""
    use_trainer_deps()
    from lib_trainer.hosts.standalone import StandaloneHost

    return StandaloneHost(ws.root, ckpt_dirs(args), lora_dir=lora_dir(args), outputs_dir=ws.root,
                          embedded_tiny=embedded_model(ws.root))


def version_settings(version) -> Dict[str, Any]:
    return dict(version.state().get("settings") or {})


def update_settings(version, **changes: Any) -> Dict[str, Any]:
    settings = version_settings(version)
    settings.update(changes)
    version.update(settings=settings)
    return settings
