"""Caption sidecars and the tag tools of the Captions step.

A picture ``dataset/train/10_dog/a.png`` is captioned by ``a.txt`` beside it: tags separated by commas, the
format sd-scripts reads and the WebUI's taggers write. This module reads and writes those files (atomically) and
edits them in bulk:

* :class:`CaptionSet` is one folder tree (``dataset/train`` with all its concept folders, ``dataset/reg``, or a
  single concept folder) seen as picture → tags, with the tag tools: trigger word, add / remove / replace, remove
  duplicates, sort, frequency table, "remove these tags so the LoRA learns them", edit one caption.
* Every bulk edit is a :class:`BulkEdit`: before a caption file is written, its previous content is stored in a
  journal, ``dataset/.caption_undo.json``. :func:`undo_last_edit` puts those files back, so the last bulk edit
  can be undone once, also after a page reload or a restart. A file changed again after the edit (a caption
  edited by hand, say) is left alone by the undo and named; undo never destroys work it did not do.

Tags are normalised on every write: trimmed, runs of whitespace collapsed, control characters dropped, Unicode
NFC. Two tags are "the same" (for removing, replacing, duplicates, frequencies) when they match ignoring case and
``_`` vs. space, because CLIP sees ``long_hair`` and ``Long hair`` alike after the WebUI's tokenisation rules.
Writing underscores as spaces (the WebUI's "use spaces instead of underscore" deepbooru option) is optional.

A caption file with several lines is read as one list of tags (the trainer reads only the first line; writing it
back joins the tags into that one line). Files are written as UTF-8 without a trailing newline; captions saved as
UTF-16 or with a BOM (Windows Notepad) are read.

Standard library only (plus the trainer's Pillow-only folder conventions): this runs inside the WebUI process.
"""
from __future__ import annotations

import base64
import os
import re
import threading
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from lib_trainer.common.files import atomic_write_bytes, atomic_write_json, read_json
from lib_trainer.common.i18n import tr
from lib_trainer.trainer.folders import IMAGE_EXTENSIONS

__all__ = [
    "CAPTION_EXTENSION", "UNDO_FILE_NAME", "KAOMOJI", "SORT_ORDERS", "PRESET_KINDS",
    "CaptionError", "CaptionBusy", "EditResult", "EditInfo", "UndoResult", "TagCount", "TagSuggestion",
    "normalize_tag", "tag_key", "split_tags", "join_tags", "keep_tokens_for", "merge_tags",
    "caption_path", "read_caption", "read_tags", "write_caption", "list_pictures", "picture_folders",
    "journal_path_for", "caption_lock", "BulkEdit", "last_edit", "undo_last_edit", "relocate_journal", "preset_kind",
    "CaptionSet",
]

CAPTION_EXTENSION = ".txt"
FALLBACK_EXTENSIONS = (".txt", ".caption")
UNDO_FILE_NAME = ".caption_undo.json"
SORT_ORDERS = ("alphabetical", "frequency")
PictureRef = Union[str, os.PathLike]

# Emoticon tags of the booru vocabulary whose underscore is part of the face, never a word separator (the list
# the WD14 tagger extension keeps as they are).
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
    "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})

_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u200b\ufeff]")
_SEPARATORS = re.compile(r"[,\r\n]")
_LOCK_TIMEOUT_S = 5.0


class CaptionError(ValueError):
    """A caption operation that cannot be done; the message says why."""


class CaptionBusy(CaptionError):
    """Another bulk edit of the same dataset (a captioning run, say) is in progress."""


# ---- tags --------------------------------------------------------------------------------------------------
def normalize_tag(tag: str, *, underscores_to_spaces: bool = False) -> str:
    """One tag trimmed, whitespace collapsed, control characters removed, NFC; with ``underscores_to_spaces``
    ``long_hair`` becomes ``long hair`` (emoticons like ``^_^`` stay as they are)."""
    tag = _CONTROL.sub("", unicodedata.normalize("NFC", str(tag)))
    tag = _WHITESPACE.sub(" ", tag).strip()
    if underscores_to_spaces and "_" in tag and tag not in KAOMOJI:
        tag = _WHITESPACE.sub(" ", tag.replace("_", " ")).strip()
    return tag


def tag_key(tag: str) -> str:
    """What two tags must share to count as the same tag: case and ``_`` vs. space do not matter."""
    return normalize_tag(tag, underscores_to_spaces=True).casefold()


def split_tags(text: Union[str, Iterable[str], None], *, underscores_to_spaces: bool = False) -> List[str]:
    """Tags of a caption (``"a, b\\nc"`` → ``["a", "b", "c"]``), each normalised, empty ones dropped.

    A list of strings is accepted too; each item may itself hold several comma-separated tags.
    """
    if text is None:
        return []
    parts: Iterable[str] = [text] if isinstance(text, str) else text
    tags: List[str] = []
    for part in parts:
        for piece in _SEPARATORS.split(str(part)):
            tag = normalize_tag(piece, underscores_to_spaces=underscores_to_spaces)
            if tag:
                tags.append(tag)
    return tags


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def keep_tokens_for(trigger_word: str) -> int:
    """The ``keep_tokens`` value that protects ``trigger_word`` when it is the caption's first tag(s): the number
    of comma-separated tags it is made of (``"sks dog"`` → 1, ``"sks, dog"`` → 2)."""
    return len(split_tags(trigger_word))


def _dedupe(tags: Iterable[str]) -> List[str]:
    seen = set()
    out = []
    for tag in tags:
        key = tag_key(tag)
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def merge_tags(first: Sequence[str], second: Sequence[str], *, trigger_word: Optional[str] = None) -> List[str]:
    """``first`` then the tags of ``second`` not already there; with ``trigger_word`` its tags lead and are not
    repeated later."""
    head = split_tags(trigger_word) if trigger_word else []
    return _dedupe([*head, *first, *second])


# ---- files -------------------------------------------------------------------------------------------------
def _normalise_extension(extension: str) -> str:
    extension = (extension or CAPTION_EXTENSION).strip()
    return extension if extension.startswith(".") else "." + extension


def caption_path(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> Path:
    """The caption file of ``picture``: same folder and stem (``a.b.png`` → ``a.b.txt``)."""
    picture = Path(picture)
    return picture.with_name(picture.stem + _normalise_extension(extension))


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def _read_bytes(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_caption(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> Optional[str]:
    """The text of the picture's caption file, or ``None`` when it has none. When there is no file with
    ``extension``, the other of ``.txt`` / ``.caption`` is read (as the trainer does)."""
    extension = _normalise_extension(extension)
    for ext in [extension] + [e for e in FALLBACK_EXTENSIONS if e != extension.lower()]:
        data = _read_bytes(caption_path(picture, ext))
        if data is not None:
            return _decode(data)
    return None


def read_tags(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> List[str]:
    return split_tags(read_caption(picture, extension))


def write_caption(picture: PictureRef, tags: Union[str, Sequence[str]], extension: str = CAPTION_EXTENSION,
                  *, underscores_to_spaces: bool = False) -> Path:
    """Write the picture's caption file atomically (normalised tags joined with ``", "``); not journaled — bulk
    changes go through :class:`BulkEdit`. Returns the file's path."""
    path = caption_path(picture, extension)
    text = join_tags(split_tags(tags, underscores_to_spaces=underscores_to_spaces))
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def list_pictures(folder: PictureRef) -> List[Path]:
    """The pictures lying directly in ``folder`` (sorted by name; hidden files left out)."""
    folder = Path(folder)
    try:
        children = sorted(folder.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for p in children if not _hidden(p) and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]


def picture_folders(root: PictureRef) -> List[Path]:
    """The folders of a tree that hold pictures: ``root`` itself when it does, and each non-hidden folder in it
    that does (``dataset/train`` → its ``<repeats>_<concept>`` folders)."""
    root = Path(root)
    folders = [root] if list_pictures(root) else []
    try:
        children = sorted((p for p in root.iterdir() if p.is_dir() and not _hidden(p)), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        children = []
    folders.extend(child for child in children if list_pictures(child))
    return folders


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


class _Locked:
    """Holds the dataset's caption lock (re-entrant in one thread); bulk edits of one dataset never interleave,
    and a concept folder is not renamed under a running edit."""

    def __init__(self, journal: Path, timeout: Optional[float] = None):
        self.lock = _journal_lock(journal)
        self.timeout = _LOCK_TIMEOUT_S if timeout is None else timeout

    def __enter__(self) -> "_Locked":
        if not self.lock.acquire(timeout=self.timeout):
            raise CaptionBusy(tr("The captions of this dataset are being changed by another task (captioning, "
                                 "say). Try again when it has finished."))
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def caption_lock(journal: PictureRef, timeout: Optional[float] = None) -> _Locked:
    """A context manager holding the caption lock of the dataset whose journal is ``journal``; raises
    :class:`CaptionBusy` when another edit holds it longer than ``timeout`` seconds."""
    return _Locked(Path(os.path.abspath(journal)), timeout)


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

        with BulkEdit(journal, "remove_tags", tr("Remove tags")) as edit:
            edit.stage(picture, ["sks", "dog"])   # new tags (or caption text) of one picture
        edit.result.changed

    Staged captions are written in batches (every ``flush_every`` pictures or ``flush_seconds``), so a long
    captioning run keeps its finished work if the process dies. Before each batch the journal is rewritten with
    the earlier content of every file this edit touched; the previous edit's journal is replaced only when this
    edit really changes a file, so an edit that changes nothing keeps the last undo available.
    """

    def __init__(self, journal: PictureRef, action: str, label: str, *, extension: str = CAPTION_EXTENSION,
                 flush_every: int = 32, flush_seconds: float = 2.0, lock_timeout: Optional[float] = None):
        self.journal = Path(os.path.abspath(journal))
        self.extension = _normalise_extension(extension)
        self.result = EditResult(action=action, label=label)
        self._flush_every = max(1, int(flush_every))
        self._flush_seconds = flush_seconds
        self._lock = _Locked(self.journal, lock_timeout)
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
        new = join_tags(split_tags(tags, underscores_to_spaces=underscores_to_spaces)).encode("utf-8")
        rel = _relative(self.journal, path)
        current = self._pending[path][1] if path in self._pending else _read_bytes(path)
        if current == new:
            return False
        if rel not in self._entries:
            self._entries[rel] = {"path": rel, "before": _encode_content(_read_bytes(path))}
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
            "label": self.result.label,
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
    return EditInfo(action=str(data.get("action", "")), label=str(data.get("label", "")),
                    time=float(data.get("time", 0.0)), files=len(data["files"]))


def undo_last_edit(journal: PictureRef) -> UndoResult:
    """Put back every caption file of the last bulk edit as it was before; then that edit is forgotten.

    A file that no longer holds what the edit wrote (edited since) is left as it is and named in
    ``skipped``. A file that cannot be written stays in the journal, so undo can be tried again.
    """
    journal = Path(os.path.abspath(journal))
    with _Locked(journal):
        data = _load_journal(journal)
        if data is None:
            return UndoResult(label="", message=tr("There is no caption edit to undo."))
        result = UndoResult(label=str(data.get("label", "")))
        unresolved = []
        for entry in data["files"]:
            rel = Path(str(entry["path"]))
            if rel.is_absolute() or os.pardir in rel.parts:
                continue  # never written by BulkEdit: a journal edited by someone else
            path = journal.parent / rel
            before = _decode_content(entry.get("before"))
            after = _decode_content(entry.get("after"))
            current = _read_bytes(path)
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
    with _Locked(journal):
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


# ---- "remove these tags so the LoRA learns them" -----------------------------------------------------------------
PRESET_KINDS = ("character", "person", "style", "product", "general")


def preset_kind(preset: Optional[str]) -> str:
    """The kind of subject a preset name trains: ``character`` (anime characters), ``person`` (real persons),
    ``style``, ``product`` (objects) or ``general`` when the name says none of these."""
    name = (preset or "").casefold()
    for kind, words in (("style", ("style", "art")),
                        ("product", ("product", "object", "item")),
                        ("person", ("person", "real", "photo", "face", "human", "people")),
                        ("character", ("character", "anime", "chara"))):
        if any(re.search(rf"(^|[^a-z]){re.escape(w)}", name) for w in words):
            return kind
    return "general"


_COLOURS = (
    "black|white|blonde|blond|brown|red|blue|green|purple|pink|orange|yellow|grey|gray|silver|aqua|"
    "light brown|light blue|dark blue|dark brown|light purple|dark green|dark|pale|multicolored|two-tone|"
    "gradient|streaked|colored|tan|golden|gold"
)
_TRAIT_NOUNS = "hair|eyes|pupils|skin|eyebrows|eyelashes|ears|tail|horns|wings|fur|sclera|inner hair"
# Constant traits of a character or a person: what the trigger word should carry instead of the caption. Each
# pattern is matched against the whole normalised tag (spaces, lower case).
_CHARACTER_TRAITS = [
    rf"(?:(?:{_COLOURS}) ){{1,2}}(?:{_TRAIT_NOUNS})",
    r"(?:very long|long|medium|short|very short) hair",
    r"(?:[a-z]+ )?bangs", r"(?:side |high |low )?ponytail", r"(?:low )?twintails", r"(?:twin |side |single )?braids?",
    r"(?:single |double )?hair bun", r"ahoge", r"sidelocks", r"drill hair", r"hime cut", r"bob cut", r"hair intakes",
    r"hair between eyes", r"hair over one eye", r"heterochromia", r"freckles", r"mole(?: under (?:eye|mouth))?",
    r"beard", r"mustache", r"facial hair", r"stubble", r"fangs?", r"dark-skinned (?:female|male)",
    r"(?:pointy|animal|cat|fox|dog|wolf|rabbit|horse|elf) ears", r"horns", r"(?:[a-z]+ )?tail", r"(?:[a-z]+ )?wings",
    r"halo", r"(?:flat|small|medium|large|huge) (?:chest|breasts)", r"slit pupils", r"tsurime", r"tareme",
]
_STYLE_TRAITS = [
    r"traditional media", r"faux traditional media", r"watercolor(?: \(medium\))?", r"oil painting(?: \(medium\))?",
    r"painting(?: \(medium\))?", r"acrylic paint(?: \(medium\))?", r"ink(?: \(medium\))?", r"sketch", r"lineart",
    r"monochrome", r"greyscale", r"realistic", r"photorealistic", r"anime coloring", r"flat color", r"cel shading",
    r"pixel art", r"chibi", r"3d", r"pastel colors", r"limited palette", r"impressionism", r"ukiyo-e",
    r"retro artstyle", r"\d{4}s \(style\)", r"official art", r"comic", r"halftone", r"chromatic aberration",
    r"film grain", r"colored pencil \(medium\)", r"graphite \(medium\)", r"marker \(medium\)", r"concept art",
]
_PRODUCT_TRAITS = [
    # a colour of the thing itself, not of its surroundings ("red bottle", not "white background")
    rf"(?!.*\b(?:background|theme|sky|wall|floor|border|outline|lighting|light)\b)"
    rf"(?:(?:{_COLOURS}) ){{1,2}}[a-z][a-z -]*",
    r"metal", r"metallic", r"wooden", r"wood", r"leather", r"glass", r"plastic", r"ceramic", r"fabric", r"logo",
    r"brand name(?: imitation)?", r"glossy", r"matte", r"transparent", r"shiny",
]
_TRAITS = {
    "character": _CHARACTER_TRAITS,
    "person": _CHARACTER_TRAITS,
    "style": _STYLE_TRAITS,
    "product": _PRODUCT_TRAITS,
    "general": _CHARACTER_TRAITS + _PRODUCT_TRAITS,
}
_TRAIT_REGEX = {kind: re.compile("|".join(f"(?:{p})" for p in pats)) for kind, pats in _TRAITS.items()}
_TRAIT_WHAT = {
    "character": "a constant trait of the character",
    "person": "a constant trait of the person",
    "style": "the style itself",
    "product": "the product's own look",
    "general": "a constant trait of the subject",
}


@dataclass(frozen=True)
class TagCount:
    tag: str  # the most common spelling
    count: int  # pictures with the tag


@dataclass(frozen=True)
class TagSuggestion:
    tag: str
    count: int
    share: float  # count / pictures
    reason: str


# ---- the caption set ------------------------------------------------------------------------------------------
class CaptionSet:
    """The captions of one folder tree (``dataset/train``, ``dataset/reg`` or one concept folder), with the tag
    tools. Captions are read from disk at each call, so the set always shows what the trainer will read.

    ``pictures`` arguments select pictures (their paths, or paths relative to ``root``); ``None`` means all.
    Each tool is one :class:`BulkEdit` and can be undone with :meth:`undo`.
    """

    def __init__(self, root: PictureRef, *, extension: str = CAPTION_EXTENSION,
                 journal: Optional[PictureRef] = None, trigger_word: Optional[str] = None):
        self.root = Path(os.path.abspath(root))
        self.extension = _normalise_extension(extension)
        self.journal = Path(os.path.abspath(journal)) if journal else journal_path_for(self.root)
        self.trigger_word = trigger_word

    def __repr__(self) -> str:
        return f"CaptionSet({str(self.root)!r})"

    # reading
    def pictures(self) -> List[Path]:
        return [p for folder in picture_folders(self.root) for p in list_pictures(folder)]

    def captions(self, pictures: Optional[Iterable[PictureRef]] = None) -> Dict[Path, List[str]]:
        """Picture → its tags (``[]`` when it has no caption), for all or the selected pictures."""
        return {p: read_tags(p, self.extension) for p in self._select(pictures)}

    def tags_of(self, picture: PictureRef) -> List[str]:
        return read_tags(self._select([picture])[0], self.extension)

    def caption_text(self, picture: PictureRef) -> str:
        """The caption as a person edits it (tags joined with ``", "``; ``""`` when it has none)."""
        return join_tags(self.tags_of(picture))

    def relative_name(self, picture: PictureRef) -> str:
        return Path(os.path.abspath(picture)).relative_to(self.root).as_posix()

    def frequency(self, pictures: Optional[Iterable[PictureRef]] = None) -> List[TagCount]:
        """Each tag with the number of pictures that have it, most frequent first (ties alphabetical)."""
        return _frequency(self.captions(pictures).values())

    def uncaptioned(self) -> List[Path]:
        return [p for p, tags in self.captions().items() if not tags]

    # tools
    def set_trigger_word(self, word: str, pictures: Optional[Iterable[PictureRef]] = None, *,
                         previous: Optional[str] = None) -> EditResult:
        """Make ``word`` the first tag of each caption (other copies of it are removed; so is ``previous``, an
        earlier trigger word, when given). The result's ``keep_tokens`` is the value that protects it."""
        trigger = split_tags(word)
        if not trigger:
            raise CaptionError(tr("The trigger word is empty: type a word, such as a name nobody uses (sks_dog)."))
        drop = {tag_key(t) for t in trigger} | {tag_key(t) for t in split_tags(previous)}
        keep_tokens = len(trigger)
        self.trigger_word = join_tags(trigger)
        result = self._edit("set_trigger_word", tr("Trigger word \"{word}\"", word=self.trigger_word), pictures,
                            lambda tags: trigger + [t for t in tags if tag_key(t) not in drop])
        result.keep_tokens = keep_tokens
        result.message += " " + tr("Set keep_tokens to {n} so that training never shuffles or drops it.",
                                   n=keep_tokens)
        return result

    def add_tags(self, tags: Union[str, Sequence[str]], pictures: Optional[Iterable[PictureRef]] = None, *,
                 at_start: bool = False) -> EditResult:
        """Add tags (a list, or comma-separated text) that a caption does not have yet; at the end, or with
        ``at_start`` in front (after the trigger word)."""
        new = _dedupe(split_tags(tags))
        if not new:
            raise CaptionError(tr("No tag to add: type one or more tags separated by commas."))

        def apply(old: List[str]) -> List[str]:
            have = {tag_key(t) for t in old}
            extra = [t for t in new if tag_key(t) not in have]
            if not extra:
                return old
            if at_start:
                head = self._protected(old)
                return old[:head] + extra + old[head:]
            return old + extra

        return self._edit("add_tags", tr("Add {tags}", tags=join_tags(new)), pictures, apply)

    def remove_tags(self, tags: Union[str, Sequence[str]],
                    pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        gone = {tag_key(t) for t in split_tags(tags)}
        if not gone:
            raise CaptionError(tr("No tag to remove: type or pick one or more tags."))
        return self._edit("remove_tags", tr("Remove {tags}", tags=join_tags(split_tags(tags))), pictures,
                          lambda old: [t for t in old if tag_key(t) not in gone])

    def replace_tags(self, mapping: Mapping[str, Union[str, Sequence[str]]],
                     pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        """Replace each tag ``old`` by ``mapping[old]`` in place (several comma-separated tags, or ``""`` to
        remove it). A replacement the caption already has is not added twice."""
        table: Dict[str, List[str]] = {}
        for old, new in mapping.items():
            key = tag_key(old)
            if not key:
                raise CaptionError(tr("The tag to replace is empty."))
            table[key] = split_tags(new)
        if not table:
            raise CaptionError(tr("No tag to replace."))

        def apply(old_tags: List[str]) -> List[str]:
            if not any(tag_key(t) in table for t in old_tags):
                return old_tags
            out: List[str] = []
            introduced = set()
            for tag in old_tags:
                key = tag_key(tag)
                if key in table:
                    for new_tag in table[key]:
                        introduced.add(tag_key(new_tag))
                        out.append(new_tag)
                else:
                    out.append(tag)
            seen = set()
            result = []
            for tag in out:
                key = tag_key(tag)
                if key in introduced and key in seen:
                    continue
                seen.add(key)
                result.append(tag)
            return result

        label = ", ".join(f"{old} → {join_tags(split_tags(new)) or '∅'}" for old, new in mapping.items())
        return self._edit("replace_tags", tr("Replace {what}", what=label), pictures, apply)

    def remove_duplicates(self, pictures: Optional[Iterable[PictureRef]] = None) -> EditResult:
        """Keep the first of tags that are the same (case and ``_`` vs. space ignored)."""
        return self._edit("remove_duplicates", tr("Remove duplicate tags"), pictures, _dedupe)

    def sort_tags(self, order: str = "alphabetical", pictures: Optional[Iterable[PictureRef]] = None, *,
                  keep_first: Optional[int] = None) -> EditResult:
        """Sort each caption's tags alphabetically or by how many pictures of the whole set have them (most
        frequent first, ties alphabetical). The first ``keep_first`` tags stay in place; by default the trigger
        word does when a caption starts with it."""
        if order not in SORT_ORDERS:
            raise CaptionError(tr("Unknown sort order {order}; use one of: {orders}.", order=order,
                                  orders=", ".join(SORT_ORDERS)))
        if keep_first is not None and keep_first < 0:
            raise CaptionError(tr("The number of tags to keep in front must be 0 or more."))
        if order == "frequency":
            counts = {tag_key(tc.tag): tc.count for tc in self.frequency()}

            def key(tag: str) -> Tuple:
                return (-counts.get(tag_key(tag), 0), tag_key(tag), tag)
        else:
            def key(tag: str) -> Tuple:
                return (tag_key(tag), tag)

        def apply(old: List[str]) -> List[str]:
            head = self._protected(old) if keep_first is None else min(keep_first, len(old))
            return old[:head] + sorted(old[head:], key=key)

        label = tr("Sort tags by frequency") if order == "frequency" else tr("Sort tags alphabetically")
        return self._edit("sort_tags", label, pictures, apply)

    def clean_tags(self, pictures: Optional[Iterable[PictureRef]] = None, *,
                   underscores_to_spaces: bool = False) -> EditResult:
        """Rewrite captions in the normal form (``a, b, c``); with ``underscores_to_spaces`` ``long_hair``
        becomes ``long hair`` (as the WebUI's deepbooru option writes it)."""
        label = tr("Underscores to spaces") if underscores_to_spaces else tr("Tidy captions")
        selected = self._select(pictures)
        with BulkEdit(self.journal, "clean_tags", label, extension=self.extension) as edit:
            for picture in selected:
                text = read_caption(picture, self.extension)
                if text is None:
                    continue
                edit.stage(picture, text, underscores_to_spaces=underscores_to_spaces)
        return self._finish(edit.result)

    def edit_caption(self, picture: PictureRef, text: Union[str, Sequence[str]]) -> EditResult:
        """Set one picture's caption by hand (normalised like every caption). Not an undoable bulk edit: the last
        bulk edit stays undoable and leaves this caption alone if it touched it."""
        picture = self._select([picture])[0]
        with _Locked(self.journal):
            old = read_tags(picture, self.extension)
            new = split_tags(text)
            result = EditResult(action="edit_caption", label=tr("Edit caption"))
            if new != old or not caption_path(picture, self.extension).exists():
                write_caption(picture, new, self.extension)
                result.changed.append(picture)
        result.message = tr("Saved the caption of {name}.", name=picture.name)
        return result

    def suggest_tags_to_remove(self, preset: Optional[str] = "character", *, min_share: float = 0.3,
                               limit: int = 15) -> List[TagSuggestion]:
        """Tags to remove so that the trigger word learns them instead of the caption carrying them.

        The seeds' advice for a character LoRA: drop "blue eyes", "long hair" and other constant traits; what
        stays in the caption is what may change between pictures (clothes, pose, background). The heuristic: a
        tag is suggested when it matches the small list of constant-trait patterns for the preset's kind
        (hair/eye/skin colours, hairstyles and body features for characters and persons; medium and rendering
        tags for styles; colours and materials for products) and at least ``min_share`` of the pictures have it.
        Most frequent first; the trigger word is never suggested.
        """
        kind = preset_kind(preset)
        regex = _TRAIT_REGEX[kind]
        captions = self.captions()
        total = len(captions)
        if total == 0:
            return []
        protected = {tag_key(t) for t in split_tags(self.trigger_word)}
        suggestions = []
        for tc in _frequency(captions.values()):
            key = tag_key(tc.tag)
            share = tc.count / total
            if key in protected or share < min_share or not regex.fullmatch(key):
                continue
            suggestions.append(TagSuggestion(
                tag=tc.tag, count=tc.count, share=share,
                reason=tr("in {count} of {total} pictures; {what}", count=tc.count, total=total,
                          what=tr(_TRAIT_WHAT[kind]))))
        return suggestions[:max(0, limit)]

    # undo
    def last_edit(self) -> Optional[EditInfo]:
        return last_edit(self.journal)

    def undo(self) -> UndoResult:
        return undo_last_edit(self.journal)

    # internals
    def _protected(self, tags: Sequence[str]) -> int:
        """How many leading tags are the trigger word (0 when there is none or the caption does not start with
        it)."""
        trigger = split_tags(self.trigger_word)
        if trigger and [tag_key(t) for t in tags[:len(trigger)]] == [tag_key(t) for t in trigger]:
            return len(trigger)
        return 0

    def _select(self, pictures: Optional[Iterable[PictureRef]]) -> List[Path]:
        everything = self.pictures()
        if pictures is None:
            return everything
        if isinstance(pictures, (str, os.PathLike)):
            pictures = [pictures]
        index: Dict[str, Path] = {}
        for p in everything:
            index[str(p)] = p
            index[p.relative_to(self.root).as_posix()] = p
        chosen: List[Path] = []
        unknown: List[str] = []
        for item in pictures:
            text = os.fspath(item)
            found = index.get(text) or index.get(os.path.abspath(text)) or index.get(Path(text).as_posix())
            if found is None:
                unknown.append(text)
            elif found not in chosen:
                chosen.append(found)
        if unknown:
            shown = ", ".join(Path(u).name for u in unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise CaptionError(tr("{count} selected picture(s) are not in this dataset: {names}",
                                  count=len(unknown), names=shown))
        return chosen

    def _edit(self, action: str, label: str, pictures: Optional[Iterable[PictureRef]], change) -> EditResult:
        selected = self._select(pictures)
        with BulkEdit(self.journal, action, label, extension=self.extension) as edit:
            for picture in selected:
                old = read_tags(picture, self.extension)
                new = list(change(list(old)))
                if new != old:
                    edit.stage(picture, new)
        return self._finish(edit.result)

    @staticmethod
    def _finish(result: EditResult) -> EditResult:
        if result.changed:
            result.message = tr("{label}: {count} caption(s) changed. Undo puts them back.", label=result.label,
                                count=len(result.changed))
        else:
            result.message = tr("{label}: no caption needed a change.", label=result.label)
        return result


def _frequency(captions: Iterable[Sequence[str]]) -> List[TagCount]:
    counts: Counter = Counter()
    spellings: Dict[str, Counter] = {}
    for tags in captions:
        seen = set()
        for tag in tags:
            key = tag_key(tag)
            spellings.setdefault(key, Counter())[tag] += 1
            if key not in seen:
                seen.add(key)
                counts[key] += 1
    result = [TagCount(spellings[key].most_common(1)[0][0], n) for key, n in counts.items()]
    result.sort(key=lambda tc: (-tc.count, tag_key(tc.tag), tc.tag))
    return result
