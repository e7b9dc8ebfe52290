import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The trainer's private dependencies (installed by install.py) are importable in the test process too, so that
# trainer modules can be unit-tested in-process; the host-side code never relies on them.
_deps = Path(os.environ.get("TRAIN_TOOLS_DEPS_DIR", ROOT / "trainer_deps"))
if _deps.is_dir() and str(_deps) not in sys.path:
    sys.path.insert(1, str(_deps))
