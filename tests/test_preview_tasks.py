"""Every preview is one kind of task (lib_trainer/preview/tasks.py): the one drawn after training, the tab's, the
CLI's and the API's are visible with "N of M pictures", stoppable from where they were started (and from another
process through previews/task.json) and replaceable by a new one."""
from __future__ import annotations

import json
import threading
from typing import Optional

import pytest

from lib_trainer.hosts.base import Txt2ImgRequest, Txt2ImgResult
from lib_trainer.preview.cells import PreviewBusy
from lib_trainer.preview.config import PreviewConfig, save_config
from lib_trainer.preview.tasks import PreviewTasks, after_training_hook, read_record, task_path
from lib_trainer.ui import checkpoints_panel
from tests.jobs_support import wait_for
from tests.ui_support import PaintHost, fake_checkpoint, make_context


class GatedHost(PaintHost):
    """A PaintHost whose txt2img waits until it is let through (``allow`` one picture, or ``free`` for all) or
    interrupted, like a slow GPU draw; ``entered`` counts the pictures begun."""

    def __init__(self, root):
        super().__init__(root)
        self.allow = threading.Semaphore(0)
        self.free = threading.Event()
        self.interrupted = threading.Event()
        self.entered = threading.Semaphore(0)

    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        self.entered.release()
        while not (self.free.is_set() or self.allow.acquire(timeout=0.02)):
            if self.interrupted.is_set() or (interrupt is not None and interrupt.is_set()):
                self.interrupted.clear()
                break
        return super().txt2img(request, interrupt=interrupt)

    def interrupt(self) -> None:
        self.interrupted.set()


def version_with_checkpoints(tmp_path, count=3):
    ctx = make_context(tmp_path)
    ctx.host = GatedHost(tmp_path)
    ctx.workspace.create_project("dog")
    version = ctx.version("dog", "v1")
    for epoch in range(1, count + 1):
        fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-{epoch:06d}.safetensors", epoch, epoch * 4)
    version.update(status="finished", settings={"trigger": "sks_dog"})
    return ctx, version


def small(**changes) -> PreviewConfig:
    values = dict(prompts=["a dog"], weights=[0.5, 1.0], width=16, height=16, steps=1, seed=3, reference=False)
    values.update(changes)
    return PreviewConfig(**values)


def test_the_preview_after_training_is_a_task_the_tab_sees_and_stops(tmp_path):
    ctx, version = version_with_checkpoints(tmp_path)
    previews = PreviewTasks(ctx.host)
    ctx = type(ctx)(ctx.workspace, ctx.host, ctx.runner, previews=previews)  # the tab shares the runner's tasks
    save_config(version, small())
    hook = after_training_hook(previews)
    runner_thread = threading.Thread(target=hook, args=(version,))  # the job runner's thread
    runner_thread.start()
    assert ctx.host.entered.acquire(timeout=30)
    ctx.host.allow.release()
    assert ctx.host.entered.acquire(timeout=30)  # the second picture is being drawn
    status = ctx.previews.describe(version)
    assert "after training" in status and "of 6 pictures" in status, status  # 3 checkpoints × 2 weights
    record = read_record(version)
    assert record["origin"] == "auto" and record["total"] == 6
    assert checkpoints_panel.on_stop_preview(ctx, "dog", "v1") == ""  # the status line says it is stopping
    runner_thread.join(30)
    assert not runner_thread.is_alive()  # the runner goes on to the next job
    status = ctx.previews.describe(version)
    assert "Preview stopped after" in status and "of 6 pictures" in status, status
    assert "No preview is being drawn" in checkpoints_panel.on_stop_preview(ctx, "dog", "v1")


def test_a_new_preview_replaces_the_one_being_drawn(tmp_path):
    ctx, version = version_with_checkpoints(tmp_path)
    first = ctx.previews.start(version, None, small(), origin="auto")
    assert ctx.host.entered.acquire(timeout=30)
    with pytest.raises(PreviewBusy):
        ctx.previews.start(version, None, small(weights=[1.0]), origin="tab")
    ctx.host.free.set()  # from here on pictures are drawn at once
    second = ctx.previews.start(version, None, small(weights=[1.0]), origin="tab", replace=True)
    assert ctx.previews.wait(version, 30)
    assert first.replaced and first.result is not None and first.result.interrupted
    assert second.result is not None and not second.result.interrupted and second.result.total == 3
    assert "Preview done: 3 pictures" in ctx.previews.describe(version)


def test_the_tabs_preview_button_replaces_and_leaves_no_stale_message(tmp_path):
    ctx, version = version_with_checkpoints(tmp_path)
    settings = checkpoints_panel.preview_settings(ctx, version)
    settings[2], settings[4], settings[6], settings[7] = "1", 1, 16, 16  # weights, steps, width, height
    ctx.previews.start(version, None, small(), origin="auto")
    assert ctx.host.entered.acquire(timeout=30)
    ctx.host.free.set()
    message = checkpoints_panel.on_preview(ctx, "dog", "v1", None, False, *settings)
    assert message == ""  # the status line beside it says what is drawn; a message would outlive it
    assert ctx.previews.wait(version, 30)
    assert "Preview done" in ctx.previews.describe(version)


def test_a_stop_from_another_process_reaches_the_drawing_one(tmp_path):
    ctx, version = version_with_checkpoints(tmp_path)
    task = ctx.previews.start(version, None, small(), origin="cli")
    assert ctx.host.entered.acquire(timeout=30)
    record = json.loads(task_path(version).read_text(encoding="utf-8"))
    record["stop_requested"] = True  # what PreviewTasks.stop writes in the other process
    task_path(version).write_text(json.dumps(record), encoding="utf-8")
    wait_for(lambda: not task.running, 30, "the preview to stop")
    assert task.result is not None and task.result.interrupted
    assert read_record(version) is None  # the record says it has finished


def test_stop_all_ends_every_preview_of_the_process(tmp_path):
    ctx, version = version_with_checkpoints(tmp_path)
    task = ctx.previews.start(version, None, small(), origin="tab")
    assert ctx.host.entered.acquire(timeout=30)
    ctx.previews.stop_all(timeout=30)
    assert not task.running and task.result.interrupted
