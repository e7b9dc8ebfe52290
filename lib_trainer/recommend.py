"""The hint which checkpoint to keep: the eval score of each checkpoint (recorded while training), the lowest
one suggested, and a chart of the scores. Runs inside the WebUI process: standard library and Pillow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from PIL import Image, ImageDraw

from lib_trainer.i18n import tr
from lib_trainer.preview_grid import BACKGROUND, MUTED, TEXT
from lib_trainer.preview_text import TextRenderer
from lib_trainer.projects import Version

TIE_TOLERANCE = 0.01  # scores within 1 % of the lowest count as a tie (the earlier checkpoint wins)


class CheckpointScore(NamedTuple):
    name: str
    epoch: Optional[int]
    step: Optional[int]
    eval_loss: float
    eval_set: str  # "held_out" | "train_subset"


@dataclass
class Recommendation:
    best: Optional[str]  # checkpoint name, None when no score was recorded
    scores: List[CheckpointScore]  # every scored checkpoint still on disk, in training order
    note: str  # a translated sentence: what the hint is based on, and that it is a hint, not a verdict
    eval_set: Optional[str] = None  # the set the recommendation compares

    @property
    def best_score(self) -> Optional[CheckpointScore]:
        return next((s for s in self.scores if s.name == self.best), None)


def checkpoint_scores(version: Version) -> List[CheckpointScore]:
    """The eval score of each checkpoint file still on disk (from the ``checkpoint`` events; the last event of a
    file wins when a resumed run wrote it again), in training order."""
    present = {c.name: c for c in version.checkpoints()}
    latest: Dict[str, Dict[str, Any]] = {}
    for event in version.read_events():
        if event.get("event") != "checkpoint" or not event.get("path"):
            continue
        loss = event.get("eval_loss")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            continue
        name = Path(str(event["path"])).stem
        if name in present:
            latest[name] = event
    scores = []
    for name, event in latest.items():
        ckpt = present[name]
        epoch = event.get("epoch", ckpt.epoch)
        step = event.get("step", ckpt.step)
        # events written before the trainer knew held-out sets scored training pictures
        scores.append(CheckpointScore(name, epoch, step, float(event["eval_loss"]),
                                      str(event.get("eval_set") or "train_subset")))
    order = {c.name: i for i, c in enumerate(present.values())}
    scores.sort(key=lambda s: (s.step if s.step is not None else -1, order[s.name]))
    return scores


def recommend(version: Version, tolerance: float = TIE_TOLERANCE) -> Recommendation:
    """The checkpoint with the lowest held-out score (the earlier one when scores are within ``tolerance``)."""
    scores = checkpoint_scores(version)
    if not scores:
        return Recommendation(None, [], tr(
            "No checkpoint scores were recorded (they are computed while training). Compare the preview grid "
            "instead."))
    eval_set = "held_out" if any(s.eval_set == "held_out" for s in scores) else "train_subset"
    comparable = [s for s in scores if s.eval_set == eval_set]
    lowest = min(s.eval_loss for s in comparable)
    limit = lowest + abs(lowest) * tolerance
    best = next(s for s in comparable if s.eval_loss <= limit)
    where = tr("epoch {epoch}", epoch=best.epoch) if best.epoch is not None else best.name
    if eval_set == "held_out":
        note = tr("Suggested: {name} ({where}), the lowest denoising score on pictures held out of training. This "
                  "is a hint, not a verdict: check the preview grid and trust your eyes.", name=best.name, where=where)
    else:
        note = tr("Suggested: {name} ({where}), the lowest denoising score on a fixed set of training pictures "
                  "(too few pictures to hold some out, so the score cannot see overfitting). This is a hint, not a "
                  "verdict: check the preview grid and trust your eyes.", name=best.name, where=where)
    return Recommendation(best.name, scores, note, eval_set)


def score_chart(version: Version, size: Tuple[int, int] = (640, 320), font_path: Optional[str] = None,
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
            text.draw(draw, (10, 10 + i * text.line_height), line, MUTED)
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
    draw.line((left, top, left, bottom, right, bottom), fill=MUTED, width=1)
    for y in (y_lo + margin, y_hi - margin):
        px, py = at(x_lo, y)
        label = f"{y:.4g}"
        text.draw(draw, (max(2, left - 6 - text.width(label)), py - text.line_height // 2), label, MUTED)
        draw.line((left - 3, py, left, py), fill=MUTED)
    coords = [at(x, y) for x, y in zip(xs, ys)]
    if len(coords) > 1:
        draw.line(coords, fill=(60, 120, 200), width=2)
    for score, (px, py) in zip(points, coords):
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(60, 120, 200))
        label = str(score.epoch) if score.epoch is not None else "?"
        text.draw(draw, (px - text.width(label) // 2, bottom + 4), label, MUTED)
        if score.name == rec.best:
            r = 8
            draw.ellipse((px - r, py - r, px + r, py + r), outline=(220, 60, 40), width=2)
            mark = tr("suggested")
            text.draw(draw, (min(px + r + 2, width - text.width(mark) - 2), py - r - text.line_height), mark,
                      (220, 60, 40))
    axis = tr("epoch")
    text.draw(draw, (right - text.width(axis), bottom + 4 + text.line_height), axis, MUTED)
    return image
