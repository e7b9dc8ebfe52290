"""Exit codes and the failures the CLI reports plainly (a message, no traceback)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


# Library exceptions whose message is written for the person (exit 1, no traceback). Matched by class name so
# that main() never has to import the modules that define them.
_USER_ERRORS = {"ProjectError", "InvalidName", "ConfigError", "CaptionError", "ConceptError", "PreprocessError",
                "PreviewError", "HostError", "JobError", "ImageProblem"}


class CliError(Exception):
    """A failure to report plainly: ``code`` 1 (failed) or 2 (usage), optional per-field ``problems``."""

    def __init__(self, message: str, code: int = EXIT_FAILED, problems: Optional[List[Dict[str, str]]] = None,
                 data: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.problems = problems or []
        self.data = data or {}


def is_user_error(exc: BaseException) -> bool:
    return any(cls.__name__ in _USER_ERRORS and cls.__module__.startswith("lib_trainer")
               for cls in type(exc).__mro__)
