"""Text drawn into preview pictures in one size, that never crashes on a glyph: each character with the first
font that has it (a given font, a Latin font, CJK fonts found on the system), PIL's built-in font as the last
resort. Runs inside the WebUI process: standard library and Pillow.
"""
from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image, ImageDraw, ImageFont

LATIN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf", "C:/Windows/Fonts/segoeui.ttf", "C:/Windows/Fonts/arial.ttf",
    "/System/Library/Fonts/Helvetica.ttc", "/Library/Fonts/Arial.ttf",
)
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc", "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "C:/Windows/Fonts/msyh.ttc", "C:/Windows/Fonts/msyh.ttf", "C:/Windows/Fonts/simhei.ttf",
    "C:/Windows/Fonts/YuGothM.ttc", "C:/Windows/Fonts/meiryo.ttc", "C:/Windows/Fonts/malgun.ttf",
    "/System/Library/Fonts/PingFang.ttc", "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc", "/Library/Fonts/Arial Unicode.ttf",
)


@functools.lru_cache(maxsize=1)
def _font_candidates() -> Tuple[str, ...]:
    found = [p for p in LATIN_FONTS + CJK_FONTS if os.path.isfile(p)]
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")):
        if os.path.isdir(root):
            for pattern in ("**/*CJK*.tt[cf]", "**/*CJK*.otf", "**/wqy*.tt[cf]", "**/*DroidSansFallback*.ttf"):
                found.extend(str(p) for p in sorted(Path(root).glob(pattern)))
    return tuple(dict.fromkeys(found))


@functools.lru_cache(maxsize=64)
def _truetype(path: str, size: int) -> Optional[ImageFont.FreeTypeFont]:
    try:
        # the basic layout is many times faster than raqm and enough for labels (no complex-script shaping)
        return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
    except (OSError, ValueError):
        return None


class TextRenderer:
    """Text in one size, each character drawn with the first font that has a glyph for it (a given font, a Latin
    font, CJK fonts found on the system), PIL's built-in font as the last resort (unknown characters become "?")."""

    _PROBE = "\U0010fffd"  # a private-use code point: every font draws it with its "missing glyph" box

    def __init__(self, size: int, font_path: Optional[str] = None):
        self.size = size
        paths = ([font_path] if font_path else []) + list(_font_candidates())
        self._paths = list(dict.fromkeys(paths))
        self._loaded: Dict[int, Optional[ImageFont.FreeTypeFont]] = {}
        self._missing_box: Dict[int, bytes] = {}
        self._choice: Dict[str, int] = {}
        self._lengths: Dict[Tuple[int, str], float] = {}
        self.default = ImageFont.load_default()
        primary = self._font(0) if self._paths else None
        self._primary = 0 if primary is not None else -1
        if primary is None:
            for i in range(1, len(self._paths)):
                if self._font(i) is not None:
                    self._primary = i
                    break
        if self._primary >= 0:
            ascent, descent = self._font(self._primary).getmetrics()
            self.ascent = ascent
            self.line_height = int(math.ceil((ascent + descent) * 1.2))
        else:
            self.ascent = 0
            self.line_height = 14

    def _font(self, index: int) -> Optional[ImageFont.FreeTypeFont]:
        if index not in self._loaded:
            self._loaded[index] = _truetype(self._paths[index], self.size)
        return self._loaded[index]

    def _render(self, font: ImageFont.FreeTypeFont, ch: str) -> bytes:
        canvas = Image.new("L", (self.size * 3, self.size * 3), 0)
        ImageDraw.Draw(canvas).text((self.size, self.size), ch, font=font, fill=255)
        return canvas.tobytes()

    def _has_glyph(self, index: int, ch: str) -> bool:
        font = self._font(index)
        if font is None:
            return False
        try:
            if index not in self._missing_box:
                self._missing_box[index] = self._render(font, self._PROBE)
            return self._render(font, ch) != self._missing_box[index]
        except Exception:  # a font that cannot draw the character at all
            return False

    def font_index(self, ch: str) -> int:
        """Index of the font drawing ``ch`` (-1: PIL's built-in font)."""
        if ch in self._choice:
            return self._choice[ch]
        choice = self._primary
        if not ch.isspace() and ch.isprintable():
            for i in range(len(self._paths)):
                if self._has_glyph(i, ch):
                    choice = i
                    break
        self._choice[ch] = choice
        return choice

    def runs(self, line: str) -> List[Tuple[int, str]]:
        result: List[Tuple[int, str]] = []
        for ch in line:
            if ch in "\r\n\t":
                ch = " "
            index = self.font_index(ch)
            if index < 0:
                ch = ch if ord(ch) < 256 and ch.isprintable() else "?"
            if result and result[-1][0] == index:
                result[-1] = (index, result[-1][1] + ch)
            else:
                result.append((index, ch))
        return result

    def _length(self, index: int, run: str) -> float:
        key = (index, run)
        if key not in self._lengths:
            font = self._font(index) if index >= 0 else self.default
            try:
                self._lengths[key] = font.getlength(run)
            except Exception:
                left, _, right, _ = font.getbbox(run)
                self._lengths[key] = right - left
        return self._lengths[key]

    def width(self, line: str) -> int:
        return int(math.ceil(sum(self._length(i, run) for i, run in self.runs(line))))

    def draw(self, draw: ImageDraw.ImageDraw, xy: Tuple[int, int], line: str, fill: Tuple[int, int, int]) -> None:
        x, y = xy
        for index, run in self.runs(line):
            if index >= 0:
                draw.text((x, y + self.ascent), run, font=self._font(index), fill=fill, anchor="ls")
            else:
                draw.text((x, y), run, font=self.default, fill=fill)
            x += self._length(index, run)

    def wrap(self, text: str, max_width: int) -> List[str]:
        """``text`` broken into lines of at most ``max_width`` pixels: at spaces, or anywhere in a word (CJK text
        has no spaces) that is wider than a line."""
        lines: List[str] = []
        for paragraph in str(text).split("\n"):
            line = ""
            for token in re.findall(r"\s*\S+", paragraph) or [""]:
                candidate = line + token if line else token.lstrip()
                if self.width(candidate) <= max_width:
                    line = candidate
                    continue
                if line:
                    lines.append(line)
                candidate = token.lstrip()
                while len(candidate) > 1 and self.width(candidate) > max_width:
                    cut = self._fitting_prefix(candidate, max_width)
                    lines.append(candidate[:cut])
                    candidate = candidate[cut:]
                line = candidate
            lines.append(line)
        return lines

    def _fitting_prefix(self, text: str, max_width: int) -> int:
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.width(text[:mid]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        return lo
