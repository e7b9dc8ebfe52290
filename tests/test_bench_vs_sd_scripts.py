"""The side-by-side harness's reading and arithmetic (bench/vs_sd_scripts.py), not its timings: the TensorBoard
reader against a file tensorboardX wrote, the step statistics and ratios against hand-computed values, and what
it reads from each side's output."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import vs_sd_scripts as vs  # noqa: E402


def test_tfevents_reader_reads_what_tensorboardx_wrote(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    writer = tensorboardX.SummaryWriter(str(tmp_path / "logs"))
    written = [(step, 1.0 / step, 1_700_000_000.0 + 0.25 * step) for step in range(1, 8)]
    for step, loss, wall in written:
        writer.add_scalar("loss/current", loss, step, walltime=wall)
        writer.add_scalar("loss/average", 2 * loss, step, walltime=wall)
    writer.close()
    (events,) = sorted((tmp_path / "logs").rglob("events.out.tfevents.*"))
    rows = vs.read_tfevents(events)
    current = [(step, wall, value) for wall, step, tag, value in rows if tag == "loss/current"]
    assert [s for s, _, _ in current] == [s for s, _, _ in written]
    for (step, wall, value), (_, loss, want_wall) in zip(current, written):
        assert wall == pytest.approx(want_wall, abs=1e-6)
        assert value == pytest.approx(loss, rel=1e-6)  # stored as a float32
    assert len([r for r in rows if r[2] == "loss/average"]) == len(written)


def test_step_stats_median_of_steps_5_on_and_first_step():
    launch = 100.0
    # step s ends at launch + 10 + 2 s for s <= 6, then 1 s apart: durations from step 5 are 2, 2, 1, 1, 1, 1
    ends, t = {}, launch + 10
    for step in range(1, 11):
        t += 2.0 if step <= 6 else 1.0
        ends[step] = t
    steps = [(s, ends[s], float(s)) for s in ends]
    stats = vs.step_stats(steps, launch)
    assert stats["steps"] == 10
    assert stats["first_step_s"] == pytest.approx(12.0)
    assert stats["timed_steps"] == 6  # steps 5..10
    assert stats["s_per_step_median"] == pytest.approx(1.0)  # median of 2, 2, 1, 1, 1, 1
    assert stats["loss_mean"] == pytest.approx(5.5)
    assert vs.step_stats([], launch) == {"steps": 0}


def test_ratios_and_summary():
    ours = {"s_per_step_median": 0.9, "peak_rss_mib": 4000.0, "first_step_s": 12.0, "run_s": 30.0}
    sds = {"s_per_step_median": 1.2, "peak_rss_mib": 5000.0, "first_step_s": 0.0, "run_s": 40.0}
    ratio = vs.ratios(ours, sds)
    assert ratio == {"s_per_step": 0.75, "peak_rss": 0.8, "run": 0.75}  # a zero denominator gives no ratio
    pairs = [{"ratio": {"s_per_step": r}, "ours": {"s_per_step_median": r}, "sd_scripts": {"s_per_step_median": 1.0}}
             for r in (0.7, 0.9, 0.8)]
    pairs.append({"ratio": {}, "ours": {"error": "failed"}, "sd_scripts": {"s_per_step_median": 1.0}})
    summary = vs.summarize(pairs)
    assert summary["s_per_step"] == {"median": 0.8, "min": 0.7, "max": 0.9, "pairs": 3}
    assert summary["ours"]["s_per_step_median"] == pytest.approx(0.8)  # the failed run is left out
    assert summary["sd_scripts"]["s_per_step_median"] == 1.0


def test_each_sides_output_is_read(tmp_path):
    ours_log = tmp_path / "ours.log"
    events = [
        {"event": "start", "trained": {"unet": {"modules": 192}}, "trainable_parameters": 797184},
        {"event": "step", "step": 1, "time": 5.0, "loss": 0.5},
        {"event": "step", "step": 2, "time": 6.5, "loss": 0.25},
    ]
    ours_log.write_text("some library warning\n" + "\n".join(json.dumps(e) for e in events) + "\n{not json\n")
    steps, start, errors = vs.ours_steps(ours_log)
    assert steps == [(1, 5.0, 0.5), (2, 6.5, 0.25)]
    assert start["trainable_parameters"] == 797184 and errors == []

    sds_out = tmp_path / "sds"
    (sds_out / "logs").mkdir(parents=True)
    sds_log = tmp_path / "sds.log"
    # rich wraps long lines: the module counts are found across the line breaks
    sds_log.write_text("INFO     create LoRA for Text Encoder:\nINFO     create LoRA for Text Encoder: 72\n"
                       "         modules.                          lora.py:1035\n"
                       "INFO     create LoRA for U-Net: 192 modules.   lora.py:1043\n")
    steps, extra = vs.sds_steps(sds_out, sds_log)
    assert steps == [] and extra == {"lora_modules": {"Text Encoder": 72, "U-Net": 192}}
