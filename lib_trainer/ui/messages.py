"""Short messages shown in the tab (in gr.HTML boxes): escaped text with a kind that style.css colours.

The colour is also given inline, so that an error is red even where the extension's style.css is not loaded.
"""
from __future__ import annotations

import html
from typing import Iterable, Optional

_COLOURS = {"error": "#d22", "warning": "#b66a00", "ok": "#1a7f37", "info": "inherit"}


def message(text: Optional[str], kind: str = "info") -> str:
    """One message as HTML ("" for no message)."""
    if not text:
        return ""
    colour = _COLOURS.get(kind, "inherit")
    body = html.escape(str(text)).replace("\n", "<br>")
    return f'<div class="train_tools_msg train_tools_msg_{kind}" style="color:{colour}">{body}</div>'


def error(text: Optional[str]) -> str:
    return message(text, "error")


def ok(text: Optional[str]) -> str:
    return message(text, "ok")


def warning(text: Optional[str]) -> str:
    return message(text, "warning")


def info(text: Optional[str]) -> str:
    return message(text, "info")


def many(items: Iterable[tuple]) -> str:
    """Several ``(text, kind)`` messages, one below the other."""
    return "".join(message(text, kind) for text, kind in items if text)


def md_escape(text: str) -> str:
    """Text that Markdown shows as it is (table cells, names)."""
    out = str(text).replace("\\", "\\\\")
    for ch in "`*_[]<>|#":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


__all__ = ["message", "error", "ok", "warning", "info", "many", "md_escape"]
