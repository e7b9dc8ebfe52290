"""``main``: parse the arguments, run the command, turn failures into messages and exit codes."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Dict, List, Optional, Sequence

from lib_trainer.cli.common import LANG_ENV
from lib_trainer.cli.hints import command
from lib_trainer.cli.errors import CliError, EXIT_FAILED, EXIT_STOPPED, EXIT_USAGE, is_user_error
from lib_trainer.cli.output import Output
from lib_trainer.cli.parser import build_parser
from lib_trainer.common.i18n import set_language, tr


def _language_option(argv: Sequence[str]) -> Optional[str]:
    """--lang as given on the command line (anywhere in it), or None."""
    for i, arg in enumerate(argv):
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--lang="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lang = _language_option(argv)
    set_language(lang or os.environ.get(LANG_ENV))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed by argparse)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    args.lang_given = lang  # repeated in the commands the output suggests (cli.hints)
    out = Output(getattr(args, "json", False))
    try:
        return args.func(args, out)
    except CliError as exc:
        return _fail(out, args, str(exc), exc.code, exc.problems, exc.data)
    except KeyboardInterrupt:
        out.end_progress()
        out.warn(tr("Stopped."))
        return EXIT_STOPPED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILED
    except Exception as exc:
        if is_user_error(exc):
            return _fail(out, args, str(exc), EXIT_FAILED)
        out.end_progress()
        out.warn(traceback.format_exc().rstrip())
        return _fail(out, args, tr("Unexpected error: {error}", error=f"{type(exc).__name__}: {exc}"), EXIT_FAILED)


def _fail(out: Output, args: argparse.Namespace, message: str, code: int,
          problems: Optional[List[Dict[str, str]]] = None, data: Optional[Dict[str, Any]] = None) -> int:
    out.end_progress()
    out.warn(tr("error: {message}", message=message))
    if code == EXIT_USAGE and not out.json:
        out.warn(tr("All its options: {command}", command=command(None, args.command, "--help")))
    out.emit({"ok": False, "command": args.command, "error": message, "problems": problems or [], **(data or {})})
    return code
