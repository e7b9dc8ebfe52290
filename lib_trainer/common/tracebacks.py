"""The end of the traceback being handled, for error records that a person reads."""
from __future__ import annotations

import traceback


def traceback_tail(lines: int = 12) -> str:
    """The last ``lines`` lines of the exception being handled ("" outside an ``except`` block)."""
    return "".join(traceback.format_exc().splitlines(keepends=True)[-lines:])
