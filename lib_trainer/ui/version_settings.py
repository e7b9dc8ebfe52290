"""The tab's choices kept per version in ``version.json`` → ``settings``: preprocessing options, the training
form, the trigger word (``trigger``, which the preview reads too) and ``auto_preview`` (which the job runner
reads). A page reload or a restart shows them again, and "new version from this one" copies them."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from lib_trainer.projects import ProjectError, Version


def get(version: Optional[Version], key: Optional[str] = None, default: Any = None) -> Any:
    """The version's settings (or one of them); ``default`` when unset or the version is gone."""
    if version is None:
        return default
    try:
        settings = dict(version.state().get("settings") or {})
    except ProjectError:
        return default
    if key is None:
        return settings
    value = settings.get(key, default)
    return copy.deepcopy(value)


def put(version: Version, **changes: Any) -> Dict[str, Any]:
    """Set some settings of the version (others are kept); returns all of them."""
    settings = get(version, default={}) or {}
    settings.update(changes)
    version.update(settings=settings)
    return settings


def trigger_word(version: Optional[Version]) -> str:
    return str(get(version, "trigger", "") or "")


__all__ = ["get", "put", "trigger_word"]
