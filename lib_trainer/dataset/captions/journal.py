"""The undo journal of bulk caption edits.

Every bulk edit is a :class:`BulkEdit`: before a caption file is written, its previous content is stored in a
journal, ``dataset/.caption_undo.json``. :func:`undo_last_edit` puts those files back, so the last bulk edit
can be undone once, also after a page reload or a restart. A file changed again after the edit (a caption
edited by hand, say) is left alone by the undo and named; undo never destroys work it did not do. The caption
lock keeps bulk edits of one dataset from interleaving. Standard library only.
"""
from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lib_trainer.common.files import atomic_write_bytes, atomic_write_json, read_json
from lib_trainer.common.i18n import tr
from lib_trainer.dataset.captions.sidecar import (CAPTION_EXTENSION, CaptionError, PictureRef, caption_path,
                                                  normalise_extension, read_caption_bytes)
from lib_trainer.dataset.captions.tags import join_tags, parse_tags

UNDO_FILE_NAME = ".caption_undo.json"
_LOCK_TIMEOUT_S = 5.0


class CaptionBusy(CaptionError):
    """Another bulk edit of the same dataset (a captioning run, say) is in progress."""


# ---- the undo journal ----------------------------------------------------------------------------------------
def journal_path_for(folder: PictureRef) -> Path:
    """Where the undo journal for captions under ``folder`` lives: in the version's ``dataset`` folder when
    ``folder`` is that folder, its ``train``/``reg`` folder or a concept folder in them; else in ``folder``."""
    folder = Path(os.path.abspath(folder))
    for candidate in (folder, folder.parent, folder.parent.parent):
        if candidate.name == "dataset":
            return candidate / UNDO_FILE_NAME
    return folder / UNDO_FILE_NAME


_locks: Dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def _journal_lock(journal: Path) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(os.path.abspath(journal), threading.RLock())


class CaptionLock:
    """Holds the dataset's caption lock (re-entrant in one thread); bulk edits of one dataset never interleave,
    and a concept folder is not renamed under a running edit."""

    def __init__(self, journal: Path, timeout: Optional[float] = None):
        self.lock = _journal_lock(journal)
        self.timeout = _LOCK_TIMEOUT_S if timeout is None else timeout

    def __enter__(self) -> "CaptionLock":
        if not self.lock.acquire(timeout=self.timeout):
            raise CaptionBusy(tr("The captions of this dataset are being changed by another task (captioning, "
                                 "say). Try again when it has finished."))
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def caption_lock(journal: PictureRef, timeout: Optional[float] = None) -> CaptionLock:
    """A context manager holding the caption lock of the dataset whose journal is ``journal``; raises
    :class:`CaptionBusy` when another edit holds it longer than ``timeout`` seconds."""
    return CaptionLock(Path(os.path.abspath(journal)), timeout)


def _encode_content(data: Optional[bytes]) -> object:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _decode_content(value: object) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return str(value).encode("utf-8")


@dataclass(frozen=True)
class EditLabel:
    """What a bulk edit is called ("Add {tags}"), kept as its English template and values so that it is
    translated each time it is shown: the Undo button speaks the language of the page, not the one the edit was
    made in. Every template is a :func:`tr` key (its translation sits beside the other messages)."""

    template: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return tr(self.template, **self.values)

    def to_json(self) -> dict:
        return {"template": self.template, "values": {k: str(v) for k, v in self.values.items()}}

    @classmethod
    def from_json(cls, data: object) -> Optional["EditLabel"]:
        if not isinstance(data, dict) or not isinstance(data.get("template"), str):
            return None
        values = data.get("values")
        return cls(data["template"], {str(k): v for k, v in values.items()} if isinstance(values, dict) else {})


def label_text(data: dict) -> str:
    """The label of a journal, in the current language; a journal written before labels were kept as templates
    has only its text."""
    label = EditLabel.from_json(data.get("label_template"))
    return str(label) if label is not None else str(data.get("label", ""))


@dataclass
class EditResult:
    """What one bulk edit changed."""

    action: str
    label: str
    changed: List[Path] = field(default_factory=list)  # pictures whose caption file changed
    keep_tokens: Optional[int] = None  # set by the trigger-word tool
    message: str = ""


@dataclass(frozen=True)
class EditInfo:
    """The edit that :func:`undo_last_edit` would undo."""

    action: str
    label: str
    time: float
    files: int


@dataclass
class UndoResult:
    label: str
    restored: List[Path] = field(default_factory=list)  # caption files back to their content before the edit
    skipped: List[Tuple[Path, str]] = field(default_factory=list)  # left alone, and why
    message: str = ""


def _relative(journal: Path, path: Path) -> str:
    base = os.path.abspath(journal.parent)
    target = os.path.abspath(path)
    rel = os.path.relpath(target, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise CaptionError(tr("{path} is outside the dataset folder {folder}.", path=target, folder=base))
    return Path(rel).as_posix()


def _load_journal(journal: Path) -> Optional[dict]:
    try:
        data = read_json(journal, None)
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


class BulkEdit:
    """One undoable change of many caption files.

    ::

        with BulkEdit(journal, "remove_tags", EditLabel("Remove {tags}", {"tags": "dog"})) as edit:
            edit.stage(picture, ["sks", "dog"])   # new tags (or caption text) of one picture
        edit.result.changed

    Staged captions are written in batches (every ``flush_every`` pictures or ``flush_seconds``), so a long
    captioning run keeps its finished work if the process dies. Before each batch the journal is rewritten with
    the earlier content of every file this edit touched; the previous edit's journal is replaced only when this
    edit really changes a file, so an edit that changes nothing keeps the last undo available.
    """

    def __init__(self, journal: PictureRef, action: str, label: Union[EditLabel, str], *,
                 extension: str = CAPTION_EXTENSION, flush_every: int = 32, flush_seconds: float = 2.0,
                 lock_timeout: Optional[float] = None):
        self.journal = Path(os.path.abspath(journal))
        self.extension = normalise_extension(extension)
        self.label = label if isinstance(label, EditLabel) else None  # a plain text stays in its language
        self.result = EditResult(action=action, label=str(label))
        self._flush_every = max(1, int(flush_every))
        self._flush_seconds = flush_seconds
        self._lock = CaptionLock(self.journal, lock_timeout)
        self._entries: Dict[str, dict] = {}  # relative caption path → journal entry (in staging order)
        self._pending: Dict[Path, Tuple[Path, bytes]] = {}  # caption path → (picture, new bytes)
        self._changed: Dict[Path, Path] = {}  # caption path → picture, of files written
        self._last_flush = time.monotonic()
        self._open = False

    def __enter__(self) -> "BulkEdit":
        self._lock.__enter__()
        self._open = True
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.flush()  # what was computed before an error is kept (and undoable)
        finally:
            self._open = False
            self._lock.__exit__()
        self.result.changed = list(self._changed.values())

    def stage(self, picture: PictureRef, tags: Union[str, Sequence[str]], *,
              underscores_to_spaces: bool = False) -> bool:
        """Set the caption of ``picture``; False when the file already holds exactly that text."""
        if not self._open:
            raise RuntimeError("BulkEdit.stage outside its with-block")
        picture = Path(picture)
        path = caption_path(picture, self.extension)
        new = join_tags(parse_tags(tags, underscores_to_spaces=underscores_to_spaces)).encode("utf-8")
        rel = _relative(self.journal, path)
        current = self._pending[path][1] if path in self._pending else read_caption_bytes(path)
        if current == new:
            return False
        if rel not in self._entries:
            self._entries[rel] = {"path": rel, "before": _encode_content(read_caption_bytes(path))}
        self._entries[rel]["after"] = _encode_content(new)
        self._pending[path] = (picture, new)
        if len(self._pending) >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the journal, then the staged caption files."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        atomic_write_json(self.journal, {
            "format": 1,
            "action": self.result.action,
            "label": self.result.label,  # what older versions show
            "label_template": self.label.to_json() if self.label is not None else None,
            "extension": self.extension,
            "time": time.time(),
            "files": list(self._entries.values()),
        })
        pending, self._pending = self._pending, {}
        for path, (picture, data) in pending.items():
            atomic_write_bytes(path, data)
            self._changed[path] = picture


def last_edit(journal: PictureRef) -> Optional[EditInfo]:
    """The bulk edit that can be undone in this dataset, or ``None``."""
    data = _load_journal(Path(journal))
    if data is None:
        return None
    return EditInfo(action=str(data.get("action", "")), label=label_text(data),
                    time=float(data.get("time", 0.0)), files=len(data["files"]))


def undo_last_edit(journal: PictureRef) -> UndoResult:
    """Put back every caption file of the last bulk edit as it was before; then that edit is forgotten.

    A file that no longer holds what the edit wrote (edited since) is left as it is and named in
    ``skipped``. A file that cannot be written stays in the journal, so undo can be tried again.
    """
    journal = Path(os.path.abspath(journal))
    with CaptionLock(journal):
        data = _load_journal(journal)
        if data is None:
            return UndoResult(label="", message=tr("There is no caption edit to undo."))
        result = UndoResult(label=label_text(data))
        unresolved = []
        for entry in data["files"]:
            rel = Path(str(entry["path"]))
            if rel.is_absolute() or os.pardir in rel.parts:
                continue  # never written by BulkEdit: a journal edited by someone else
            path = journal.parent / rel
            before = _decode_content(entry.get("before"))
            after = _decode_content(entry.get("after"))
            current = read_caption_bytes(path)
            try:
                if current == after:
                    if before is None:
                        path.unlink()
                    else:
                        atomic_write_bytes(path, before)
                    result.restored.append(path)
                elif current == before:
                    result.restored.append(path)  # never written (the edit stopped before this file)
                else:
                    result.skipped.append((path, tr("changed after the edit; left as it is")))
            except OSError as exc:
                result.skipped.append((path, tr("cannot be written: {error}", error=exc.strerror or exc)))
                unresolved.append(entry)
        if unresolved:
            atomic_write_json(journal, {**data, "files": unresolved})
        else:
            try:
                journal.unlink()
            except FileNotFoundError:
                pass
    result.message = tr("Undid \"{label}\": {restored} caption file(s) restored.", label=result.label,
                        restored=len(result.restored))
    if result.skipped:
        shown = "; ".join(f"{p.name}: {why}" for p, why in result.skipped[:5])
        more = len(result.skipped) - 5
        result.message += " " + tr("{count} left alone: {files}", count=len(result.skipped), files=shown)
        if more > 0:
            result.message += " " + tr("and {count} more", count=more)
    return result


def relocate_journal(journal: PictureRef, old_folder: PictureRef, new_folder: PictureRef) -> None:
    """After a folder of the dataset was renamed (a concept's name or repeats), point the journal's entries at
    the new folder so that undo still finds the files."""
    journal = Path(os.path.abspath(journal))
    with CaptionLock(journal):
        data = _load_journal(journal)
        if data is None:
            return
        old_rel = _relative(journal, Path(old_folder)) + "/"
        new_rel = _relative(journal, Path(new_folder)) + "/"
        changed = False
        for entry in data["files"]:
            if str(entry["path"]).startswith(old_rel):
                entry["path"] = new_rel + str(entry["path"])[len(old_rel):]
                changed = True
        if changed:
            atomic_write_json(journal, data)
