"""Commands the CLI prints for the person to run next ("Next: …"), written so that pasting them works as is: every
word quoted for the shell, the program as it was started, and the --workspace and --lang the person gave."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence

MODULE = "lib_trainer.cli"


def _python() -> str:
    """This interpreter as a person would type it: ``python`` when that is the one on PATH, else its path (relative
    when it lies below the current folder, e.g. ``.venv/bin/python``). No realpath: a venv's python is a symlink to
    the base interpreter, yet another environment."""
    executable = os.path.abspath(sys.executable)
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and os.path.abspath(found) == executable:
            return name
    try:
        relative = os.path.relpath(executable)
    except ValueError:  # another drive (Windows)
        return executable
    if relative.startswith(os.pardir):
        return executable
    return relative if os.sep in relative else os.path.join(os.curdir, relative)


def program() -> List[str]:
    return [_python(), "-m", MODULE]


def join(words: Sequence[str]) -> str:
    """One command line from words: POSIX shell quoting, or cmd.exe's on Windows."""
    if os.name == "nt":  # pragma: no cover
        return subprocess.list2cmdline(list(words))
    return " ".join(shlex.quote(w) for w in words)


def given_options(args: Optional[argparse.Namespace]) -> List[str]:
    """The --workspace and --lang this run was given on its command line (environment defaults need no repeating)."""
    words: List[str] = []
    if args is None:
        return words
    if getattr(args, "workspace", None):
        words += ["--workspace", str(args.workspace)]
    if getattr(args, "lang_given", None):
        words += ["--lang", str(args.lang_given)]
    return words


def command(args: Optional[argparse.Namespace], *words: str) -> str:
    """``PROGRAM WORDS… [--workspace DIR] [--lang LANG]``, quoted: what a hint prints for the person to paste."""
    return join(program() + [str(w) for w in words] + given_options(args))
