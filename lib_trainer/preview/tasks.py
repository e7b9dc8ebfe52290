"""Previews drawn on request from the tab ("Preview", "Preview this checkpoint"), each in a background thread.

A preview takes minutes; holding a gradio request (and the WebUI's queue) that long is what the tab must never
do. So the button starts a thread and returns at once, and the tab's progress poll reads :meth:`describe`. The
work itself is ``lib_trainer.preview.run.run_preview`` (one txt2img at a time through the host, resumable).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from lib_trainer.common.i18n import tr
from lib_trainer.preview.cells import PreviewBusy, is_running
from lib_trainer.preview.run import run_preview
from lib_trainer.projects import Version


@dataclass
class PreviewTask:
    key: str
    checkpoints: Optional[List[str]]
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: Optional[float] = None
    result: Any = None  # preview.PreviewResult
    error: Optional[str] = None
    thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self.finished is None


class PreviewTasks:
    """At most one preview per version at a time; the last task of each version is kept for its status."""

    def __init__(self, host: Any):
        self.host = host
        self._tasks: Dict[str, PreviewTask] = {}
        self._lock = threading.Lock()

    def get(self, version: Version) -> Optional[PreviewTask]:
        with self._lock:
            return self._tasks.get(version.key)

    def start(self, version: Version, checkpoints: Optional[List[str]] = None, config: Any = None) -> PreviewTask:
        """Start drawing; raises PreviewBusy when a preview of the version is already being drawn."""
        with self._lock:
            current = self._tasks.get(version.key)
            if (current is not None and current.running) or is_running(version):
                raise PreviewBusy(tr("A preview of \"{version}\" is already running.", version=version.key))
            task = PreviewTask(version.key, list(checkpoints) if checkpoints else None)
            self._tasks[version.key] = task
        task.thread = threading.Thread(target=self._run, args=(task, version, config), daemon=True,
                                       name=f"train-tools-preview-{version.name}")
        task.thread.start()
        return task

    def _run(self, task: PreviewTask, version: Version, config: Any) -> None:
        def progress(done: int, total: int, _cell: Any) -> None:
            task.done, task.total = done, total

        try:
            task.result = run_preview(version, self.host, config, checkpoints=task.checkpoints,
                                              stop=task.stop, progress=progress)
            task.done = task.result.drawn + task.result.reused
            task.total = task.result.total
        except Exception as exc:  # shown in the tab; the thread must end cleanly whatever happened
            task.error = str(exc) or type(exc).__name__
        finally:
            task.finished = time.monotonic()

    def stop(self, version: Version) -> bool:
        task = self.get(version)
        if task is None or not task.running:
            return False
        task.stop.set()
        try:
            self.host.interrupt()
        except Exception:
            pass
        return True

    def describe(self, version: Version) -> str:
        """One line about the version's preview: drawing (with progress), done, stopped or failed; "" if none."""
        task = self.get(version)
        if task is None:
            return tr("A preview is being drawn after training.") if is_running(version) else ""
        if task.running:
            if task.total:
                return tr("Drawing the preview: {done} of {total} pictures.", done=task.done, total=task.total)
            return tr("Drawing the preview…")
        if task.error:
            return tr("The preview failed: {error}", error=task.error)
        result = task.result
        if result is None:
            return ""
        parts = []
        if result.interrupted:
            parts.append(tr("Preview stopped after {done} of {total} pictures; press Preview to go on.",
                            done=result.drawn + result.reused, total=result.total))
        else:
            parts.append(tr("Preview done: {total} pictures ({drawn} drawn now) in {seconds:.0f} s.",
                            total=result.total, drawn=result.drawn, seconds=result.elapsed_s))
        if result.failed:
            parts.append(tr("{n} failed: {first}", n=len(result.failed), first=result.failed[0].message))
        parts += list(result.warnings)
        return " ".join(parts)


__all__ = ["PreviewTask", "PreviewTasks"]
