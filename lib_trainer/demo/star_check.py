"""A geometric second opinion on "is there a star": the star is the toy world's only concave shape.

The judge (``lib_trainer.demo.judge``) was trained on the generator's pictures only, so a shape it never saw, such as
a half-trained model's blob, may read as "star" to it. A star's solidity (its area over its convex hull's) is about
0.6 drawn cleanly and at most 0.73 blurred and noised as a decoder draws (``toy_world.blur_like_a_decoder``); the
world's circles, squares and triangles are 0.93 and more, and a half-trained toy model's blobs 0.83 and more
(measured: 12 pictures of each). So an object counts as star-like below ``STAR_SOLIDITY``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

STAR_SOLIDITY = 0.78
MIN_AREA = 40  # pixels of a 64 px picture: smaller specks are not objects
FOREGROUND_DISTANCE = 60  # RGB distance from the background colour (the border's median)


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean mask, each as (x, y) pixels."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(int(y0), int(x0))], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((x, y))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < height and 0 <= xx < width and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        found.append(pixels)
    return found


def _hull(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Convex hull (Andrew's monotone chain)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o, a, b) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def solidities(image: Image.Image) -> list[float]:
    """The solidity of every object (foreground component of at least MIN_AREA pixels) in the picture."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    mask = np.linalg.norm(pixels - np.median(border, axis=0), axis=2) > FOREGROUND_DISTANCE
    found = []
    for component in _components(mask):
        if len(component) < MIN_AREA:
            continue
        hull = Image.new("L", image.size, 0)
        ImageDraw.Draw(hull).polygon(_hull(component), fill=1, outline=1)
        found.append(len(component) / max(1, int(np.asarray(hull).sum())))
    return found


def has_star_like_object(image: Image.Image) -> bool:
    return any(s < STAR_SOLIDITY for s in solidities(image))
