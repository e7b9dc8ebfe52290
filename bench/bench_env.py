"""What every benchmark that runs the trainer's code needs before importing it: the repository and the trainer's
private dependencies on the path, and the libraries offline and quiet, as the trainer's own entry point sets
them. Imported first by the scripts next to it (``python bench/<script>.py`` puts this folder on the path)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEPS = Path(os.environ.get("TRAIN_TOOLS_DEPS_DIR", ROOT / "trainer_deps"))
if DEPS.is_dir() and str(DEPS) not in sys.path:
    sys.path.insert(1, str(DEPS))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
