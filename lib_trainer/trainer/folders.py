"""Reading a dataset laid out in kohya sd-scripts' folder convention.

::

    train_data_dir/
        10_cute_dog/          <repeats>_<concept>: each picture is used 10 times per epoch
            001.png
            001.txt           its caption (the extension is the config's caption_extension)
        1_dog/
    reg_data_dir/             optional regularization pictures, same convention
        1_dog/

Conventions carried over from sd-scripts (so a dataset trains the same here and there):

* A folder is read when its name is a whole number of repeats, optionally followed by ``_`` and the concept
  (``10_cute_dog`` → 10 repeats, concept ``cute_dog``); other folders, hidden ones, subfolders of concept
  folders and pictures lying directly in ``train_data_dir`` are not read (they are listed in ``scan.ignored``).
  A repeat count of 0 is not read either.
* A picture's caption is the first non-empty line of the file with the same stem and the caption extension; a
  picture without one is captioned with its folder's concept.
* Regularization pictures are balanced against the training pictures: per epoch, as many reg uses as training
  uses (see ``reg_balance``).
* ``ss_tag_frequency`` counts each picture's tags once (lower-cased), per folder name, reg folders included.

What is added here: every picture is opened and fully decoded once, so broken files are reported in plain words
(``scan.skipped``) instead of crashing the run hours later; a caption extension that is not found falls back to
the other of ``.txt`` / ``.caption``; captions saved with a BOM or as UTF-16 (Windows Notepad) are read.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, UnidentifiedImageError

from lib_trainer.common.i18n import tr

__all__ = [
    "IMAGE_EXTENSIONS",
    "ORIENTATION_TAG",
    "TRANSPOSE_FOR_ORIENTATION",
    "MAX_PIXELS",
    "ImageEntry",
    "FolderInfo",
    "DatasetScan",
    "parse_folder_name",
    "check_image",
    "open_rgb",
    "scan_dataset",
    "reg_balance",
    "epoch_items",
    "describe_empty",
]

#: Picture extensions read (compared case-insensitively). GIF and TIFF: the first frame.
IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: Largest picture accepted, in pixels: Pillow's own decompression-bomb error threshold (2 × 89,478,485).
MAX_PIXELS = 178_956_970

_CAPTION_FALLBACKS = (".txt", ".caption")
# Files that may sit next to pictures without being worth a mention.
_SIDECAR_EXTENSIONS = {".txt", ".caption", ".tags", ".npz", ".json", ".toml", ".yaml", ".yml"}
_FOLDER_NAME = re.compile(r"([0-9]+)(?:_(.*))?", re.DOTALL)
ORIENTATION_TAG = 0x0112
_T = getattr(Image, "Transpose", Image)  # Pillow >= 9.1 has the enum; older ones the constants
TRANSPOSE_FOR_ORIENTATION = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}


@dataclass(frozen=True)
class ImageEntry:
    """One readable picture of the dataset."""

    path: Path
    caption: str
    repeats: int  # the folder's repeat count
    concept: str  # folder name after the first "_" ("" for a folder named just "10")
    folder: str  # the folder's name, e.g. "10_cute_dog"
    is_reg: bool
    size: Optional[Tuple[int, int]] = None  # (width, height) as displayed, i.e. after EXIF orientation
    caption_file: Optional[Path] = None  # None: no caption file, the concept was used

    @property
    def width(self) -> int:
        return self.size[0] if self.size else 0

    @property
    def height(self) -> int:
        return self.size[1] if self.size else 0


@dataclass(frozen=True)
class FolderInfo:
    """A folder that was read (named like ``10_concept``), whether or not it held readable pictures."""

    path: Path
    name: str
    repeats: int
    concept: str
    is_reg: bool
    image_count: int  # readable pictures
    skipped_count: int  # pictures that could not be read (see DatasetScan.skipped)


@dataclass
class DatasetScan:
    train_data_dir: Path
    reg_data_dir: Optional[Path]
    caption_extension: str
    entries: List[ImageEntry] = field(default_factory=list)  # training pictures first, then reg; sorted
    folders: List[FolderInfo] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)  # unreadable pictures and why
    ignored: List[Tuple[Path, str]] = field(default_factory=list)  # folders/files not read and why
    warnings: List[str] = field(default_factory=list)  # readable but worth telling (captions, …)

    @property
    def train_entries(self) -> List[ImageEntry]:
        return [e for e in self.entries if not e.is_reg]

    @property
    def reg_entries(self) -> List[ImageEntry]:
        return [e for e in self.entries if e.is_reg]

    @property
    def is_empty(self) -> bool:
        """True when there is no readable training picture (reg pictures alone cannot train)."""
        return not any(not e.is_reg for e in self.entries)

    @property
    def num_train_items(self) -> int:
        """Training pictures × their repeats: uses per epoch (sd-scripts' ``ss_num_train_images``)."""
        return sum(e.repeats for e in self.entries if not e.is_reg)

    @property
    def num_reg_items(self) -> int:
        """Reg pictures × their repeats before balancing (sd-scripts' ``ss_num_reg_images``)."""
        return sum(e.repeats for e in self.entries if e.is_reg)

    def tag_frequency(self) -> Dict[str, Dict[str, int]]:
        """``ss_tag_frequency``: folder name → {tag: number of pictures with it}; tags lower-cased."""
        result: Dict[str, Dict[str, int]] = {}
        for entry in self.entries:
            counts = result.setdefault(entry.folder, {})
            for tag in entry.caption.split(","):
                tag = " ".join(tag.split()).lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return result

    def dataset_dirs(self, reg: bool = False) -> Dict[str, Dict[str, int]]:
        """``ss_dataset_dirs`` (or ``ss_reg_dataset_dirs`` with ``reg=True``): folder name →
        ``{"n_repeats", "img_count"}``, for folders with at least one readable picture."""
        return {
            f.name: {"n_repeats": f.repeats, "img_count": f.image_count}
            for f in self.folders
            if f.is_reg == reg and f.image_count > 0
        }


def parse_folder_name(name: str) -> Optional[Tuple[int, str]]:
    """``"10_cute_dog"`` → ``(10, "cute_dog")``; ``"10"`` → ``(10, "")``; anything else → ``None``.

    A repeat count of 0 parses (as ``(0, concept)``); the scanner does not read such a folder.
    """
    match = _FOLDER_NAME.fullmatch(name)
    if not match:
        return None
    return int(match.group(1)), match.group(2) or ""


def _too_large(size: Optional[Tuple[int, int]], pixels: Optional[int], max_pixels: int) -> str:
    limit = f"the limit is {max_pixels / 1e6:.0f} megapixels"
    if size:
        w, h = size
        return f"too large: {w}×{h} ({w * h / 1e6:.0f} megapixels; {limit})"
    if pixels:
        return f"too large: {pixels / 1e6:.0f} megapixels ({limit})"
    return f"too large ({limit})"


def _header_size(path: Path) -> Optional[Tuple[int, int]]:
    """The size a picture's header claims, without Pillow's decompression-bomb check (for the message only)."""
    try:
        Image.init()
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                accepted = accept(prefix) if accept else True
                if not accepted or isinstance(accepted, (str, bytes)):
                    continue
                fp.seek(0)
                try:
                    im = factory(fp, str(path))
                except Exception:
                    continue
                return tuple(im.size)  # type: ignore[return-value]
    except Exception:
        return None
    return None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG)
    except Exception:  # a corrupt EXIF block: show the picture as stored
        return 1
    return value if isinstance(value, int) and value in TRANSPOSE_FOR_ORIENTATION else 1


def check_image(
    path: Union[str, Path], *, max_pixels: int = MAX_PIXELS, decode: bool = True
) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """Open a picture (and with ``decode`` decode it fully). Returns ``(size, None)`` with the displayed
    ``(width, height)`` when it is usable, else ``(None, reason)`` with a reason in plain words."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".").upper() or "picture"
    if kind == "JPG":
        kind = "JPEG"
    try:
        if path.stat().st_size == 0:
            return None, tr("empty file")
    except OSError as exc:
        return None, tr("cannot be read ({error})", error=exc.strerror or exc)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return None, _too_large(_header_size(path), int(found.group(1)) if found else None, max_pixels)
    except UnidentifiedImageError:
        return None, tr("not an image")
    except OSError as exc:
        if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError)):
            return None, tr("cannot be read ({error})", error=exc.strerror or exc)
        return None, tr("corrupt {kind} file", kind=kind)
    except Exception:
        return None, tr("corrupt {kind} file", kind=kind)
    with im:
        kind = im.format or kind
        w, h = im.size
        if w < 1 or h < 1:
            return None, tr("{kind} file without pixels ({w}×{h})", kind=kind, w=w, h=h)
        if w * h > max_pixels:
            return None, _too_large((w, h), None, max_pixels)
        if decode:
            try:
                if kind == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                    # Decode at 1/8 scale: every byte is still entropy-decoded (so truncation and corruption
                    # are caught) at a fraction of the time and memory.
                    im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
                im.load()
            except Exception:
                return None, tr("truncated or corrupt {kind}", kind=kind)
        if _orientation(im) in (5, 6, 7, 8):
            w, h = h, w
    return (w, h), None


def open_rgb(path: Union[str, Path]) -> Image.Image:
    """Load a picture the way it is trained: first frame, EXIF orientation applied, RGB; transparent areas are
    laid over white. Its size equals the ``size`` the scan recorded."""
    with Image.open(path) as im:
        im.load()
        transpose = TRANSPOSE_FOR_ORIENTATION.get(_orientation(im))
        out = im.transpose(transpose) if transpose is not None else im.copy()
    if out.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        out = out.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = out.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        out.mode == "P" and "transparency" in out.info
    )
    if has_alpha:
        rgba = out.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return out.convert("RGB")


def _normalise_extension(extension: str) -> str:
    extension = (extension or "").strip()
    if not extension:
        return ".caption"
    return extension if extension.startswith(".") else "." + extension


def _read_caption(path: Path) -> Tuple[str, List[str]]:
    """First non-empty line of a caption file, stripped; and notes for the warnings list."""
    notes: List[str] = []
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            notes.append(tr("caption file {file} is not UTF-8; unreadable characters were replaced (save it as UTF-8)",
                            file=path))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        notes.append(tr("caption file {file} has {count} lines; only the first is used", file=path, count=len(lines)))
    return (lines[0] if lines else ""), notes


def _hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _sorted_children(folder: Path) -> List[Path]:
    return sorted(folder.iterdir(), key=lambda p: p.name)


@dataclass
class _PendingFolder:
    path: Path
    repeats: int
    concept: str
    is_reg: bool
    pictures: List[Path]
    others: Dict[str, Path]  # name → path of every non-picture file, for caption lookup
    others_lower: Dict[str, Path] = field(default_factory=dict)  # the same, lower-cased names

    def __post_init__(self) -> None:
        for name, path in sorted(self.others.items(), reverse=True):
            self.others_lower[name.lower()] = path


def _collect(root: Path, is_reg: bool, scan: DatasetScan) -> List[_PendingFolder]:
    pending: List[_PendingFolder] = []
    try:
        children = _sorted_children(root)
    except OSError as exc:
        scan.warnings.append(tr("cannot list {folder}: {error}", folder=root, error=exc.strerror or exc))
        return pending
    for child in children:
        if _hidden(child):
            continue
        if child.is_dir():
            parsed = parse_folder_name(child.name)
            if parsed is None:
                scan.ignored.append(
                    (child, "folder name does not start with a repeat count (name it like 10_concept)")
                )
                continue
            repeats, concept = parsed
            if repeats < 1:
                scan.ignored.append((child, "repeat count is 0, so the folder is not used"))
                continue
            pictures: List[Path] = []
            others: Dict[str, Path] = {}
            try:
                files = _sorted_children(child)
            except OSError as exc:
                scan.ignored.append((child, f"cannot be listed ({exc.strerror or exc})"))
                continue
            for item in files:
                if _hidden(item):
                    continue
                if item.is_dir():
                    scan.ignored.append((item, "subfolders of a concept folder are not read"))
                elif item.suffix.lower() in IMAGE_EXTENSIONS:
                    pictures.append(item)
                else:
                    others[item.name] = item
            pending.append(_PendingFolder(child, repeats, concept, is_reg, pictures, others))
        elif child.suffix.lower() in IMAGE_EXTENSIONS:
            scan.ignored.append(
                (child, f"picture lies directly in {root.name}; only folders named like 10_concept are read")
            )
    return pending


def _caption_for(picture: Path, folder: _PendingFolder, extensions: Sequence[str]) -> Tuple[Optional[Path], str]:
    for ext in extensions:
        name = picture.stem + ext
        found = folder.others.get(name) or folder.others_lower.get(name.lower())
        if found is not None and found.is_file():
            return found, ext
    return None, ""


def scan_dataset(
    train_data_dir: Union[str, Path],
    reg_data_dir: Union[str, Path, None] = None,
    caption_extension: str = ".caption",
    *,
    max_pixels: int = MAX_PIXELS,
    check_images: bool = True,
    workers: Optional[int] = None,
) -> DatasetScan:
    """Scan a training folder (and optionally a regularization folder).

    ``caption_extension`` is the config's (``".txt"`` or ``"txt"``; sd-scripts' default is ``".caption"``).
    With ``check_images`` every picture is fully decoded (in ``workers`` threads); without it only headers are
    read (fast, but a truncated file is not caught). Never raises for an empty or missing dataset: check
    ``scan.is_empty`` and show ``describe_empty(scan)``.
    """
    train_root = Path(train_data_dir)
    reg_root = Path(reg_data_dir) if reg_data_dir not in (None, "") else None
    extension = _normalise_extension(caption_extension)
    extensions = [extension] + [e for e in _CAPTION_FALLBACKS if e != extension.lower()]
    scan = DatasetScan(train_root, reg_root, extension)

    if reg_root is not None and reg_root.exists() and train_root.exists():
        try:
            same = reg_root.resolve() == train_root.resolve()
        except OSError:
            same = False
        if same:
            scan.warnings.append(tr(
                "the regularization folder is the training folder ({folder}); its pictures are used as both",
                folder=train_root))

    pending: List[_PendingFolder] = []
    for root, is_reg in ((train_root, False), (reg_root, True)):
        if root is None:
            continue
        if not root.is_dir():
            if root.exists():
                scan.warnings.append(tr("{folder} is not a folder", folder=root))
            elif is_reg:
                scan.warnings.append(tr("the regularization folder {folder} does not exist", folder=root))
            else:
                scan.warnings.append(tr("the training folder {folder} does not exist", folder=root))
            continue
        pending.extend(_collect(root, is_reg, scan))

    pictures = [p for folder in pending for p in folder.pictures]
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)

    def check(path: Path) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
        return check_image(path, max_pixels=max_pixels, decode=check_images)

    with warnings.catch_warnings():
        # Pictures between Pillow's warning and error thresholds are fine here; max_pixels decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if n_workers > 1 and len(pictures) > 1:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                results = list(pool.map(check, pictures))
        else:
            results = [check(p) for p in pictures]
    outcome = dict(zip(pictures, results))

    for folder in pending:
        readable = skipped = 0
        missing: List[str] = []
        fallback_used: Dict[str, int] = {}
        stems: Dict[str, List[str]] = {}
        for picture in folder.pictures:
            size, reason = outcome[picture]
            if reason is not None:
                scan.skipped.append((picture, reason))
                skipped += 1
                continue
            caption_file, used_ext = _caption_for(picture, folder, extensions)
            caption = ""
            if caption_file is not None:
                try:
                    caption, notes = _read_caption(caption_file)
                    scan.warnings.extend(notes)
                except OSError as exc:
                    scan.warnings.append(tr("cannot read caption file {file}: {error}", file=caption_file,
                                            error=exc.strerror or exc))
                    caption_file = None
                if caption_file is not None and not caption:
                    scan.warnings.append(tr("caption file {file} is empty; the folder's concept is used",
                                            file=caption_file))
                    caption_file = None
                elif caption_file is not None and used_ext.lower() != extension.lower():
                    fallback_used[used_ext] = fallback_used.get(used_ext, 0) + 1
            if caption_file is None:
                caption = folder.concept
                missing.append(picture.name)
            stems.setdefault(picture.stem, []).append(picture.name)
            scan.entries.append(
                ImageEntry(
                    path=picture,
                    caption=caption,
                    repeats=folder.repeats,
                    concept=folder.concept,
                    folder=folder.path.name,
                    is_reg=folder.is_reg,
                    size=size,
                    caption_file=caption_file,
                )
            )
            readable += 1
        scan.folders.append(
            FolderInfo(folder.path, folder.path.name, folder.repeats, folder.concept, folder.is_reg, readable, skipped)
        )
        name = folder.path.name
        if missing:
            shown = ", ".join(missing[:5]) + (tr(" and {count} more", count=len(missing) - 5) if len(missing) > 5 else "")
            if folder.concept:
                scan.warnings.append(tr(
                    "{count} picture(s) in {folder} have no {extension} caption; they are captioned '{concept}' (the "
                    "folder's concept): {names}", count=len(missing), folder=name, extension=extension,
                    concept=folder.concept, names=shown))
            else:
                scan.warnings.append(tr(
                    "{count} picture(s) in {folder} have no {extension} caption and the folder names no concept, so "
                    "they train with an empty caption: {names}", count=len(missing), folder=name, extension=extension,
                    names=shown))
        for used_ext, count in sorted(fallback_used.items()):
            scan.warnings.append(tr("{count} caption(s) in {folder} were read from {used} files (the config says "
                                    "{extension})", count=count, folder=name, used=used_ext, extension=extension))
        for stem, names in sorted(stems.items()):
            if len(names) > 1:
                scan.warnings.append(tr("{names} in {folder} share the caption file of '{stem}'",
                                        names=", ".join(names), folder=name, stem=stem))
        if not folder.pictures:
            scan.warnings.append(tr("folder {folder} holds no pictures", folder=name))

    scan.entries.sort(key=lambda e: (e.is_reg, e.folder, e.path.name))
    scan.folders.sort(key=lambda f: (f.is_reg, f.name))
    return scan


def reg_balance(scan: DatasetScan) -> List[Tuple[ImageEntry, int]]:
    """How many times each regularization picture is used per epoch, as sd-scripts balances them.

    The target is ``scan.num_train_items`` (training pictures × repeats). A first pass takes reg pictures in
    order with their folder's repeats until the target is reached (so extra reg pictures are left out, and the
    total can exceed the target by less than one folder's repeat count, as in sd-scripts); if the target is not
    reached, further passes add one use per picture in order until it is. Pictures left out are not returned.
    """
    target = scan.num_train_items
    regs = scan.reg_entries
    if target <= 0 or not regs:
        return []
    uses: List[List] = []
    total = 0
    for entry in regs:
        uses.append([entry, entry.repeats])
        total += entry.repeats
        if total >= target:
            break
    i = 0
    while total < target:
        uses[i % len(uses)][1] += 1
        total += 1
        i += 1
    return [(entry, count) for entry, count in uses]


def epoch_items(scan: DatasetScan) -> List[ImageEntry]:
    """Every use of a picture in one epoch, in a fixed order: each training picture ``repeats`` times, then the
    balanced regularization pictures. Shuffling is the batcher's job."""
    items: List[ImageEntry] = []
    for entry in scan.train_entries:
        items.extend([entry] * entry.repeats)
    for entry, count in reg_balance(scan):
        items.extend([entry] * count)
    return items


def describe_empty(scan: DatasetScan) -> str:
    """Why the scan found no training picture, in plain words: what was looked for and where."""
    root = scan.train_data_dir
    if not scan.is_empty:
        return ""
    lines: List[str] = []
    if not root.exists():
        return tr("The training folder {folder} does not exist.", folder=root)
    if not root.is_dir():
        return tr("The training folder {folder} is not a folder.", folder=root)
    train_folders = [f for f in scan.folders if not f.is_reg]
    loose = [p for p, _ in scan.ignored if p.parent == root and p.is_file()]
    odd = [p for p, _ in scan.ignored if p.parent == root and p.is_dir()]
    exts = ", ".join(IMAGE_EXTENSIONS)
    if not train_folders:
        lines.append(tr("No folder named like 10_concept (a repeat count, an underscore, the concept) in {folder}.",
                        folder=root))
        if odd:
            names = ", ".join(p.name for p in odd[:5]) + (" …" if len(odd) > 5 else "")
            lines.append(tr("These folders were not read because their names do not start with a repeat count: "
                            "{names}.", names=names))
        if loose:
            lines.append(tr("{count} picture(s) lie directly in {folder}; move them into a folder such as {example}.",
                            count=len(loose), folder=root, example=root / "10_concept"))
    else:
        for folder in train_folders:
            if folder.skipped_count:
                reasons = [f"{p.name}: {r}" for p, r in scan.skipped if p.parent == folder.path]
                shown = "; ".join(reasons[:3]) + (" …" if len(reasons) > 3 else "")
                lines.append(tr("Folder {folder} has no readable pictures ({count} skipped: {reasons}).",
                                folder=folder.name, count=folder.skipped_count, reasons=shown))
            else:
                lines.append(tr("Folder {folder} has no pictures (looked for {extensions}).", folder=folder.name,
                                extensions=exts))
    if scan.reg_entries:
        lines.append(tr("Regularization pictures alone cannot train a LoRA; add training pictures."))
    return "\n".join(lines)
