"""Where the trainer's private dependencies live (``trainer_deps/`` in the extension, or ``$TRAIN_TOOLS_DEPS_DIR``),
and putting that folder on a process's path. Standard library only: the trainer and the WebUI side both use it."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

DEPS_DIR_ENV = "TRAIN_TOOLS_DEPS_DIR"
EXTENSION_ROOT = Path(__file__).resolve().parents[2]


def default_deps_dir() -> Path:
    return Path(os.environ.get(DEPS_DIR_ENV) or EXTENSION_ROOT / "trainer_deps")


def add_deps_to_path() -> Optional[Path]:
    """Put the dependency folder first on ``sys.path`` when it exists and is not there yet (the job runner puts
    it on ``PYTHONPATH``; a trainer or CLI started by hand has only this). Returns the folder, or None."""
    folder = default_deps_dir()
    if not folder.is_dir():
        return None
    known = {os.path.normcase(os.path.abspath(p)) for p in sys.path if p}
    if os.path.normcase(os.path.abspath(folder)) not in known:
        sys.path.insert(0, str(folder))
    return folder
