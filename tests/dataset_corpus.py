"""Pictures (good and bad) made in memory for the dataset tests: the bad-file corpus of issue 3 and helpers."""
from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Dict, Tuple

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def save_picture(path, im: Image.Image, **kwargs):
    """Save ``im`` at ``path`` (folders made; PNGs with fast compression); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        kwargs.setdefault("compress_level", 1)
    im.save(path, **kwargs)
    return path


def noise(size: Tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """A photo-like picture: smooth random colour blobs (compresses like a photo, unique per seed)."""
    rng = np.random.default_rng(seed)
    cells = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(cells).resize(size, Image.BICUBIC)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR claims ``width``×``height`` RGB pixels (a decompression bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_rgb16(width: int, height: int, rgb16: Tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG filled with one colour (Pillow cannot write these itself)."""
    pixel = struct.pack(">HHH", *rgb16)
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 300×200 JPEG stored landscape with a red block at its stored top-left, EXIF orientation 6 (display
    rotated 90° clockwise: 200×300 with the red block at the top-right)."""
    im = Image.new("RGB", (300, 200), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (96, 96), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png_with_transparency() -> bytes:
    """96×96 palette PNG: left half index 0 (transparent), right half index 1 (opaque green)."""
    im = Image.new("P", (96, 96), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (48, 0, 96, 96))
    return encode(im, "PNG", transparency=0)


def gray16_png() -> bytes:
    """128×64 16-bit grey PNG: left half 65535 (white), right half 32896 (mid grey, 128 in 8 bits)."""
    arr = np.full((64, 128), 32896, dtype=np.uint16)
    arr[:, :64] = 65535
    im = Image.fromarray(arr)  # mode I;16
    return encode(im, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("RGB", (120, 90), (255, 0, 0)).convert("CMYK"), "JPEG", quality=95)


@functools.lru_cache(maxsize=None)
def corpus() -> Dict[str, Tuple[bytes, str]]:
    """File name → (bytes, expected outcome). The outcome is an ImageProblem code, or "ok". Cached: do not modify."""
    jpeg = encode(noise((320, 240), 1), "JPEG", quality=90)
    png = encode(noise((320, 240), 2), "PNG")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "zero.png": (b"", "empty"),
        "text.png": (b"This is a text file, not a picture.\n" * 20, "not_image"),
        "cmyk.jpg": (cmyk_jpeg(), "ok"),
        "gray16.png": (gray16_png(), "ok"),
        "rgb16.png": (png_rgb16(80, 80, (65535, 32896, 0)), "ok"),
        "palette.png": (palette_png_with_transparency(), "ok"),
        "rotated.jpg": (exif_rotated_jpeg(), "ok"),
        "huge.png": (png_header_claiming(30000, 30000), "too_large"),
        "animated.gif": (animated_gif(), "ok"),
        "photo.tif": (encode(noise((200, 150), 3), "TIFF"), "ok"),
        "photo.webp": (encode(noise((200, 150), 4), "WEBP", quality=90), "ok"),
        "photo.bmp": (encode(noise((200, 150), 5), "BMP"), "ok"),
        "icon.ico": (encode(noise((64, 64), 6), "ICO"), "unsupported"),
        "tiny.png": (encode(noise((40, 40), 7), "PNG"), "too_small"),
    }
