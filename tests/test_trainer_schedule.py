"""The step count the tab and the CLI promise (presets.estimate, through trainer/schedule.py) is the one the trainer
runs: held-out pictures leave the epoch, gradient accumulation groups batches into steps (the buckets' batches are
BatchPlan's, tested in test_buckets.py; step_plan uses it as the trainer does)."""
from __future__ import annotations

import io

from lib_trainer import presets
from lib_trainer.trainer.events import EventWriter
from lib_trainer.trainer.schedule import step_plan
from lib_trainer.trainer.train import Trainer
from tests.trainer_fixtures import make_config, make_dataset, tiny_sd1  # noqa: F401  (fixture)


def test_the_estimate_counts_the_steps_the_trainer_runs(tiny_sd1, tmp_path):
    pictures, batch, epochs, accumulation = 22, 4, 2, 2
    train = make_dataset(tmp_path, folder="3_tt_dog", count=pictures)
    cfg = make_config(tmp_path, tiny_sd1, train_data_dir=str(train), max_train_epochs=epochs, max_train_steps=None,
                      train_batch_size=batch, gradient_accumulation_steps=accumulation, enable_bucket=True,
                      min_bucket_reso=64, max_bucket_reso=128)
    trainer = Trainer(cfg, EventWriter(None, stream=io.StringIO()))
    try:
        trainer.setup()
        ran = (trainer.steps_per_epoch, trainer.epochs, trainer.total_steps)
    finally:
        trainer.close()
    plan = step_plan(cfg)
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps) == ran
    held_out = 2  # one in ten from 20 pictures on
    assert plan.held_out == held_out and plan.uses_per_epoch == (pictures - held_out) * 3 == 60
    # 60 uses in batches of 4, two batches per optimizer step: 15 batches make 8 steps (the last one short)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (15, 8, 16)
    est = presets.estimate(cfg, "sd1", cuda=True)
    assert est.steps == trainer.total_steps
    text = presets.describe_estimate(est)
    assert f"{pictures - held_out} pictures × 3 repeats = {plan.uses_per_epoch} picture uses per epoch" in text
    assert "(2 more held out to score the checkpoints) · 2 epochs × 8 steps at batch 4 = 16 steps ·" in text
