"""Whether an NVIDIA GPU is here, without importing torch into a process that has not imported it."""
from __future__ import annotations

import os
import shutil
import sys


def cuda_available() -> bool:
    """Whether the trainer will find an NVIDIA GPU. A process that has torch (the WebUI, the standalone app) asks
    it, so its answer is exact; elsewhere the NVIDIA driver's presence decides (importing torch takes seconds)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:
            return False
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
