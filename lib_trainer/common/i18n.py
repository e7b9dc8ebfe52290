"""Translation of user-visible text.

The WebUI translates a page by replacing exact strings it finds in the DOM with the entries of the chosen
``localizations/<lang>.json``. That covers fixed labels, but not messages built at run time ("3 pictures are
under 512 px …"). So every user-visible string in lib_trainer goes through :func:`tr`: the English text is a
``str.format`` template and the key; the same JSON file carries its translation, and the values are filled in
after translating. Static labels translated here are simply left alone by the WebUI's own pass.

The WebUI merges every extension's ``localizations/<lang>.json`` into one table for the whole page, so a short,
common label there ("Seed", "Steps", "Train") would replace the person's own translation of the WebUI's labels
on every tab. Such labels (two words or fewer) live in ``lib_trainer/locales/<lang>.json`` instead, which only
:func:`tr` reads; ``localizations/`` keeps the sentences and messages that are ours alone.

Standard library only: this runs inside the WebUI process.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, Optional

LOCALIZATIONS_DIR = Path(__file__).resolve().parents[2] / "localizations"
PRIVATE_DIR = Path(__file__).resolve().parents[1] / "locales"

_lock = threading.Lock()
_language: Optional[str] = None
_table: Dict[str, str] = {}


def available_languages() -> list[str]:
    return sorted(p.stem for p in LOCALIZATIONS_DIR.glob("*.json"))


def load_table(language: Optional[str]) -> Dict[str, str]:
    """The translation table of ``language`` (empty for English, None, "None" or an unknown language)."""
    if not language or language in ("None", "en", "en_US"):
        return {}
    table: Dict[str, str] = {}
    for folder in (LOCALIZATIONS_DIR, PRIVATE_DIR):
        path = folder / f"{language}.json"
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                table.update({str(k): str(v) for k, v in json.load(fh).items()})
    return table


def set_language(language: Optional[str]) -> None:
    """Choose the language of :func:`tr` for this process (the WebUI's ``localization`` setting or ``--lang``)."""
    global _language, _table
    table = load_table(language)
    with _lock:
        _language = language if table else None
        _table = table


def current_language() -> Optional[str]:
    return _language


def tr(text: str, /, **values: Any) -> str:
    """``text`` in the current language, with ``{name}`` fields filled from ``values``."""
    template = _table.get(text, text)
    if not values:
        return template
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        # A broken translation must never hide the message: fall back to the English template.
        return text.format(**values)
