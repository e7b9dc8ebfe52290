"""Every preview is one kind of task: the one drawn automatically after training, the tab's "Preview" and "Preview
this checkpoint", the CLI's ``preview`` and the API's. A task is visible ("N of M pictures, about T left"),
stoppable from wherever it was started (and from the tab of another process on the same workspace) and
replaceable: a new preview of a version stops the one being drawn and takes its place.

A preview takes minutes: the tab's buttons start a background thread (:meth:`PreviewTasks.start`) and the
progress poll reads :meth:`PreviewTasks.describe`; the job runner's after-training hook and the CLI draw in their
own thread (:meth:`PreviewTasks.run`), registered the same way. The drawing itself is ``preview.run.run_preview``
(one txt2img at a time through the host, resumable).

Each running task is recorded in ``previews/task.json`` (pid, origin, progress, a stop request), so that another
process sees it and can ask it to stop; the process that draws checks for that request about once a second.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import psutil

from lib_trainer.common.files import atomic_save, atomic_write_json, read_json
from lib_trainer.common.i18n import tr
from lib_trainer.presets import format_duration
from lib_trainer.preview.cells import PreviewBusy, PreviewCell, is_running
from lib_trainer.preview.config import PreviewConfig, should_run_after_training
from lib_trainer.preview.run import PreviewResult, ProgressCallback, run_preview
from lib_trainer.projects import Version, now_iso

TASK_FILE = "task.json"
ORIGINS = ("auto", "tab", "cli", "api")
STOP_POLL_S = 1.0
REPLACE_TIMEOUT_S = 120.0  # how long a new preview waits for the one it replaces to stop


@dataclass
class PreviewTask:
    """One preview being drawn (or drawn) by this process."""

    key: str
    origin: str
    checkpoints: Optional[List[str]]
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    total: int = 0
    drawn: int = 0  # cells drawn by this run (the rest of ``done`` were reused)
    started: float = field(default_factory=time.monotonic)
    drawing_since: Optional[float] = None  # when the first cell of this run was asked for
    finished: Optional[float] = None
    result: Optional[PreviewResult] = None
    error: Optional[str] = None
    exception: Optional[BaseException] = None  # what ``error`` says, for a caller that re-raises it (the CLI)
    replaced: bool = False  # stopped because another preview of the version took its place
    thread: Optional[threading.Thread] = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.finished is None

    def eta_s(self) -> Optional[float]:
        """Seconds left at the speed of the cells drawn so far by this run; None before the first one."""
        if not self.drawn or self.drawing_since is None or not self.total:
            return None
        per_cell = (time.monotonic() - self.drawing_since) / self.drawn
        return max(0.0, per_cell * (self.total - self.done))


def task_path(version: Version):
    return version.previews_dir / TASK_FILE


def _alive(pid: Any) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def read_record(version: Version) -> Optional[Dict[str, Any]]:
    """The task record of a preview still being drawn by a live process (this one or another); None otherwise."""
    try:
        record = read_json(task_path(version), None)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("finished") or not _alive(record.get("pid")):
        return None
    return record


def _write_record(version: Version, task: PreviewTask, **extra: Any) -> None:
    record = {"pid": os.getpid(), "origin": task.origin, "done": task.done, "total": task.total,
              "checkpoints": task.checkpoints, "updated": now_iso(), "finished": None, "stop_requested": False,
              **extra}
    data = json.dumps(record, ensure_ascii=False)
    try:  # a status file: losing it (a full disk) must not stop the drawing
        atomic_save(task_path(version), lambda tmp: tmp.write_text(data, encoding="utf-8"), durable=False)
    except OSError:
        pass


def _request_stop_elsewhere(version: Version) -> bool:
    record = read_record(version)
    if record is None or int(record.get("pid", -1)) == os.getpid():
        return False
    record["stop_requested"] = True
    try:
        atomic_write_json(task_path(version), record)
    except OSError:
        return False
    return True


def _stop_requested_elsewhere(version: Version) -> bool:
    try:
        record = read_json(task_path(version), None)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("stop_requested")) and record.get("pid") == os.getpid()


def origin_label(origin: str) -> str:
    return {"auto": tr("after training"), "tab": tr("from the tab"), "cli": tr("from the command line"),
            "api": tr("through the API")}.get(origin, origin)


class PreviewTasks:
    """The previews of one process: at most one per version at a time; the last task of each version is kept for
    its status line."""

    def __init__(self, host: Any):
        self.host = host
        self._tasks: Dict[str, PreviewTask] = {}
        self._lock = threading.Lock()

    def get(self, version: Version) -> Optional[PreviewTask]:
        with self._lock:
            return self._tasks.get(version.key)

    # ---- starting -------------------------------------------------------------------------------------------
    def start(self, version: Version, checkpoints: Optional[List[str]] = None, config: Optional[PreviewConfig] = None,
              *, origin: str = "tab", replace: bool = False) -> PreviewTask:
        """Draw in a background thread. A preview of the version being drawn is stopped first when ``replace``,
        else PreviewBusy."""
        task = self._claim(version, checkpoints, origin, replace)
        task.thread = threading.Thread(target=self._execute, args=(task, version, config, None, False), daemon=True,
                                       name=f"train-tools-preview-{version.name}")
        task.thread.start()
        return task

    def run(self, version: Version, checkpoints: Optional[List[str]] = None, config: Optional[PreviewConfig] = None,
            *, origin: str = "cli", replace: bool = False, progress: Optional[ProgressCallback] = None,
            restart: bool = False, stop: Optional[threading.Event] = None) -> PreviewTask:
        """Draw in this thread (the CLI, the after-training hook), registered like a background task; returns the
        finished task (its ``result``, or its ``error``). ``stop``: the caller's own stop (the CLI's Ctrl-C)."""
        task = self._claim(version, checkpoints, origin, replace)
        if stop is not None:
            task.stop = stop
        self._execute(task, version, config, progress, restart)
        return task

    def _claim(self, version: Version, checkpoints: Optional[List[str]], origin: str, replace: bool) -> PreviewTask:
        deadline = time.monotonic() + REPLACE_TIMEOUT_S
        asked = False
        while True:
            with self._lock:
                current = self._tasks.get(version.key)
                mine = current is not None and current.running
                elsewhere = read_record(version) if not mine else None
                if elsewhere is not None and int(elsewhere.get("pid", -1)) == os.getpid():
                    elsewhere = None  # a record this process left behind (its task has ended)
                if not mine and elsewhere is None and not is_running(version):
                    task = PreviewTask(version.key, origin, list(checkpoints) if checkpoints else None)
                    self._tasks[version.key] = task
                    return task
            if not replace:
                if elsewhere is not None:
                    raise PreviewBusy(tr("A preview of \"{version}\" is being drawn by another Train Tools process "
                                         "(pid {pid}): stop it there or press Stop preview here first.",
                                         version=version.key, pid=elsewhere.get("pid")))
                raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
            if not asked:
                asked = True
                if mine:
                    current.replaced = True
                self.stop(version)
            if time.monotonic() > deadline:
                raise PreviewBusy(tr("The preview of \"{version}\" being drawn did not stop within {seconds:.0f} s; "
                                     "try again in a moment.", version=version.key, seconds=REPLACE_TIMEOUT_S))
            if mine:
                current.ended.wait(0.2)
            else:
                time.sleep(0.2)

    def _execute(self, task: PreviewTask, version: Version, config: Optional[PreviewConfig],
                 progress: Optional[ProgressCallback], restart: bool) -> None:
        watching = threading.Event()

        def watch_for_stop() -> None:  # a stop asked for by another process, through task.json
            while not watching.wait(STOP_POLL_S):
                if _stop_requested_elsewhere(version):
                    task.stop.set()
                    self._interrupt_host()
                    return

        def on_cell(done: int, total: int, cell: PreviewCell) -> None:
            task.done, task.total = done, total
            task.drawn += 1
            _write_record(version, task)
            if progress is not None:
                progress(done, total, cell)

        def on_plan(done: int, total: int) -> None:
            task.done, task.total = done, total
            task.drawing_since = time.monotonic()
            _write_record(version, task)

        _write_record(version, task)
        watcher = threading.Thread(target=watch_for_stop, daemon=True, name="train-tools-preview-stop")
        watcher.start()
        try:
            task.result = run_preview(version, self.host, config, checkpoints=task.checkpoints, stop=task.stop,
                                      progress=on_cell, planned=on_plan, restart=restart)
            task.done = task.result.drawn + task.result.reused
            task.total = task.result.total
        except Exception as exc:  # shown in the tab / printed by the CLI; the thread must end cleanly
            task.error, task.exception = str(exc) or type(exc).__name__, exc
        finally:
            watching.set()
            task.finished = time.monotonic()
            _write_record(version, task, finished=now_iso())
            task.ended.set()

    # ---- stopping -------------------------------------------------------------------------------------------
    def stop(self, version: Version) -> bool:
        """Stop the version's preview: this process's (at the next step of the image being drawn), or ask the
        process drawing it. False when none is being drawn."""
        task = self.get(version)
        if task is not None and task.running:
            task.stop.set()
            self._interrupt_host()
            return True
        return _request_stop_elsewhere(version)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every preview of this process and wait up to ``timeout`` s for them to end (shutting down)."""
        with self._lock:
            running = [t for t in self._tasks.values() if t.running]
        for task in running:
            task.stop.set()
        if running:
            self._interrupt_host()
        deadline = time.monotonic() + timeout
        for task in running:
            task.ended.wait(max(0.0, deadline - time.monotonic()))

    def wait(self, version: Version, timeout: Optional[float] = None) -> bool:
        """Wait until this process draws no preview of the version; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get(version)
            if task is None or not task.running:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            task.ended.wait(0.5 if remaining is None else min(0.5, remaining))

    def _interrupt_host(self) -> None:
        try:
            self.host.interrupt()
        except Exception:
            pass

    # ---- the status line ------------------------------------------------------------------------------------
    def describe(self, version: Version) -> str:
        """One line about the version's preview: drawing (N of M, time left), done, stopped or failed; "" if none."""
        task = self.get(version)
        if task is None or not task.running:
            record = read_record(version)
            if record is not None and int(record.get("pid", -1)) != os.getpid():
                return tr("Drawing the preview ({origin}, in another Train Tools process): {done} of {total} "
                          "pictures.", origin=origin_label(str(record.get("origin"))),
                          done=record.get("done", 0), total=record.get("total", 0) or "?")
        if task is None:
            return ""
        if task.running:
            if task.stop.is_set():
                return tr("Stopping the preview after the picture being drawn…")
            if not task.total:
                return tr("Drawing the preview ({origin})…", origin=origin_label(task.origin))
            eta = task.eta_s()
            if eta is None:
                return tr("Drawing the preview ({origin}): {done} of {total} pictures.",
                          origin=origin_label(task.origin), done=task.done, total=task.total)
            return tr("Drawing the preview ({origin}): {done} of {total} pictures, about {eta} left.",
                      origin=origin_label(task.origin), done=task.done, total=task.total, eta=format_duration(eta))
        if task.error:
            return tr("The preview failed: {error}", error=task.error)
        result = task.result
        if result is None:
            return ""
        parts = []
        if result.interrupted and task.replaced:
            parts.append(tr("Preview replaced by a new one after {done} of {total} pictures.",
                            done=result.drawn + result.reused, total=result.total))
        elif result.interrupted:
            parts.append(tr("Preview stopped after {done} of {total} pictures; press Preview to go on.",
                            done=result.drawn + result.reused, total=result.total))
        else:
            parts.append(tr("Preview done: {total} pictures ({drawn} drawn now) in {seconds:.0f} s.",
                            total=result.total, drawn=result.drawn, seconds=result.elapsed_s))
        if result.failed:
            parts.append(tr("{n} failed: {first}", n=len(result.failed), first=result.failed[0].message))
        parts += list(result.warnings)
        return " ".join(parts)


def after_training_hook(previews: PreviewTasks,
                        on_done: Optional[Callable[[PreviewTask], None]] = None) -> Callable[[Version], None]:
    """The job runner's ``after_train``: draw the version's preview (unless its preview settings turn the automatic
    one off) as an "auto" task, in the runner's thread, so the next training waits for the GPU until it is done or
    stopped. ``on_done(task)`` is told of a preview that ended without an error (the CLI's worker prints it)."""

    def after_train(version: Version) -> None:
        if not should_run_after_training(version):
            return
        task = previews.run(version, origin="auto", replace=True)
        previews.wait(version)  # a preview started from the tab in its place
        if task.error:
            raise RuntimeError(task.error)
        if on_done is not None:
            on_done(task)

    return after_train


__all__ = ["PreviewTask", "PreviewTasks", "after_training_hook", "read_record", "origin_label", "TASK_FILE",
           "ORIGINS"]
