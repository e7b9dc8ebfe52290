"""Open one picture safely and normalise it to the RGB image that training sees.

What a pile of pictures from the internet, a phone or a scanner brings, and what is done about it here:

* **Formats.** PNG, JPEG (and MPO, the multi-picture JPEG some cameras write), WebP, BMP, GIF and TIFF are
  accepted; an animated GIF or a multi-page TIFF gives its first frame. Anything else is refused as an
  unsupported type, and a file that is no picture at all as "not an image" — decided by the content, never by
  the file's extension.
* **Decompression bombs.** Only the header is read before the size is checked, so a tiny file that claims
  30000×30000 pixels is refused without allocating them. Pillow's own bomb check is not used for that, because
  it is a process-wide setting the WebUI owns; the plugins are called the way ``Image.open`` calls them.
* **Truncated or damaged files** are found by decoding every byte (a JPEG at 1/8 scale, which still
  entropy-decodes everything, at a fraction of the time).
* **Normalisation:** EXIF orientation applied; CMYK, YCbCr, palette, 1-bit, 16-bit and 32-bit-float pictures
  turned into 8-bit RGB; transparency laid over a chosen background (white by default).

Standard library, Pillow and numpy only: this runs inside the WebUI process.
"""
from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from lib_trainer.common.i18n import tr
from lib_trainer.trainer.folders import ORIENTATION_TAG, TRANSPOSE_FOR_ORIENTATION

__all__ = [
    "IMAGE_EXTENSIONS",
    "CAPTION_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "WHITE",
    "ImageProblem",
    "ImageInfo",
    "inspect_image",
    "open_image",
    "to_rgb",
    "parse_background",
    "is_image_name",
    "sniff_format",
    "is_caption_name",
    "extension_for",
    "iter_images",
]

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
RGB = Tuple[int, int, int]

#: Picture extensions looked at in folders and archives (lower case). The trainer reads the same ones.
IMAGE_EXTENSIONS: Tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff",
)
#: Caption files that may sit beside a picture (same stem).
CAPTION_EXTENSIONS: Tuple[str, ...] = (".txt", ".caption")

#: Pillow format → the extensions a file of that format may keep (the first is used when it has another one).
SUPPORTED_FORMATS: Dict[str, Tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "MPO": (".jpg", ".jpeg", ".mpo"),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
}
# Order in which the plugins are asked; JPEG's plugin itself hands MPO files to the MPO plugin.
_PROBE_ORDER = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO")

#: Largest picture accepted, in pixels: Pillow's default warning threshold (about 9459×9459, 270 MB as RGB).
DEFAULT_MAX_PIXELS = 89_478_485
#: Smallest side accepted by default; anything smaller is useless for training at any resolution.
DEFAULT_MIN_SIDE = 64

WHITE: RGB = (255, 255, 255)

# EXIF orientation → the transpose that undoes it: the trainer reads pictures with the same table.
_ORIENTATION_TAG = ORIENTATION_TAG
_TRANSPOSE = TRANSPOSE_FOR_ORIENTATION
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageProblem(Exception):
    """A picture that cannot be used. ``code`` is stable (for programs), ``message`` is for people.

    Codes: ``empty``, ``not_image``, ``unsupported``, ``truncated``, ``corrupt``, ``too_large``, ``too_small``,
    ``unreadable``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` found. ``width``/``height`` are as displayed (after EXIF orientation)."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1
    animated: bool = False
    has_alpha: bool = False

    @property
    def size(self) -> Tuple[int, int]:
        return self.width, self.height

    @property
    def extension(self) -> str:
        return SUPPORTED_FORMATS.get(self.format, (".png",))[0]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_caption_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in CAPTION_EXTENSIONS


def sniff_format(head: bytes) -> Optional[str]:
    """The supported format whose signature starts ``head`` (the file's first 16 bytes or more), else None."""
    Image.preinit()
    for fmt in _PROBE_ORDER:
        if fmt not in Image.OPEN:
            Image.init()
        entry = Image.OPEN.get(fmt)
        if entry is None or entry[1] is None:
            continue
        try:
            accepted = entry[1](head[:16])
        except Exception:
            continue
        if accepted and not isinstance(accepted, (str, bytes)):
            return fmt
    return None


def extension_for(format: str, name: str = "") -> str:
    """The extension a file of ``format`` is stored under: its own when it fits the format, else the usual one."""
    allowed = SUPPORTED_FORMATS.get(format, (".png",))
    ext = os.path.splitext(name)[1].lower()
    return ext if ext in allowed and ext in IMAGE_EXTENSIONS else allowed[0]


def iter_images(folder: Union[str, os.PathLike], recursive: bool = False) -> Iterator[Path]:
    """Picture files in ``folder`` by extension, sorted by name, hidden files and folders left out."""
    folder = Path(folder)
    try:
        children = sorted(folder.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if recursive:
                yield from iter_images(child, recursive=True)
        elif is_image_name(child.name) and child.is_file():
            yield child


def parse_background(value: Union[str, Sequence[int], None]) -> RGB:
    """``"white"``, ``"black"``, ``"gray"``, ``"#RRGGBB"``, ``"#RGB"`` or ``(r, g, b)`` → an RGB tuple."""
    if value is None:
        return WHITE
    if isinstance(value, str):
        text = value.strip().lower()
        named = {"white": WHITE, "black": (0, 0, 0), "gray": (127, 127, 127), "grey": (127, 127, 127)}
        if text in named:
            return named[text]
        match = re.fullmatch(r"#?([0-9a-f]{3}|[0-9a-f]{6})", text)
        if match:
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(c * 2 for c in digits)
            return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        raise ValueError(tr("Background colour must be white, black, gray or #RRGGBB, not {value!r}.", value=value))
    items = tuple(int(v) for v in value)
    if len(items) != 3 or not all(0 <= v <= 255 for v in items):
        raise ValueError(tr("Background colour must be three numbers from 0 to 255, not {value!r}.", value=value))
    return items  # type: ignore[return-value]


# --- opening ----------------------------------------------------------------------------------------------------


def _kind_label(name: str) -> str:
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    return {"jpg": "JPEG", "jpe": "JPEG", "jfif": "JPEG", "tif": "TIFF"}.get(ext, ext.upper() or "picture")


def _identify(fp: IO[bytes], name: str) -> Image.Image:
    """Open ``fp`` with the plugin of a supported format, reading only the header.

    This is what ``Image.open`` does minus its decompression-bomb check (which raises before the caller can
    choose its own limit and would refuse nothing when the WebUI turned it off).
    """
    fp.seek(0)
    prefix = fp.read(16)
    if not prefix:
        raise ImageProblem("empty", tr("empty file"))
    Image.preinit()
    for fmt in _PROBE_ORDER:
        if fmt not in Image.OPEN:
            Image.init()
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, (str, bytes)):
            continue
        fp.seek(0)
        try:
            return factory(fp, name)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
        except (OSError, EOFError, ValueError) as exc:
            raise ImageProblem("corrupt", tr("damaged {kind} file ({detail})", kind=fmt, detail=_short(exc))) from None
    raise _unidentified(fp, name)


def _unidentified(fp: IO[bytes], name: str) -> ImageProblem:
    """Tell a picture of another format (unsupported) from something that is no picture."""
    fp.seek(0)
    head = fp.read(16)
    other = None
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in SUPPORTED_FORMATS or accept is None:
            continue
        try:
            accepted = accept(head)
        except Exception:
            continue
        if accepted and not isinstance(accepted, (str, bytes)):
            other = fmt
            break
    if other is not None:
        return ImageProblem("unsupported", tr("unsupported picture type ({format}); use PNG, JPEG, WebP, BMP, GIF or TIFF", format=other))
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ImageProblem("unsupported", tr("WebP support is missing in this Pillow"))
    return ImageProblem("not_image", tr("not an image ({kind} name, but the content is not a picture)", kind=_kind_label(name)))


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "…"


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block: show the picture as stored
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info)


def _looks_cut_off(fp: IO[bytes], fmt: str) -> bool:
    """Whether the file lacks its end marker; only needed when the WebUI (or an extension) told Pillow to
    accept truncated files, which makes ``load`` succeed on them."""
    if fmt not in ("JPEG", "MPO", "PNG"):
        return False
    fp.seek(0, os.SEEK_END)
    end = fp.tell()
    fp.seek(max(0, end - 65536))
    tail = fp.read()
    return (b"IEND" not in tail[-64:]) if fmt == "PNG" else (b"\xff\xd9" not in tail)


def _check_size(im: Image.Image, orientation: int, max_pixels: int, min_side: int) -> Tuple[int, int]:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageProblem("corrupt", tr("picture without pixels ({w}×{h})", w=w, h=h))
    if w * h > max_pixels:
        raise ImageProblem(
            "too_large",
            tr(
                "too large: {w}×{h} is {mp} megapixels, the limit is {limit} megapixels",
                w=w, h=h, mp=f"{w * h / 1e6:,.0f}", limit=f"{max_pixels / 1e6:,.0f}",
            ),
        )
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if min(w, h) < min_side:
        raise ImageProblem(
            "too_small", tr("too small: {w}×{h} px, at least {min} px on each side is needed", w=w, h=h, min=min_side)
        )
    return w, h


class _Opened:
    """A file object for ``source`` (bytes or a path) that reports problems as :class:`ImageProblem`."""

    def __init__(self, source: Source, name: Optional[str]) -> None:
        self.source = source
        self.name = name if name is not None else (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "")
        self.fp: Optional[IO[bytes]] = None

    def __enter__(self) -> IO[bytes]:
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            self.fp = io.BytesIO(self.source)
            return self.fp
        try:
            if os.path.getsize(self.source) == 0:
                raise ImageProblem("empty", tr("empty file"))
            self.fp = open(self.source, "rb")
        except ImageProblem:
            raise
        except OSError as exc:
            raise ImageProblem("unreadable", tr("cannot be read ({detail})", detail=exc.strerror or _short(exc))) from None
        return self.fp

    def __exit__(self, *exc_info: object) -> None:
        if self.fp is not None:
            self.fp.close()


def inspect_image(
    source: Source,
    *,
    name: Optional[str] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    decode: bool = True,
) -> ImageInfo:
    """Check that ``source`` (a path or the file's bytes) is a usable picture; raise :class:`ImageProblem` if not.

    With ``decode`` (the default) every byte is decoded, so truncated and damaged files are caught; without it
    only the header is read (for a quick size survey). ``name`` is used in messages and for the type guess.
    """
    opened = _Opened(source, name)
    with opened as fp:
        try:
            im = _identify(fp, os.path.basename(opened.name))
        except ImageProblem:
            raise
        except UnidentifiedImageError:  # pragma: no cover - _identify raises ImageProblem itself
            raise ImageProblem("not_image", tr("not an image")) from None
        with im:
            fmt = im.format or "?"
            orientation = _orientation(im)
            w, h = _check_size(im, orientation, max_pixels, min_side)
            animated = bool(getattr(im, "is_animated", False)) if fmt in ("GIF", "TIFF", "WEBP", "MPO") else False
            has_alpha = _has_alpha(im)
            mode = im.mode
            if decode:
                _decode(im, fp, fmt)
    return ImageInfo(fmt, w, h, mode, orientation, animated, has_alpha)


def _decode(im: Image.Image, fp: IO[bytes], fmt: str, *, verify_only: bool = True) -> None:
    try:
        if verify_only and fmt in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
            # 1/8 scale: every byte is still entropy-decoded, so damage is found, in a fraction of the time.
            im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        if getattr(im, "is_animated", False):
            im.seek(0)
        im.load()
    except (OSError, EOFError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or isinstance(exc, EOFError):
            raise ImageProblem("truncated", tr("truncated {kind} file (the end of the file is missing)", kind=fmt)) from None
        raise ImageProblem("corrupt", tr("damaged {kind} file ({detail})", kind=fmt, detail=_short(exc))) from None
    if ImageFile.LOAD_TRUNCATED_IMAGES and _looks_cut_off(fp, fmt):
        raise ImageProblem("truncated", tr("truncated {kind} file (the end of the file is missing)", kind=fmt))


def open_image(
    source: Source,
    *,
    name: Optional[str] = None,
    background: Union[str, Sequence[int], None] = WHITE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    reduce_to: Optional[Tuple[int, int]] = None,
) -> Image.Image:
    """The picture as training sees it: first frame, EXIF orientation applied, 8-bit RGB, transparency laid
    over ``background``. Raises :class:`ImageProblem` for anything unusable.

    ``reduce_to=(w, h)`` allows a JPEG to be decoded at a smaller scale (1/2, 1/4, 1/8) as long as the result
    still covers ``w``×``h`` as displayed — much faster for big photos that are shrunk anyway.
    """
    bg = parse_background(background)
    opened = _Opened(source, name)
    with opened as fp:
        im = _identify(fp, os.path.basename(opened.name))
        with im:
            fmt = im.format or "?"
            orientation = _orientation(im)
            _check_size(im, orientation, max_pixels, min_side)
            if reduce_to is not None and fmt in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                rw, rh = reduce_to
                if orientation in (5, 6, 7, 8):
                    rw, rh = rh, rw
                if rw * 2 <= im.size[0] and rh * 2 <= im.size[1]:
                    im.draft(im.mode, (max(1, rw), max(1, rh)))
            _decode(im, fp, fmt, verify_only=False)
            transpose = _TRANSPOSE.get(orientation)
            out = im.transpose(transpose) if transpose is not None else im.copy()
            if "transparency" in im.info and "transparency" not in out.info:
                out.info["transparency"] = im.info["transparency"]
    return to_rgb(out, bg)


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey picture as 8-bit ``L``."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        peak = float(finite.max()) if finite.size else 0.0
        arr = np.nan_to_num(arr * 255.0 if peak <= 1.0 else arr, nan=0.0, posinf=255.0, neginf=0.0)
    elif im.mode == "I" and arr.size and int(arr.max()) <= 255:
        pass  # already in the 8-bit range (a 32-bit container of 8-bit values)
    else:
        arr = arr.astype(np.float64) / 257.0  # 0..65535 → 0..255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image, background: Union[str, Sequence[int], None] = WHITE) -> Image.Image:
    """``im`` (loaded) as 8-bit RGB; transparency is laid over ``background``."""
    bg = parse_background(background)
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, bg)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageProblem("unsupported", tr("unsupported colour mode {mode}", mode=im.mode)) from None
