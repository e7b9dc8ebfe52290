"""Caption sidecar files: a picture ``dataset/train/10_dog/a.png`` is captioned by ``a.txt`` beside it, tags separated by
commas, the format sd-scripts reads and the WebUI's taggers write.

A caption file with several lines is read as one list of tags (the trainer reads only the first line; writing it
back joins the tags into that one line). Files are written atomically as UTF-8 without a trailing newline;
captions saved as UTF-16 or with a BOM (Windows Notepad) are read. Standard library only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from lib_trainer.common.files import atomic_write_bytes
from lib_trainer.dataset.captions.tags import join_tags, parse_tags
from lib_trainer.trainer.folders import IMAGE_EXTENSIONS

CAPTION_EXTENSION = ".txt"
FALLBACK_EXTENSIONS = (".txt", ".caption")
PictureRef = Union[str, os.PathLike]


class CaptionError(ValueError):
    """A caption operation that cannot be done; the message says why."""


# ---- files -------------------------------------------------------------------------------------------------
def normalise_extension(extension: str) -> str:
    extension = (extension or CAPTION_EXTENSION).strip()
    return extension if extension.startswith(".") else "." + extension


def caption_path(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> Path:
    """The caption file of ``picture``: same folder and stem (``a.b.png`` → ``a.b.txt``)."""
    picture = Path(picture)
    return picture.with_name(picture.stem + normalise_extension(extension))


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def read_caption_bytes(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_caption(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> Optional[str]:
    """The text of the picture's caption file, or ``None`` when it has none. When there is no file with
    ``extension``, the other of ``.txt`` / ``.caption`` is read (as the trainer does)."""
    extension = normalise_extension(extension)
    for ext in [extension] + [e for e in FALLBACK_EXTENSIONS if e != extension.lower()]:
        data = read_caption_bytes(caption_path(picture, ext))
        if data is not None:
            return _decode(data)
    return None


def read_tags(picture: PictureRef, extension: str = CAPTION_EXTENSION) -> List[str]:
    return parse_tags(read_caption(picture, extension))


def write_caption(picture: PictureRef, tags: Union[str, Sequence[str]], extension: str = CAPTION_EXTENSION,
                  *, underscores_to_spaces: bool = False) -> Path:
    """Write the picture's caption file atomically (normalised tags joined with ``", "``); not journaled — bulk
    changes go through :class:`BulkEdit`. Returns the file's path."""
    path = caption_path(picture, extension)
    text = join_tags(parse_tags(tags, underscores_to_spaces=underscores_to_spaces))
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
