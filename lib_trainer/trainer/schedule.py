"""How many steps a run takes, from its config and its dataset alone (no model is loaded): the pictures the
trainer reads, those it holds out to score the checkpoints, the batches each bucket makes (a bucket's last batch
may be short, so buckets add batches), regularization uses and gradient accumulation.

The tab's estimate calls :func:`step_plan`, so the step count it shows is the one the trainer runs; a test checks
both on the same dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import data as data_mod
from .distributed import step_groups
from .folders import DatasetScan, scan_dataset
from .holdout import choose_holdout
from .schema import TrainConfig

PLANNING_SEED = 0  # with seed unset the trainer draws one; which pictures it holds out can then change the count


@dataclass(frozen=True)
class StepPlan:
    pictures: int  # training pictures found (each counted once)
    held_out: int  # of them, held out of training to score the checkpoints
    repeats: int  # the largest repeats of a concept folder (the usual case is one folder)
    uses_per_epoch: int  # picture uses per epoch: trained pictures × their repeats, plus the regularization uses
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    exact: bool  # False when the seed is unset (the held-out pictures, hence the buckets, are drawn at start)


def hold_out(cfg: TrainConfig, scan: DatasetScan, seed: int) -> tuple[list, str]:
    """Choose the scoring pictures and, when they are held out, take them out of the scan's training pictures."""
    eval_entries, eval_set = choose_holdout(scan.train_entries, cfg.eval_holdout_images, seed)
    if eval_set == "held_out":
        held = {e.path for e in eval_entries}
        scan.entries = [e for e in scan.entries if e.path not in held]
    return eval_entries, eval_set


def steps_of(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, total steps): max_train_epochs when set, else max_train_steps."""
    if cfg.max_train_epochs:
        return cfg.max_train_epochs, cfg.max_train_epochs * steps_per_epoch
    epochs = math.ceil(cfg.max_train_steps / steps_per_epoch) if steps_per_epoch else 0
    return epochs, cfg.max_train_steps


def step_plan(cfg: TrainConfig, processes: int = 1) -> StepPlan:
    """The run's steps as the trainer will count them (one process unless told)."""
    seed = cfg.seed if cfg.seed is not None else PLANNING_SEED
    scan = scan_dataset(cfg.train_data_dir, cfg.reg_data_dir, caption_extension=cfg.caption_extension)
    pictures = len(scan.train_entries)
    repeats = max((e.repeats for e in scan.train_entries), default=0)
    if not pictures:
        return StepPlan(0, 0, 0, 0, 0, 0, 0, 0, cfg.seed is not None)
    eval_entries, eval_set = hold_out(cfg, scan, seed)
    plan = data_mod.BatchPlan(cfg, scan, seed)
    batches = plan.batches(0)
    steps_per_epoch = len(step_groups(batches, processes, 0, cfg.gradient_accumulation_steps))
    epochs, total = steps_of(cfg, steps_per_epoch)
    return StepPlan(pictures=pictures, held_out=len(eval_entries) if eval_set == "held_out" else 0, repeats=repeats,
                    uses_per_epoch=len(plan.items), batches_per_epoch=len(batches), steps_per_epoch=steps_per_epoch,
                    epochs=epochs, total_steps=total, exact=cfg.seed is not None)


__all__ = ["StepPlan", "step_plan", "hold_out", "steps_of", "PLANNING_SEED"]
