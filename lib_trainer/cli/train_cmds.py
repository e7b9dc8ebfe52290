"""The ``train`` and ``worker`` commands."""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable, Dict

from lib_trainer.cli.common import POLL_S, find_version, make_host, open_workspace, update_settings
from lib_trainer.cli.hints import command
from lib_trainer.cli.errors import CliError, EXIT_OK
from lib_trainer.cli.job_follow import follow_job, spawn_worker, wants_auto_preview
from lib_trainer.cli.output import Output
from lib_trainer.cli.train_config import build_train_config
from lib_trainer.common.i18n import tr


def cmd_train(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer import presets
    from lib_trainer.jobs.runner import JobRunner
    from lib_trainer.trainer import schema

    ws = open_workspace(args)
    version = find_version(ws, args.target, args)
    if version.busy:
        raise CliError(tr("\"{key}\" is already queued or training; follow it with:\n  {command}", key=version.key,
                          command=command(args, "status", version.key, "--follow")))
    runner = JobRunner(ws, host=None)
    if args.resume:
        _remember_preview_choice(args, version)
        job = runner.resume(version.project.name, version.name)
        out.say(tr("Resuming \"{key}\" from {state}.", key=version.key, state=job.resume))
    else:
        cfg, arch = build_train_config(args, out, version)
        est = presets.estimate(cfg, arch, *presets.last_speed(version.read_events()))
        out.say(presets.describe_estimate(est))
        schema.save_config(cfg, version.config_path)
        earlier = version.checkpoints()
        if earlier:  # the job runner moves them to the trash when the run starts (Version.archive_outputs)
            out.warn(tr("The {count} checkpoint(s) of the earlier run move to the workspace's trash ({trash}) when "
                        "this run starts. To keep runs side by side, train a new version instead:\n  {command}",
                        count=len(earlier), trash=str(ws.root / ".trash"),
                        command=command(args, "new", f"{version.project.name}/NEW", "--from", version.name)))
        _remember_preview_choice(args, version)
        job = runner.submit(version.project.name, version.name)
    submitted = time.time()
    worker = spawn_worker(args, ws)
    if args.detach:
        out.say(tr("Queued \"{key}\" as job {job} (position {position}); it trains in the background. Follow it "
                   "with:\n  {command}", key=version.key, job=job.id, position=job.position or 1,
                   command=command(args, "status", version.key, "--follow")))
        out.emit({"ok": True, "command": "train", "detached": True, "version": version.key, "job": job.to_dict(),
                  "worker_pid": worker.pid})
        return EXIT_OK
    code, document = follow_job(out, runner, version, job.id, since=submitted - 1.0, worker=worker, command="train",
                                args=args)
    if code == EXIT_OK and wants_auto_preview(version):
        _wait_for_preview(args, out, version, worker, document)
    out.emit(document)
    return code


def _remember_preview_choice(args: argparse.Namespace, version) -> None:
    if args.preview is not None:  # read by the job runner's after-train hook (settings "auto_preview")
        update_settings(version, auto_preview=bool(args.preview))


def _wait_for_preview(args: argparse.Namespace, out: Output, version, worker, document: Dict[str, Any]) -> None:
    """After a foreground run with --preview: the worker draws the grid; wait for it and say where it is."""
    from lib_trainer.preview.grid import grid_files

    out.say(tr("Drawing the preview grid …"))
    try:
        worker.wait()
    except KeyboardInterrupt:
        out.warn(tr("The preview goes on in the background; once it is done, this shows where it is:\n  {command}",
                    command=command(args, "preview", version.key)))
        return
    error = (version.state().get("after_train_error") or {}).get("message")
    grids = grid_files(version)
    if error:
        out.warn(tr("The preview failed: {message}", message=error))
    for grid in grids:
        out.say(tr("Grid of prompt {n}: {path}", n=grid.prompt_index + 1, path=str(grid.path)))
    document["preview"] = {"grids": [str(g.path) for g in grids], "error": error}


class _DeferredHost:
    """The worker's host for the job runner: the standalone host is built only when a preview draws after training.
    Until then this process holds no model, so releasing the GPU before a trainer starts has nothing to free (and
    needs no torch import, which would delay every trainer start)."""

    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._host: Any = None

    def get(self) -> Any:
        if self._host is None:
            self._host = self._make()
        return self._host

    def release_gpu(self) -> None:
        if self._host is not None:
            self._host.release_gpu()

    def restore_gpu(self) -> None:
        if self._host is not None:
            self._host.restore_gpu()


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    """Run the queue of a workspace until no job is queued or running (what `train` starts in the background)."""
    from lib_trainer.jobs.runner import JobRunner, RunnerSettings
    from lib_trainer.jobs.store import ACTIVE_STATUSES

    ws = open_workspace(args)
    host = _DeferredHost(lambda: make_host(args, ws))

    previews: list = []  # the worker's preview tasks, made with the host when the first preview is drawn

    def after_train(version) -> None:
        from lib_trainer.preview.tasks import PreviewTasks, after_training_hook

        if not previews:
            previews.append(PreviewTasks(host.get()))

        def done(task) -> None:
            print(f"preview of {version.key}: {[str(g.path) for g in task.result.grids]}", flush=True)

        after_training_hook(previews[0], done)(version)

    settings = RunnerSettings(python=args.python, gpu=args.gpu)
    runner = JobRunner(ws, host, settings, after_train=after_train).start()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()} on {ws.root}", flush=True)
    try:
        while any(j.status in ACTIVE_STATUSES for j in runner.jobs()):
            time.sleep(POLL_S * 2)
    finally:
        runner.shutdown(stop_running=False)  # after_train (the preview) ends before this returns
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: queue empty", flush=True)
    return EXIT_OK
