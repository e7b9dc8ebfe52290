"""Validation of the names people give projects, versions and concepts.

A name becomes a folder name, so it must be safe on every OS the WebUI runs on, yet any Unicode text a person
would type (``可爱的狗``, ``cute dog v2``) is fine. Standard library only.
"""
from __future__ import annotations

import unicodedata

from lib_trainer.common.i18n import tr

MAX_NAME_LENGTH = 64
# Characters Windows refuses in file names, and the path separators everywhere.
FORBIDDEN_CHARS = set('/\\:*?"<>|')
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


class InvalidName(ValueError):
    """A name that cannot be used; the message says why and what to do."""


def validate_name(name: str, what: str = "name") -> str:
    """The name, NFC-normalised and trimmed, or :class:`InvalidName` saying why it cannot be used."""
    if not isinstance(name, str):
        raise InvalidName(tr("The {what} must be text.", what=what))
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise InvalidName(tr("The {what} is empty: type a name.", what=what))
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidName(tr("The {what} is {n} characters long; use at most {max}.",
                             what=what, n=len(cleaned), max=MAX_NAME_LENGTH))
    if cleaned in (".", "..") or ".." in cleaned:
        raise InvalidName(tr("The {what} may not contain \"..\".", what=what))
    bad = sorted({c for c in cleaned if c in FORBIDDEN_CHARS})
    if bad:
        raise InvalidName(tr("The {what} may not contain {chars} (they are not allowed in folder names).",
                             what=what, chars=" ".join(bad)))
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in cleaned):
        raise InvalidName(tr("The {what} contains control characters; type it again without them.", what=what))
    if cleaned.startswith("."):
        raise InvalidName(tr("The {what} may not start with a dot.", what=what))
    if cleaned.endswith("."):
        raise InvalidName(tr("The {what} may not end with a dot (Windows cannot use such folders).", what=what))
    if cleaned.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        raise InvalidName(tr("\"{name}\" is a reserved name on Windows; choose another {what}.", name=cleaned, what=what))
    return cleaned
