"""The progress panel: status line, failure text in red, loss chart read incrementally, samples, short polls that
answer "unchanged" when nothing changed, and what the tab shows first after a reload."""
import json
import time

import pytest
from PIL import Image

from lib_trainer.ui import charts, progress_panel
from tests.ui_support import make_context


def version_with_events(tmp_path):
    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    return ctx, ctx.version("dog", "v1")


def append_events(version, *events):
    version.events_path.parent.mkdir(parents=True, exist_ok=True)
    with open(version.events_path, "a", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event) + "\n")


def step(n, loss, epoch=1):
    return {"event": "step", "step": n, "epoch": epoch, "loss": loss, "it_per_s": 2.0, "eta_s": 30}


def test_status_line_says_what_the_run_is_doing():
    running = progress_panel.status_html({"status": "running", "step": 5, "total_steps": 20, "epoch": 1, "epochs": 2,
                                          "loss": 0.123456, "it_per_s": 1.5, "eta_s": 75})
    assert "Training" in running and "step 5 of 20" in running and "epoch 1 of 2" in running
    assert "loss 0.1235" in running and "1.50 it/s" in running and "1m 15s" in running
    assert 'width:25.0%' in running
    queued = progress_panel.status_html({"status": "queued", "position": 2})
    assert "Queued" in queued and "position 2" in queued
    stopped = progress_panel.status_html({"status": "cancelled", "resumable": True})
    assert "Stopped" in stopped and "can be resumed" in stopped
    assert 'width:100.0%' in progress_panel.status_html({"status": "finished"})


def test_a_failure_shows_the_trainers_own_message_in_red():
    html = progress_panel.error_html({"status": "failed", "error": {
        "message": "CUDA out of memory: lower the batch size", "traceback_tail": "Traceback …\nRuntimeError: OOM"}})
    assert "train_tools_msg_error" in html and "color:#d22" in html
    assert "CUDA out of memory: lower the batch size" in html and "RuntimeError: OOM" in html
    assert progress_panel.error_html({"status": "running"}) == ""
    warning = progress_panel.error_html({"status": "running", "warnings": ["fp16 needs a GPU"]})
    assert "train_tools_msg_warning" in warning


def test_buttons_follow_the_state():
    def interactive(state):
        return [u["interactive"] for u in progress_panel.button_updates(state)]

    assert interactive({"status": "draft"}) == [True, False, False]
    assert interactive({"status": "running"}) == [False, True, False]
    assert interactive({"status": "cancelled", "resumable": True}) == [True, False, True]
    assert interactive({"status": "failed", "resumable": False}) == [True, False, False]


def test_loss_series_reads_only_new_events_and_restarts_with_a_new_run(tmp_path):
    ctx, version = version_with_events(tmp_path)
    append_events(version, {"event": "start", "total_steps": 6}, step(1, 1.0), step(2, 0.9), "garbage")
    series = progress_panel.loss_series(version)
    assert series.points == [(1, 1.0), (2, 0.9)] and series.total_steps == 6 and series.epochs == [(1, 1)]
    append_events(version, step(3, 0.8, epoch=2), {"event": "checkpoint", "epoch": 1, "step": 3, "path": "x"})
    series = progress_panel.loss_series(version)
    assert series.points[-1] == (3, 0.8) and series.epochs == [(1, 1), (3, 2)] and series.checkpoints == 1
    append_events(version, step(2, 0.7))  # resumed from an earlier state: the run goes on from step 2
    assert progress_panel.loss_series(version).points == [(1, 1.0), (2, 0.7)]
    version.events_path.write_text("", encoding="utf-8")  # a fresh run replaced the file
    append_events(version, step(1, 2.0))
    assert progress_panel.loss_series(version).points == [(1, 2.0)]


def test_loss_chart_is_a_picture_with_or_without_points():
    empty = charts.loss_chart([])
    drawn = charts.loss_chart([(1, 1.0), (2, 0.8), (3, 0.85)], epochs=[(1, 1), (3, 2)], total_steps=10)
    assert isinstance(drawn, Image.Image) and drawn.size == (640, 260) == empty.size
    assert drawn.tobytes() != empty.tobytes()
    assert charts.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # no pull towards 0 at the start
    assert charts.smooth([2.0, 0.0])[1] == pytest.approx(2 * 0.8 * 0.2 / (1 - 0.8 ** 2))


def test_poll_sends_only_what_changed(tmp_path):
    ctx, version = version_with_events(tmp_path)
    version.update(status="running", step=2, total_steps=6, epoch=1, epochs=2, loss=0.9)
    append_events(version, step(1, 1.0), step(2, 0.9))
    out, seen = progress_panel.poll(ctx, "dog", "v1", {})
    status, error, chart, samples, log, train, stop, resume = out
    assert "step 2 of 6" in status and error == "" and isinstance(chart, Image.Image) and samples == []
    assert train["interactive"] is False and stop["interactive"] is True
    again, seen = progress_panel.poll(ctx, "dog", "v1", seen)
    assert all(isinstance(u, dict) and set(u) <= {"__type__"} for u in again)  # nothing changed
    time.sleep(0.01)
    append_events(version, step(3, 0.8))
    Image.new("RGB", (8, 8)).save(version.samples_dir / "dog_e000001_00.png")
    third, seen = progress_panel.poll(ctx, "dog", "v1", seen)
    assert isinstance(third[2], Image.Image) and third[3][0][1] == "dog_e000001_00"
    assert set(third[0]) <= {"__type__"}  # version.json did not change
    other, _ = progress_panel.poll(ctx, None, None, seen)
    assert "Pick or create" in other[0]


def test_the_tab_opens_on_the_running_version_else_the_last_one_picked(tmp_path):
    ctx, version = version_with_events(tmp_path)
    ctx.workspace.create_project("cat")
    assert ctx.initial_selection() == ("cat", "v1")  # nothing remembered: the first project by name
    ctx.remember("dog", "v1")
    assert ctx.initial_selection() == ("dog", "v1")

    class Job:
        project, version, status = "cat", "v1", "running"

    ctx.runner.jobs = lambda: [Job()]
    assert ctx.initial_selection() == ("cat", "v1")
