"""The hint which checkpoint to keep: the eval score of each checkpoint (recorded while training) and the lowest
one suggested. Runs inside the WebUI process: standard library only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

from lib_trainer.common.i18n import tr
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
    def where(score: CheckpointScore) -> str:
        return tr("epoch {epoch}", epoch=score.epoch) if score.epoch is not None else score.name

    pct = f"{tolerance * 100:g}"
    if eval_set == "held_out":
        rule = tr("Suggested: {name} ({where}), the earliest checkpoint whose denoising score on pictures held out "
                  "of training is within {pct} % of the lowest.", name=best.name, where=where(best), pct=pct)
    else:
        rule = tr("Suggested: {name} ({where}), the earliest checkpoint whose denoising score on a fixed set of "
                  "training pictures is within {pct} % of the lowest (too few pictures to hold some out, so the score "
                  "cannot see overfitting).", name=best.name, where=where(best), pct=pct)
    parts = [rule]
    lowest_score = min(comparable, key=lambda s: s.eval_loss)
    if lowest_score.name != best.name:
        parts.append(tr("The lowest is {name} ({where}): {lowest:.4f} against {score:.4f}, a difference the score "
                        "cannot tell from noise.", name=lowest_score.name, where=where(lowest_score),
                        lowest=lowest_score.eval_loss, score=best.eval_loss))
    parts.append(tr("This is a hint, not a verdict: check the preview grid and trust your eyes."))
    note = " ".join(parts)
    return Recommendation(best.name, scores, note, eval_set)
