"""Charts drawn with Pillow, so that they look the same on gradio 3.41 and 4.x (gr.Plot differs between them and
needs a plotting library the WebUI may not have): the training loss, and the held-out score per checkpoint
(the recommendation comes from ``lib_trainer.checkpoints.recommend``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

from lib_trainer.checkpoints.recommend import Recommendation, recommend
from lib_trainer.common.i18n import tr
from lib_trainer.preview.text import TextRenderer
from lib_trainer.projects import Version

BACKGROUND = (255, 255, 255)
AXIS = (110, 110, 120)
GRID = (232, 233, 238)
RAW = (160, 190, 230)
SMOOTH = (30, 90, 200)
EPOCH = (200, 200, 208)
TEXT = (20, 20, 24)


def smooth(values: Sequence[float], weight: float = 0.8) -> List[float]:
    """An exponential moving average with TensorBoard's bias correction (so the first points are not pulled to 0)."""
    out: List[float] = []
    last, count = 0.0, 0
    for v in values:
        count += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** count))
    return out


def _nice_ticks(lo: float, hi: float, count: int = 4) -> List[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


@functools.lru_cache(maxsize=4)
def _text(size: int) -> Any:
    """A text renderer per size, kept: it learns which font draws which character as it goes."""
    return TextRenderer(size)


def loss_chart(points: Sequence[Tuple[int, float]], size: Tuple[int, int] = (640, 260),
               epochs: Sequence[Tuple[int, int]] = (), total_steps: Optional[int] = None) -> Image.Image:
    """Loss per step: the raw values faint, their moving average strong, epoch starts as vertical lines.

    ``points`` are (step, loss); ``epochs`` are (first step, epoch number); ``total_steps`` fixes the x axis
    to the whole run so the line grows from left to right as training goes on.
    """
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    text = _text(max(11, min(16, height // 18)))
    points = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    title = tr("Loss (moving average in dark blue)")
    text.draw(draw, (10, 6), title, TEXT)
    if not points:
        text.draw(draw, (10, 6 + text.line_height * 2), tr("The loss appears here once training has started."), AXIS)
        return image
    pad = text.line_height
    left, right, top, bottom = pad * 4, width - pad, pad * 2 + 4, height - pad * 2
    steps = [s for s, _ in points]
    losses = [v for _, v in points]
    x_lo = min(steps[0], 1)
    x_hi = max(total_steps or 0, steps[-1], x_lo + 1)
    y_lo, y_hi = min(losses), max(losses)
    margin = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.05 or 0.1
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def at(x: float, y: float) -> Tuple[int, int]:
        return (int(left + (x - x_lo) / (x_hi - x_lo) * (right - left)),
                int(bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)))

    for tick in _nice_ticks(y_lo, y_hi):
        _, py = at(x_lo, tick)
        if top <= py <= bottom:
            draw.line((left, py, right, py), fill=GRID)
            label = f"{tick:.3g}"
            text.draw(draw, (max(2, left - 6 - text.width(label)), py - text.line_height // 2), label, AXIS)
    for first_step, epoch in epochs:
        px, _ = at(first_step, y_lo)
        if left < px <= right:
            draw.line((px, top, px, bottom), fill=EPOCH)
            text.draw(draw, (px + 2, top), str(epoch), AXIS)
    draw.line((left, top, left, bottom, right, bottom), fill=AXIS)
    for tick in _nice_ticks(x_lo, x_hi, 5):
        px, _ = at(tick, y_lo)
        label = str(int(tick))
        text.draw(draw, (px - text.width(label) // 2, bottom + 3), label, AXIS)
    axis = tr("step")
    text.draw(draw, (right - text.width(axis), bottom + 3 + text.line_height), axis, AXIS)
    raw = [at(s, v) for s, v in points]
    averaged = [at(s, v) for s, v in zip(steps, smooth(losses))]
    if len(raw) > 1:
        draw.line(raw, fill=RAW, width=1)
        draw.line(averaged, fill=SMOOTH, width=2)
    else:
        x, y = averaged[0]
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=SMOOTH)
    return image


def score_chart(version: Version, size: Tuple[int, int] = (640, 260), font_path: Optional[str] = None,
                recommendation: Optional[Recommendation] = None) -> Image.Image:
    """A line chart of the score per checkpoint (x: training step, labelled by epoch) with the recommended one
    ringed; a message in the chart when there is nothing to plot."""
    rec = recommendation if recommendation is not None else recommend(version)
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    text = TextRenderer(max(11, min(18, height // 22)), font_path)
    pad = text.line_height + 8
    points = [s for s in rec.scores if rec.eval_set is None or s.eval_set == rec.eval_set]
    if not points:
        for i, line in enumerate(text.wrap(rec.note, width - 20)):
            text.draw(draw, (10, 10 + i * text.line_height), line, AXIS)
        return image
    left, right, top, bottom = pad * 3, width - pad, pad + text.line_height, height - pad * 2
    xs = [float(s.step if s.step is not None else i) for i, s in enumerate(points)]
    ys = [s.eval_loss for s in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    margin = (y_hi - y_lo) * 0.1 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def at(x: float, y: float) -> Tuple[int, int]:
        return (int(left + (x - x_lo) / (x_hi - x_lo) * (right - left)),
                int(bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)))

    title = tr("Checkpoint score (lower is better)") if rec.eval_set != "held_out" else \
        tr("Held-out score (lower is better)")
    text.draw(draw, (left, 6), title, TEXT)
    draw.line((left, top, left, bottom, right, bottom), fill=AXIS, width=1)
    for y in (y_lo + margin, y_hi - margin):
        px, py = at(x_lo, y)
        label = f"{y:.4g}"
        text.draw(draw, (max(2, left - 6 - text.width(label)), py - text.line_height // 2), label, AXIS)
        draw.line((left - 3, py, left, py), fill=AXIS)
    coords = [at(x, y) for x, y in zip(xs, ys)]
    if len(coords) > 1:
        draw.line(coords, fill=(60, 120, 200), width=2)
    for score, (px, py) in zip(points, coords):
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(60, 120, 200))
        label = str(score.epoch) if score.epoch is not None else "?"
        text.draw(draw, (px - text.width(label) // 2, bottom + 4), label, AXIS)
        if score.name == rec.best:
            r = 8
            draw.ellipse((px - r, py - r, px + r, py + r), outline=(220, 60, 40), width=2)
            mark = tr("suggested")
            text.draw(draw, (min(px + r + 2, width - text.width(mark) - 2), py - r - text.line_height), mark,
                      (220, 60, 40))
    axis = tr("epoch")
    text.draw(draw, (right - text.width(axis), bottom + 4 + text.line_height), axis, AXIS)
    return image


__all__ = ["loss_chart", "score_chart", "smooth"]
