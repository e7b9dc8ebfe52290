"""Where to cut a picture: the window of the target's shape around a focus point, the focus itself (faces found by
OpenCV's bundled Haar cascades, else the busiest part of the picture: local entropy plus edge strength, in the
spirit of the WebUI's own "auto focal point crop") and the boxes of extra face close-ups. Geometry only: nothing
here reads or writes files. Pillow, numpy and (optionally) OpenCV.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

Box = Tuple[int, int, int, int]  # x, y, width, height
FaceDetector = Callable[[Image.Image], Sequence[Box]]
_BOX = getattr(Image, "Resampling", Image).BOX


def cover_size(size: Tuple[int, int], target: Tuple[int, int]) -> Tuple[int, int]:
    w, h = size
    tw, th = target
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def crop_window(size: Tuple[int, int], target: Tuple[int, int],
                focus: Optional[Tuple[float, float]] = None) -> Tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of a picture of ``size`` that becomes the ``target`` picture:
    the largest region of the target's aspect ratio (the picture scaled to *cover* the target, then cut),
    centred on ``focus`` (default: the middle) and pushed back inside the picture. In the picture's own pixels,
    as floats, ready for ``Image.resize(target, box=...)`` — one resampling, from the original pixels."""
    w, h = size
    tw, th = target
    scale = max(tw / w, th / h)
    cw, ch = min(w, tw / scale), min(h, th / scale)
    fx, fy = focus if focus is not None else (w / 2, h / 2)
    x = min(max(0.0, fx - cw / 2), w - cw)
    y = min(max(0.0, fy - ch / 2), h - ch)
    return x, y, x + cw, y + ch


def interest_map(gray: np.ndarray, block: int = 8) -> np.ndarray:
    """How busy each ``block``×``block`` cell of a grey picture is: local entropy (16 grey levels) plus edge
    strength, each scaled to 0..1. Flat areas (sky, walls, studio backgrounds) score low."""
    g = gray.astype(np.float32)
    bh, bw = g.shape[0] // block, g.shape[1] // block
    if bh < 1 or bw < 1:
        return np.zeros((max(bh, 1), max(bw, 1)), dtype=np.float32)
    g = g[: bh * block, : bw * block]
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1, :] = g[2:, :] - g[:-2, :]
    edges = np.hypot(gx, gy).reshape(bh, block, bw, block).mean(axis=(1, 3))
    levels = np.minimum(g // 16, 15).astype(np.uint8).reshape(bh, block, bw, block).transpose(0, 2, 1, 3)
    levels = levels.reshape(bh, bw, block * block)
    entropy = np.zeros((bh, bw), dtype=np.float32)
    for level in range(16):
        p = (levels == level).mean(axis=2)
        nz = p > 0
        entropy[nz] -= p[nz] * np.log2(p[nz])

    def unit(a: np.ndarray) -> np.ndarray:
        peak = float(a.max())
        return a / peak if peak > 0 else a

    return unit(edges) + unit(entropy)


def _window_sums(score: np.ndarray, wh: int, ww: int) -> np.ndarray:
    integral = np.pad(score, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    return integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]


def _busiest_window_center(image: Image.Image, target: Tuple[int, int]) -> Optional[Tuple[float, float]]:
    """Centre (in ``image``'s pixels) of the crop window for ``target`` with the most entropy and edges, or None
    when no window stands out from the middle one."""
    w, h = image.size
    left, top, right, bottom = crop_window((w, h), target)
    win_w, win_h = right - left, bottom - top
    if win_w >= w - 1 and win_h >= h - 1:
        return None  # the window is the whole picture: nothing to choose
    factor = max(1.0, max(w, h) / 256)
    small = image.convert("L").resize((max(1, round(w / factor)), max(1, round(h / factor))), _BOX)
    block = 4
    score = interest_map(np.asarray(small), block)
    cell = factor * block  # picture pixels per map cell
    ww = max(1, min(score.shape[1], round(win_w / cell)))
    wh = max(1, min(score.shape[0], round(win_h / cell)))
    sums = _window_sums(score, wh, ww)
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    cy, cx = (sums.shape[0] - 1) // 2, (sums.shape[1] - 1) // 2
    best, middle = float(sums[iy, ix]), float(sums[cy, cx])
    if best <= middle * 1.05 + 1e-9:
        return None  # nothing clearly busier than the middle: keep the centre crop
    return (ix + ww / 2) * cell, (iy + wh / 2) * cell


def focal_point(
    image: Image.Image, target: Tuple[int, int], face_detector: Optional[FaceDetector] = None
) -> Tuple[Tuple[float, float], str]:
    """Where the crop of ``image`` for ``target`` should be centred (in ``image``'s pixels), and why:
    ``"face"`` (the faces' centre, larger faces weigh more), ``"detail"`` (the busiest window) or ``"center"``."""
    faces = list(face_detector(image)) if face_detector is not None else []
    if faces:
        total = sum(fw * fh for _, _, fw, fh in faces)
        fx = sum((x + fw / 2) * fw * fh for x, _, fw, fh in faces) / total
        fy = sum((y + fh / 2) * fw * fh for _, y, fw, fh in faces) / total
        return (fx, fy), "face"
    busy = _busiest_window_center(image, target)
    if busy is not None:
        return busy, "detail"
    return (image.size[0] / 2, image.size[1] / 2), "center"


def face_crop_boxes(
    size: Tuple[int, int], faces: Sequence[Box], target: Tuple[int, int], zoom: float = 2.2, limit: int = 1
) -> List[Box]:
    """Windows of the target's aspect ratio around the ``limit`` largest faces (head and shoulders at the
    default ``zoom``), inside a picture of ``size``; a window that would be most of the picture is left out."""
    w, h = size
    tw, th = target
    aspect = tw / th
    boxes: List[Box] = []
    for fx, fy, fw, fh in sorted(faces, key=lambda f: -(f[2] * f[3]))[:limit]:
        side = max(fw, fh) * zoom
        bw, bh = (side * aspect, side) if aspect <= 1 else (side, side / aspect)
        shrink = min(1.0, w / bw, h / bh)
        bw, bh = bw * shrink, bh * shrink
        cx, cy = fx + fw / 2, fy + fh / 2 + 0.15 * fh  # a little below the face's centre: chin and neck
        x = min(max(0.0, cx - bw / 2), w - bw)
        y = min(max(0.0, cy - bh / 2), h - bh)
        box = (int(round(x)), int(round(y)), max(1, int(round(bw))), max(1, int(round(bh))))
        if box[2] * box[3] > 0.6 * w * h:
            continue
        boxes.append(box)
    return boxes


# Frontal first, then profile, as the WebUI's auto focal crop tries cascades in turn. At 400 px the two take about
# 60 ms per picture on one core; faces under an eighth of the short side are not worth a crop anyway.
_CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")
_local = threading.local()


def _cv2() -> Any:
    try:
        import cv2  # noqa: PLC0415 - optional and heavy: only when faces are looked for
    except Exception:
        return None
    return cv2


def haar_cascade_path(name: str = _CASCADES[0]) -> Optional[Path]:
    """The path of one of OpenCV's bundled Haar cascades, or None without OpenCV."""
    cv2 = _cv2()
    if cv2 is None:
        return None
    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / name
    return path if path.is_file() else None


def _cascade(name: str) -> Any:
    cache = getattr(_local, "cascades", None)
    if cache is None:
        cache = _local.cascades = {}  # a CascadeClassifier must not be shared between threads
    if name not in cache:
        path = haar_cascade_path(name)
        classifier = None
        if path is not None:
            cv2 = _cv2()
            classifier = cv2.CascadeClassifier(str(path))
            if classifier.empty():
                classifier = None
        cache[name] = classifier
    return cache[name]


def detect_faces(image: Image.Image, max_side: int = 400) -> List[Box]:
    """Faces in ``image`` as ``(x, y, width, height)``, found with OpenCV's bundled Haar cascades (frontal, then
    profile) on a grey copy at most ``max_side`` pixels long. An empty list without OpenCV."""
    cv2 = _cv2()
    if cv2 is None:
        return []
    w, h = image.size
    factor = max(1.0, max(w, h) / max_side)
    small = image.convert("L")
    if factor > 1:
        small = small.resize((max(1, round(w / factor)), max(1, round(h / factor))), _BOX)
    gray = cv2.equalizeHist(np.asarray(small))
    min_face = max(24, int(min(small.size) * 0.12))
    for name in _CASCADES:
        classifier = _cascade(name)
        if classifier is None:
            continue
        found = classifier.detectMultiScale(gray, scaleFactor=1.2, minNeighbors=6, minSize=(min_face, min_face))
        if len(found):
            return [
                (int(x * factor), int(y * factor), int(fw * factor), int(fh * factor)) for x, y, fw, fh in found
            ]
    return []
