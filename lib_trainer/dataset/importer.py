"""Import pictures into a version's ``dataset/source/``: uploaded files, ``.zip`` archives, or a server folder.

Rules:

* Originals are stored **untouched** (byte for byte) under a safe, unique name: the original name with
  characters Windows refuses replaced (Unicode letters and spaces are kept), reserved device names avoided,
  the extension matching the content, and a short content hash added when the name is taken. No two pictures
  in ``source/`` share a stem (case-insensitively), so each has one caption file.
* ``.txt`` / ``.caption`` files beside a picture (same folder, same stem) are imported with it.
* Exact duplicates (same bytes) within one import, and pictures already in ``source/``, are noticed and named.
* Every file that cannot be used is skipped and named with a reason; the rest import.
* Archives: members with ``../`` or absolute paths (zip-slip) are refused, and so are members whose size or
  compression ratio looks like a zip bomb; nothing is ever extracted to a path taken from the archive.

``source/.import-index.json`` remembers each stored file's hash (and original name), so that later imports
notice pictures already there without re-reading them all.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import stat
import threading
import unicodedata
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from lib_trainer.dataset.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageInfo,
    ImageProblem,
    extension_for,
    inspect_image,
    is_caption_name,
    is_image_name,
    sniff_format,
)
from lib_trainer.common.files import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from lib_trainer.common.i18n import tr

__all__ = [
    "INDEX_NAME",
    "ImportOptions",
    "ImportItem",
    "ImportReport",
    "import_pictures",
    "import_zip",
    "import_folder",
    "safe_name_stem",
    "source_index",
]

PathLike = Union[str, "os.PathLike[str]"]
Input = Union[PathLike, Tuple[str, PathLike]]
Progress = Callable[[int, int, str], None]

INDEX_NAME = ".import-index.json"
_SYSTEM_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".thumbnails"}
_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
_UNSAFE_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')


@dataclass
class ImportOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    #: Largest single file (picture or archive member) read, in bytes.
    max_file_bytes: int = 200 * 1024 * 1024
    #: Largest total an archive may unpack to, in bytes; members beyond it are skipped.
    max_archive_bytes: int = 8 * 1024 * 1024 * 1024
    #: A member that unpacks to more than this many times its packed size (and over 8 MiB) is refused.
    max_compression_ratio: float = 100.0
    #: Most files looked at in one import (folders and archives with more are cut off, and that is said).
    max_files: int = 50_000
    max_caption_bytes: int = 1024 * 1024
    #: Threads that read, hash and check pictures (Pillow decodes without holding the GIL).
    workers: Optional[int] = None


@dataclass
class ImportItem:
    """The outcome for one input file (a picture, a caption or anything else)."""

    name: str  # as the person knows it: the file name, "archive.zip/folder/member.jpg" or the path in the folder
    kind: str  # picture | caption | other
    status: str  # imported | duplicate | already_imported | skipped
    message: str  # in the person's language
    reason: str = ""  # machine code of why it was skipped (ImageProblem codes, "zip_slip", "zip_bomb", …)
    stored_as: Optional[str] = None  # file name in source/ (the existing one for duplicates)
    size: Optional[Tuple[int, int]] = None  # (width, height) as displayed, for pictures
    sha256: Optional[str] = None
    notes: List[str] = field(default_factory=list)  # e.g. "animated GIF: only the first frame is used"


@dataclass
class ImportReport:
    source_dir: str
    items: List[ImportItem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # about the whole import (a cut-off folder, a bad archive)
    stopped: bool = False

    def _pictures(self, status: str) -> List[ImportItem]:
        return [i for i in self.items if i.kind == "picture" and i.status == status]

    @property
    def imported(self) -> List[ImportItem]:
        return self._pictures("imported")

    @property
    def duplicates(self) -> List[ImportItem]:
        return self._pictures("duplicate") + self._pictures("already_imported")

    @property
    def skipped(self) -> List[ImportItem]:
        return [i for i in self.items if i.status == "skipped"]

    @property
    def captions(self) -> List[ImportItem]:
        return [i for i in self.items if i.kind == "caption" and i.status == "imported"]

    def summary(self) -> str:
        text = tr(
            "{imported} pictures imported, {captions} captions, {duplicates} duplicates noticed, {skipped} files skipped.",
            imported=len(self.imported), captions=len(self.captions), duplicates=len(self.duplicates),
            skipped=len(self.skipped),
        )
        if self.stopped:
            text += " " + tr("The import was stopped before the end.")
        return text

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for item in data["items"]:
            if item["size"] is not None:
                item["size"] = list(item["size"])
        data["summary"] = self.summary()
        return data

    def to_markdown(self) -> str:
        """The report for the tab: file names as code."""
        return self._render(lambda name: f"- `{_md(name)}`", "- ")

    def to_text(self) -> str:
        """The same report as plain text, for a terminal: no Markdown."""
        return self._render(lambda name: f"  {name}", "  ")

    def _render(self, item_name: Callable[[str], str], note_prefix: str) -> str:
        lines = [self.summary()]
        lines += [f"{note_prefix}{note}" for note in self.notes]
        problems = [i for i in self.items if i.status != "imported" or i.notes]
        if problems:
            lines.append("")
            for item in problems:
                text = "; ".join([item.message] + item.notes) if item.status != "imported" else "; ".join(item.notes)
                lines.append(f"{item_name(item.name)}: {text}")
        return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("`", "'")


# --- names ------------------------------------------------------------------------------------------------------


def safe_name_stem(name: str, max_bytes: int = 120) -> str:
    """A file-name stem from ``name`` that every OS accepts; Unicode letters and spaces are kept.

    Characters Windows refuses become ``_``; leading dots (hidden files) and trailing dots or spaces go; device
    names (``CON``, ``NUL``, ``COM1``…) get a ``_`` in front; the result is at most ``max_bytes`` in UTF-8.
    """
    text = unicodedata.normalize("NFC", name)
    text = " ".join(text.split())  # tabs, newlines and runs of spaces become one space
    text = _UNSAFE_CHARS.sub("_", text)
    text = text.lstrip(". ").rstrip(". ")
    if not text:
        text = "picture"
    if text.split(".")[0].lower() in _RESERVED:
        text = "_" + text
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", errors="ignore").rstrip(". ") or "picture"
    return text


#: How names stored without the zip's UTF-8 flag are read, first that decodes them whole: UTF-8 (macOS, 7-Zip,
#: most tools), then GBK (the "Send to → Compressed folder" of Chinese Windows, our users' commonest archive),
#: then the zip standard's cp437. A Western name with accents in cp437 can also decode as GBK; such archives
#: are rarer here than Chinese ones, and the name only becomes the imported file's name.
LEGACY_ZIP_ENCODINGS = ("utf-8", "gbk")


def _zip_member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its archiver meant it (see :data:`LEGACY_ZIP_ENCODINGS`)."""
    name = info.filename
    if info.flag_bits & 0x800:
        return name
    try:
        raw = name.encode("cp437")  # zipfile decoded the stored bytes as cp437: get them back
    except UnicodeEncodeError:
        return name
    for encoding in LEGACY_ZIP_ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return name


def _unsafe_member_path(name: str) -> bool:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    parts = re.split(r"[\\/]+", name)
    return any(part == ".." for part in parts)


def _is_system_file(name: str) -> bool:
    parts = [p.lower() for p in re.split(r"[\\/]+", name) if p]
    base = parts[-1] if parts else ""
    return any(p in _SYSTEM_NAMES for p in parts) or base.startswith("._")


# --- the source index -------------------------------------------------------------------------------------------


def source_index(source_dir: PathLike) -> Dict[str, Dict[str, Any]]:
    """``{stored name: {"sha256", "size", "mtime_ns", "original"}}`` for every picture in ``source_dir``.

    Read from ``.import-index.json`` where it still matches the file (size and mtime); files that are new or
    changed are hashed. Pictures put there by hand count too.
    """
    source_dir = Path(source_dir)
    stored = read_json(source_dir / INDEX_NAME, default={}) or {}
    known = stored.get("files", {}) if isinstance(stored, dict) else {}
    index: Dict[str, Dict[str, Any]] = {}
    if not source_dir.is_dir():
        return index
    for path in sorted(source_dir.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or not is_image_name(path.name) or not path.is_file():
            continue
        st = path.stat()
        entry = known.get(path.name)
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            index[path.name] = dict(entry)
        else:
            original = entry.get("original") if isinstance(entry, dict) else None
            index[path.name] = {
                "sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "original": original,
            }
    return index


def _save_index(source_dir: Path, index: Dict[str, Dict[str, Any]]) -> None:
    atomic_write_json(source_dir / INDEX_NAME, {"version": 1, "files": index})


# --- collecting the inputs --------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    name: str  # shown to the person
    base: str  # file name without folders
    group: str  # where it sits (folder or archive folder): captions pair within a group
    size: int
    read: Callable[[], bytes]
    read_head: Callable[[], bytes]  # the first 16 bytes, to recognise a picture under an unknown extension
    kind: str = "picture"


class _Collector:
    def __init__(self, report: ImportReport, options: ImportOptions, source_dir: Path,
                 allowed_roots: Optional[Sequence[Path]]) -> None:
        self.report = report
        self.options = options
        self.source_dir = source_dir
        self.allowed_roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots is not None else None
        self.candidates: List[_Candidate] = []
        self.zips: List[zipfile.ZipFile] = []
        self.cut_off = False

    def skip(self, name: str, reason: str, message: str, kind: str = "other") -> None:
        self.report.items.append(ImportItem(name=name, kind=kind, status="skipped", message=message, reason=reason))

    def _room(self) -> bool:
        if len(self.candidates) >= self.options.max_files:
            if not self.cut_off:
                self.cut_off = True
                self.report.notes.append(
                    tr("Only the first {n} files were looked at; import the rest separately.", n=self.options.max_files)
                )
            return False
        return True

    def add(self, name: str, base: str, group: str, size: int, read: Callable[[], bytes],
            read_head: Callable[[], bytes]) -> None:
        if _is_system_file(name):
            self.skip(name, "system_file", tr("system file, not a picture"))
            return
        if size > self.options.max_file_bytes and not is_caption_name(base):
            self.skip(name, "too_large", tr("too large: {mb} MB, the limit is {limit} MB",
                                            mb=f"{size / 2**20:,.0f}", limit=f"{self.options.max_file_bytes / 2**20:,.0f}"),
                      kind="picture" if is_image_name(base) else "other")
            return
        if not self._room():
            return
        kind = "picture" if is_image_name(base) else "caption" if is_caption_name(base) else "other"
        self.candidates.append(_Candidate(name, base, group, size, read, read_head, kind))

    def add_path(self, path: Path, display: Optional[str] = None) -> None:
        upload = display is not None  # (name, path) pairs: files the server itself received
        display = display or path.name
        try:
            if path.is_dir():
                self.add_folder(path, checked=upload)
                return
            size = path.stat().st_size
        except OSError as exc:
            self.skip(display, "unreadable", tr("cannot be read ({detail})", detail=exc.strerror or str(exc)))
            return
        if not upload and not self._allowed(path):
            self.skip(display, "not_allowed", tr("this folder may not be read from"))
            return
        head = b""
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError:
            pass
        if Path(display).suffix.lower() == ".zip" or (head == b"PK\x03\x04" and not is_image_name(display)):
            self.add_zip(path, display)
            return
        self.add(display, Path(display).name, "", size, lambda p=path: p.read_bytes(), lambda p=path: _file_head(p))

    def _allowed(self, path: Path) -> bool:
        if self.allowed_roots is None:
            return True
        real = path.resolve()
        return any(real == root or root in real.parents for root in self.allowed_roots)

    def add_folder(self, folder: Path, checked: bool = False) -> None:
        root = folder.resolve()
        source = self.source_dir.resolve()
        if root == source or source in root.parents or root in source.parents:
            self.report.notes.append(
                tr("The folder {folder} contains (or is) the dataset's own source folder; it was not imported.", folder=str(folder))
            )
            return
        if not checked and not self._allowed(folder):
            self.skip(str(folder), "not_allowed", tr("this folder may not be read from"))
            return
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _SYSTEM_NAMES)
            rel_dir = os.path.relpath(dirpath, folder)
            group = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                shown = f"{group}/{filename}" if group else filename
                if filename.startswith(".") and not filename.startswith("._"):
                    continue  # hidden files (.DS_Store is named below through _is_system_file when it matters)
                if path.is_symlink():
                    try:
                        target = path.resolve(strict=True)
                    except OSError:
                        self.skip(shown, "unreadable", tr("broken link"))
                        continue
                    if root not in target.parents:
                        self.skip(shown, "link_outside", tr("a link to a file outside the folder; not followed"))
                        continue
                try:
                    size = path.stat().st_size
                except OSError as exc:
                    self.skip(shown, "unreadable", tr("cannot be read ({detail})", detail=exc.strerror or str(exc)))
                    continue
                if filename.lower().endswith(".zip"):
                    self.skip(shown, "archive_in_folder", tr("archives inside a folder are not opened; import the .zip itself"))
                    continue
                self.add(shown, filename, "dir:" + group, size, lambda p=path: p.read_bytes(), lambda p=path: _file_head(p))
                if self.cut_off:
                    return

    def add_zip(self, path: Path, display: str) -> None:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            self.skip(display, "bad_archive", tr("not a readable zip archive ({detail})", detail=str(exc)))
            return
        self.zips.append(zf)
        lock = threading.Lock()  # one ZipFile object is not safe to read from several threads at once
        total = 0
        opts = self.options
        for info in zf.infolist():
            name = _zip_member_name(info)
            shown = f"{display}/{name}"
            if info.is_dir():
                continue
            if _unsafe_member_path(name):
                self.skip(shown, "zip_slip", tr("unsafe path in the archive (leads outside the folder); not extracted"))
                continue
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                self.skip(shown, "link", tr("a link inside the archive; not followed"))
                continue
            if info.flag_bits & 0x1:
                self.skip(shown, "encrypted", tr("encrypted (password-protected) member"))
                continue
            if _is_system_file(name):
                self.skip(shown, "system_file", tr("system file, not a picture"))
                continue
            base = PurePosixPath(name.replace("\\", "/")).name
            if base.lower().endswith(".zip"):
                self.skip(shown, "nested_archive", tr("archives inside an archive are not opened"))
                continue
            packed = max(1, info.compress_size)
            if info.file_size > 8 * 2**20 and info.file_size / packed > opts.max_compression_ratio:
                self.skip(shown, "zip_bomb", tr(
                    "unpacks to {mb} MB from {packed} KB (ratio {ratio:.0f}:1), which looks like a zip bomb; not extracted",
                    mb=f"{info.file_size / 2**20:,.0f}", packed=f"{info.compress_size / 1024:,.0f}",
                    ratio=info.file_size / packed))
                continue
            if info.file_size <= opts.max_file_bytes:
                if total + info.file_size > opts.max_archive_bytes:
                    self.skip(shown, "zip_bomb", tr(
                        "the archive unpacks to more than {gb} GB; this member and the rest were not extracted",
                        gb=f"{opts.max_archive_bytes / 2**30:,.1f}"))
                    continue
                total += info.file_size
            group = "zip:" + display + "/" + str(PurePosixPath(name.replace("\\", "/")).parent)

            def read(info: zipfile.ZipInfo = info, zf: zipfile.ZipFile = zf, lock: threading.Lock = lock) -> bytes:
                with lock:
                    with zf.open(info) as fh:  # zipfile stops at file_size and checks the CRC
                        return fh.read(info.file_size + 1)

            def read_head(info: zipfile.ZipInfo = info, zf: zipfile.ZipFile = zf, lock: threading.Lock = lock) -> bytes:
                with lock:
                    with zf.open(info) as fh:
                        return fh.read(16)

            self.add(shown, base, group, info.file_size, read, read_head)
            if self.cut_off:
                return

    def close(self) -> None:
        for zf in self.zips:
            zf.close()


def _file_head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(16)


# --- checking pictures ------------------------------------------------------------------------------------------


@dataclass
class _Checked:
    data: Optional[bytes] = None
    sha256: Optional[str] = None
    info: Optional[ImageInfo] = None
    problem: Optional[ImageProblem] = None


def _check(candidate: _Candidate, options: ImportOptions) -> _Checked:
    try:
        data = candidate.read()
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        text = str(exc)
        if "CRC" in text or isinstance(exc, (zipfile.BadZipFile, EOFError)):
            return _Checked(problem=ImageProblem("corrupt", tr("damaged inside the archive ({detail})", detail=text)))
        return _Checked(problem=ImageProblem("unreadable", tr("cannot be read ({detail})", detail=getattr(exc, "strerror", None) or text)))
    if len(data) > options.max_file_bytes:
        return _Checked(problem=ImageProblem("too_large", tr("too large: {mb} MB, the limit is {limit} MB",
                                                             mb=f"{len(data) / 2**20:,.0f}", limit=f"{options.max_file_bytes / 2**20:,.0f}")))
    digest = hashlib.sha256(data).hexdigest()
    try:
        info = inspect_image(data, name=candidate.base, max_pixels=options.max_pixels, min_side=options.min_side)
    except ImageProblem as problem:
        return _Checked(sha256=digest, problem=problem)
    return _Checked(data=data, sha256=digest, info=info)


def _checked_in_order(candidates: List[_Candidate], options: ImportOptions,
                      stop: Optional[threading.Event]) -> Iterator[Tuple[_Candidate, _Checked]]:
    """``(candidate, result)`` in input order, checked on a thread pool a few files ahead (memory stays bounded)."""
    workers = options.workers or min(4, os.cpu_count() or 1)
    ahead = workers + 1  # files in memory at once: bounded, whatever the folder's size
    if workers <= 1:
        for cand in candidates:
            if stop is not None and stop.is_set():
                return
            yield cand, _check(cand, options)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tt-import") as pool:
        pending: List[Tuple[_Candidate, concurrent.futures.Future]] = []
        it = iter(candidates)
        for cand in it:
            pending.append((cand, pool.submit(_check, cand, options)))
            if len(pending) >= ahead:
                break
        while pending:
            cand, future = pending.pop(0)
            if stop is not None and stop.is_set():
                for _, f in pending:
                    f.cancel()
                return
            yield cand, future.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_check, nxt, options)))


# --- the import -------------------------------------------------------------------------------------------------


def _normalise_inputs(inputs: Union[Input, Iterable[Input]]) -> List[Tuple[Optional[str], Path]]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: List[Tuple[Optional[str], Path]] = []
    for item in inputs:  # type: ignore[union-attr]
        if isinstance(item, tuple):
            display, path = item
            out.append((str(display), Path(path)))
        else:
            out.append((None, Path(item)))
    return out


def import_pictures(
    inputs: Union[Input, Iterable[Input]],
    source_dir: PathLike,
    *,
    options: Optional[ImportOptions] = None,
    allowed_roots: Optional[Sequence[PathLike]] = None,
    progress: Optional[Progress] = None,
    stop: Optional[threading.Event] = None,
) -> ImportReport:
    """Import files, ``.zip`` archives and folders into ``source_dir`` (created if needed).

    ``inputs`` are paths, or ``(name, path)`` pairs when the file's real name differs from its temporary path
    (browser uploads). A folder is walked recursively; an archive is read member by member. ``allowed_roots``,
    when given, limits which server folders and files the plain paths of ``inputs`` may lead to (paths a person
    typed: only the folders the admin allowed); ``(name, path)`` pairs are uploads the server received itself and
    are always read — never pass a typed path as a pair.
    ``progress(done, total, name)`` is called after each file; setting ``stop`` ends the import after the current
    file (what is imported stays, the report says ``stopped``).
    """
    options = options or ImportOptions()
    source = Path(source_dir)
    source.mkdir(parents=True, exist_ok=True)
    report = ImportReport(source_dir=str(source))
    collector = _Collector(report, options, source, [Path(r) for r in allowed_roots] if allowed_roots is not None else None)
    try:
        for display, path in _normalise_inputs(inputs):
            collector.add_path(path, display)
            if collector.cut_off:
                break
        _import_candidates(collector.candidates, source, options, report, progress, stop)
    finally:
        collector.close()
    return report


def import_zip(zip_path: PathLike, source_dir: PathLike, **kwargs: Any) -> ImportReport:
    """Import the pictures (and their captions) of one ``.zip`` archive."""
    return import_pictures([(Path(zip_path).name, Path(zip_path))], source_dir, **kwargs)


def import_folder(folder: PathLike, source_dir: PathLike, **kwargs: Any) -> ImportReport:
    """Import every picture (and caption) under a folder on the server, recursively."""
    return import_pictures([Path(folder)], source_dir, **kwargs)


def _unique_stem(stem: str, sha: str, taken: Set[str]) -> str:
    candidate = stem
    if candidate.lower() in taken:
        candidate = f"{stem}_{sha[:8]}"
        n = 2
        while candidate.lower() in taken:
            candidate = f"{stem}_{sha[:8]}_{n}"
            n += 1
    taken.add(candidate.lower())
    return candidate


def _import_candidates(
    candidates: List[_Candidate],
    source: Path,
    options: ImportOptions,
    report: ImportReport,
    progress: Optional[Progress],
    stop: Optional[threading.Event],
) -> None:
    index = source_index(source)
    by_hash: Dict[str, str] = {}
    for stored, entry in index.items():
        by_hash.setdefault(entry["sha256"], stored)
    taken: Set[str] = {p.stem.lower() for p in source.iterdir() if not p.name.startswith(".")}
    batch: Dict[str, str] = {}  # sha256 → name (as shown) of the first picture in this import
    resolved: Dict[Tuple[str, str], str] = {}  # (group, stem lower-cased) → stored stem, for captions
    pictures = [c for c in candidates if c.kind != "caption"]
    captions = [c for c in candidates if c.kind == "caption"]
    total = len(candidates)
    done = 0
    for cand in pictures:  # a picture under an unknown extension (photo.jpeg_large, image.jfif~) still imports
        if cand.kind == "other" and sniff_format(_head(cand)) is not None:
            cand.kind = "picture"

    def advance(name: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, name)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    changed = False
    try:
        for cand in pictures:
            if cand.kind == "other":
                ext = Path(cand.base).suffix.lower() or tr("no extension")
                report.items.append(ImportItem(cand.name, "other", "skipped", tr(
                    "unsupported file type ({ext}); pictures must be PNG, JPEG, WebP, BMP, GIF or TIFF", ext=ext),
                    reason="unsupported"))
                advance(cand.name)
        for cand, checked in _checked_in_order([c for c in pictures if c.kind == "picture"], options, stop):
            item = _store_picture(cand, checked, source, index, by_hash, batch, taken, resolved)
            changed = changed or item.status == "imported"
            report.items.append(item)
            advance(cand.name)
        for cand in captions:
            if stopped():
                break
            report.items.append(_store_caption(cand, source, resolved, options))
            advance(cand.name)
        report.stopped = stopped()
    finally:
        if changed or not (source / INDEX_NAME).exists():
            _save_index(source, index)


def _head(cand: _Candidate) -> bytes:
    try:
        return cand.read_head()
    except Exception:
        return b""


def _store_picture(
    cand: _Candidate,
    checked: _Checked,
    source: Path,
    index: Dict[str, Dict[str, Any]],
    by_hash: Dict[str, str],
    batch: Dict[str, str],
    taken: Set[str],
    resolved: Dict[Tuple[str, str], str],
) -> ImportItem:
    key = (cand.group, Path(cand.base).stem.lower())
    if checked.problem is not None:
        return ImportItem(cand.name, "picture", "skipped", checked.problem.message, reason=checked.problem.code,
                          sha256=checked.sha256)
    assert checked.info is not None and checked.data is not None and checked.sha256 is not None
    info, sha = checked.info, checked.sha256
    notes = []
    if info.animated:
        notes.append(tr("animated: only the first frame is used"))
    existing = by_hash.get(sha)
    if existing is not None:
        resolved[key] = Path(existing).stem
        if sha in batch:
            return ImportItem(cand.name, "picture", "duplicate",
                              tr("the same picture as {other} in this import; imported once", other=batch[sha]),
                              reason="duplicate", stored_as=existing, size=info.size, sha256=sha)
        return ImportItem(cand.name, "picture", "already_imported",
                          tr("already imported as {stored}", stored=existing),
                          reason="already_imported", stored_as=existing, size=info.size, sha256=sha)
    stem = _unique_stem(safe_name_stem(Path(cand.base).stem), sha, taken)
    stored = stem + extension_for(info.format, cand.base)
    target = source / stored
    atomic_write_bytes(target, checked.data)
    st = target.stat()
    index[stored] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "original": cand.name}
    by_hash[sha] = stored
    batch[sha] = cand.name
    resolved[key] = stem
    return ImportItem(cand.name, "picture", "imported", tr("imported as {stored}", stored=stored),
                      stored_as=stored, size=info.size, sha256=sha, notes=notes)


def _store_caption(cand: _Candidate, source: Path, resolved: Dict[Tuple[str, str], str],
                   options: ImportOptions) -> ImportItem:
    stem = resolved.get((cand.group, Path(cand.base).stem.lower()))
    if stem is None:
        return ImportItem(cand.name, "caption", "skipped",
                          tr("caption without a picture of the same name beside it (or its picture was skipped)"),
                          reason="orphan_caption")
    if cand.size > options.max_caption_bytes:
        return ImportItem(cand.name, "caption", "skipped", tr("caption file too large ({kb} KB)", kb=f"{cand.size / 1024:,.0f}"),
                          reason="too_large")
    ext = Path(cand.base).suffix.lower()
    target = source / (stem + ext)
    if target.exists():
        return ImportItem(cand.name, "caption", "skipped",
                          tr("its picture already has a caption ({stored}); that one is kept", stored=target.name),
                          reason="caption_exists", stored_as=target.name)
    try:
        data = cand.read()
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        return ImportItem(cand.name, "caption", "skipped", tr("cannot be read ({detail})", detail=str(exc)), reason="unreadable")
    atomic_write_bytes(target, data)
    return ImportItem(cand.name, "caption", "imported", tr("imported as {stored}", stored=target.name), stored_as=target.name)
