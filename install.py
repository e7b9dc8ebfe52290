"""Installs the trainer's private dependencies into trainer_deps/ (see requirements-trainer.txt).

The WebUI runs this file with its own Python at every start-up: it must be quick when nothing is missing, print one
line, and never stop the WebUI from starting. It never installs into the WebUI's environment (no launch.run_pip).
By hand: `python install.py [--python PATH] [--deps-dir DIR]`, exit status 1 on failure.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RETRY_HINT = "the Train Tools tab will offer to retry"


def _load_deps():
    # By file path, so that nothing else of lib_trainer is imported (or needs to import) at WebUI start-up.
    spec = importlib.util.spec_from_file_location("train_tools_deps", ROOT / "lib_trainer" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the Python the trainer runs with")
    parser.add_argument("--deps-dir", default=None, help="where the trainer's packages go (default: trainer_deps)")
    parser.add_argument("--quiet", action="store_true", help="no pip progress on stderr")
    args = parser.parse_args(argv)
    progress = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    try:
        result = _load_deps().install_missing(python=args.python, deps_dir=args.deps_dir, progress=progress)
        ok, message = result.ok, result.message
    except Exception as e:  # install_missing reports expected failures itself; this is for the unexpected
        ok, message = False, f"{type(e).__name__}: {e}"
    if ok:
        print(f"[Train Tools] {message}")
    else:
        print(f"[Train Tools] could not install the trainer dependencies: {message}; {RETRY_HINT}")
    return 0 if ok else 1


if __name__ == "__main__":
    # The WebUI runs this with no arguments and its output piped; a non-zero status there would only add an error
    # report to its start-up, so failures exit 0 there and 1 when run by hand.
    by_hand = len(sys.argv) > 1 or sys.stdout.isatty()
    status = main(sys.argv[1:] if by_hand else ["--quiet"])
    sys.exit(status if by_hand else 0)
