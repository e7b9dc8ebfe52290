"""Put first on a benchmarked program's PYTHONPATH by bench/vs_sd_scripts.py (ours and sd-scripts alike).

With TRAIN_TOOLS_BENCH_CUDA_PEAK_FILE set, the program writes torch's peak CUDA memory of its own process there
when it exits: {"max_allocated": bytes, "max_reserved": bytes}; nothing when CUDA was never used. With
TRAIN_TOOLS_BENCH_MODULES_FILE set, it writes there the top-level modules the program imported, with their
versions and files where known (to check what a bare GPU machine must be given). Any sitecustomize this one
shadows still runs."""
import atexit
import importlib.machinery
import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _write_cuda_peak(path: str) -> None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    peak = {"max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved()}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(peak, fh)


def _write_modules(path: str) -> None:
    names = sorted({name.split(".")[0] for name in list(sys.modules)} - set(sys.builtin_module_names))
    names = [n for n in names if not n.startswith("_") and n not in getattr(sys, "stdlib_module_names", ())]
    found = {}
    for name in names:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        found[name] = {"version": version if isinstance(version, str) else None,
                       "file": getattr(module, "__file__", None)}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(found, fh, indent=1)


if os.environ.get("TRAIN_TOOLS_BENCH_MODULES_FILE"):
    atexit.register(_write_modules, os.environ["TRAIN_TOOLS_BENCH_MODULES_FILE"])
if os.environ.get("TRAIN_TOOLS_BENCH_CUDA_PEAK_FILE"):
    atexit.register(_write_cuda_peak, os.environ["TRAIN_TOOLS_BENCH_CUDA_PEAK_FILE"])

_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
