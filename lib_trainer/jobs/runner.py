"""The job queue and runner: one trainer subprocess at a time, in submission order.

Runs inside the WebUI process (or the standalone app): standard library + psutil + filelock, never torch.
The queue file is :mod:`lib_trainer.jobs.store`, following one trainer :mod:`lib_trainer.jobs.supervisor`, the
process itself :mod:`lib_trainer.jobs.process`, its event stream :mod:`lib_trainer.jobs.events` and the
workspace lock :mod:`lib_trainer.jobs.lock`.

- The queue lives in ``<workspace>/jobs.json`` (atomic writes), so it survives a page reload and a restart.
- One worker thread per :class:`JobRunner` runs the jobs in order. ``<workspace>/.trainer.lock`` (an OS file
  lock, released by the OS when its process dies) is held from claiming a job until its trainer has ended, so
  two processes on one workspace (the WebUI and the standalone app) never train at once.
- A trainer outlives the process that started it (own session / process group). A runner that takes the lock
  finds jobs still marked ``running``: it follows a live trainer to its end (reattach), and marks a dead one
  ``interrupted`` (resumable from its newest ``*-state`` folder) or, if its events say so, finished/failed.
- Progress is mirrored into ``version.json``: status, pid, started/finished, total_steps, step, epoch, loss, lr,
  it_per_s, eta_s, checkpoints, exit_code, error {message, traceback_tail, log_tail}, resumable, resume_state.

Listeners (:meth:`JobRunner.subscribe`) receive ``(job, event)`` for every trainer event read, plus the runner's
own ``{"event": "job", "status": ...}`` whenever a job changes status.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from lib_trainer.common.i18n import tr
from lib_trainer.common.tracebacks import traceback_tail
from lib_trainer.jobs.events import EventTail, last_events
from lib_trainer.jobs.lock import try_acquire, workspace_lock
from lib_trainer.jobs.process import TrainerProcess, find_trainer
from lib_trainer.jobs.store import ACTIVE_STATUSES, Job, JobError, JobStore
from lib_trainer.jobs.supervisor import (TrainerRun, apply_event, enforce_stop, final_changes, log_line, newest_state,
                                         outcome, output_dir, prepare_config, spawn_trainer, terminate)
from lib_trainer.jobs.unsaved import Unsaved
from lib_trainer.projects import Busy, ProjectError, Version, Workspace, now_iso

log = logging.getLogger("train_tools.jobs")

Listener = Callable[["Job", Dict[str, Any]], None]
AfterTrain = Callable[[Version], None]


@dataclass
class RunnerSettings:
    python: Optional[str] = None        # None: this interpreter; or another Python (a kohya venv, say)
    gpu: Optional[str] = None           # CUDA_VISIBLE_DEVICES for the trainer ("0", "1", "0,1"); None: unchanged
    deps_dir: Optional[Path] = None     # the trainer's private dependencies; None: deps.default_deps_dir()
    stop_timeout_s: float = 60.0        # after a stop request, how long the trainer may take to save and exit
    poll_s: float = 0.5                 # how often the runner looks at the trainer and its events


# ---------------------------------------------------------------------------------------------- the runner

class JobRunner:
    """Queue and run training jobs of one workspace.

    ``host`` is a :class:`lib_trainer.hosts.base.Host` (only ``release_gpu``/``restore_gpu`` are used here);
    ``after_train(version)`` runs after a job finished when the version's settings have ``auto_preview`` set.
    """

    def __init__(self, workspace: Workspace, host: Any, settings: Optional[RunnerSettings] = None,
                 after_train: Optional[AfterTrain] = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.host = host
        self.settings = settings or RunnerSettings()
        self.after_train = after_train
        self.store = JobStore(self.workspace.root)
        self._trainer_lock = workspace_lock(self.workspace.root / ".trainer.lock")
        self._listeners: List[Listener] = []
        self._changed = threading.Condition(threading.RLock())
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_trainer_on_shutdown = False
        self._thread: Optional[threading.Thread] = None
        self._handling: Optional[str] = None  # id of the job the worker is busy with (after_train included)
        self.unsaved = Unsaved()  # what a full disk kept from version.json and jobs.json
        self._last_error: Optional[str] = None

    # ---- life cycle ------------------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        """Start the worker thread; it first picks up a trainer left running by an earlier process."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._worker, name="train-tools-jobs", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, stop_running: bool = False, timeout: Optional[float] = None) -> None:
        """Stop the worker. A running trainer keeps running (the next runner reattaches to it) unless
        ``stop_running``, which stops it gracefully first and marks the job cancelled."""
        self._stop_trainer_on_shutdown = stop_running
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- public API ------------------------------------------------------------------------------------
    def submit(self, project: str, version: str) -> Job:
        """Queue a fresh training run of a version; returns the job (``position`` 1 = next)."""
        return self._enqueue(self.workspace.version(project, version), resume=None)

    def resume(self, project: str, version: str) -> Job:
        """Queue a run that continues from the version's newest saved state (a stopped or interrupted run)."""
        v = self.workspace.version(project, version)
        state = newest_state(output_dir(v))
        if state is None:
            raise JobError(tr("\"{key}\" has no saved training state to resume from; train it again instead.",
                              key=v.key))
        return self._enqueue(v, resume=str(state))

    def stop(self, project: str, version: str) -> str:
        """Stop a version's job: a queued one is removed ("dequeued"); a running one is asked to save and exit,
        then killed after ``stop_timeout_s`` ("stopping"); "idle" when it has none."""
        v = self.workspace.version(project, version)

        def change(jobs: List[Job]) -> Tuple[str, Optional[Job]]:
            for job in jobs:
                status = self.unsaved.job_status(job)  # it may have ended on a full disk
                if job.key != v.key or status not in ACTIVE_STATUSES:
                    continue
                if job.status == "running" and not v.busy:
                    return "idle", None  # its trainer has ended: the runner is recording how (version.json first)
                if job.status == "queued":
                    jobs.remove(job)
                    before = v.state().get("queued_from")
                    v.update(status=before if before not in (None, *ACTIVE_STATUSES) else "draft", job_id=None)
                    return "dequeued", job
                job.stop_requested = True
                try:
                    v.update(stop_requested=now_iso())
                except OSError:  # only what the tab shows meanwhile; the stop itself is in jobs.json
                    pass
                return "stopping", job
            return "idle", None

        latest = self.job_for(v.project.name, v.name)
        if latest is None or latest.status not in ACTIVE_STATUSES:
            return "idle"
        try:
            outcome, job = self.store.mutate(change)
        except OSError:  # a full disk: a trainer this runner follows is stopped all the same
            running = next((j for j in self.store.load() if j.key == v.key and j.status == "running"), None)
            if running is None or running.id != self._handling:
                raise
            self.unsaved.stops.add(running.id)
            outcome, job = "stopping", running
        if job is not None and outcome == "dequeued":
            self._notify(job, {"event": "job", "status": "dequeued"})
        self._wake.set()
        self._notify_changed()
        return outcome

    def jobs(self) -> List[Job]:
        """Every job in jobs.json: queued and running ones and recent history, in submission order (with what
        could not be written into it yet)."""
        return [self.unsaved.apply_to_job(job) for job in self.store.load()]

    def job_for(self, project: str, version: str) -> Optional[Job]:
        """The version's latest job, if it ever had one."""
        key = f"{project}/{version}"
        found = [j for j in self.jobs() if j.key == key]
        return found[-1] if found else None

    def status(self, project: str, version: str, events: int = 20) -> Dict[str, Any]:
        """version.json's state (with what could not be written into it yet) plus the latest job, its queue
        position and the last ``events`` events."""
        v = self.workspace.version(project, version)
        job = self.job_for(v.project.name, v.name)
        return {**v.to_dict(), **self.unsaved.versions.get(v.key, {}), "job": job.to_dict() if job else None,
                "position": job.position if job and job.status == "queued" else None,
                "events": last_events(v.events_path, events)}

    def wait(self, project: str, version: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Block until the version's job has ended (and this runner's after_train hook for it has returned);
        returns :meth:`status`. TimeoutError after ``timeout`` seconds."""
        v = self.workspace.version(project, version)
        project, version = v.project.name, v.name
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job_for(project, version)
            if job is None or (job.status not in ACTIVE_STATUSES and job.id != self._handling):
                return self.status(project, version)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(tr("\"{key}\" is still {status}.", key=job.key, status=job.status))
            with self._changed:
                self._changed.wait(self.settings.poll_s if remaining is None else min(self.settings.poll_s, remaining))

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(job, event)`` for every event read (in the worker thread); returns an unsubscribe."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)
        return unsubscribe

    # ---- queueing --------------------------------------------------------------------------------------
    def _enqueue(self, v: Version, resume: Optional[str]) -> Job:
        if not v.config_path.is_file():
            raise JobError(tr("\"{key}\" has no training config (config.toml) yet: set up the training first.",
                              key=v.key))
        job = Job(id=time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3), project=v.project.name,
                  version=v.name, created=now_iso(), resume=resume)

        def change(jobs: List[Job]) -> Job:
            if any(j.key == v.key and j.status in ACTIVE_STATUSES for j in jobs):
                raise Busy(tr("\"{key}\" is already queued or training.", key=v.key))
            jobs.append(job)
            # under the queue lock, so that a worker claiming the job cannot mark it running before this
            v.update(status="queued", job_id=job.id, stop_requested=None, queued_from=v.status)
            return job

        self.store.mutate(change)
        job = self.store.get(job.id) or job
        self._notify(job, {"event": "job", "status": "queued", "position": job.position})
        self._wake.set()
        self._notify_changed()
        return job

    # ---- the worker ------------------------------------------------------------------------------------
    def _worker(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            worked = False
            if try_acquire(self._trainer_lock):
                try:
                    self._retry_unsaved()
                    worked = self._work_once()
                    failures = 0
                except Exception as exc:  # the worker must never die; the job itself was already marked
                    failures += 1
                    self._log_error(exc)
                finally:
                    self._trainer_lock.release()
            if failures:  # the same failure again would only fill the log: wait longer each time, up to a minute
                self._wake.wait(min(60.0, self.settings.poll_s * 2 ** failures))
                self._wake.clear()
            elif not worked:
                self._wake.wait(self.settings.poll_s)
                self._wake.clear()

    def _log_error(self, exc: Exception) -> None:
        """A runner error in the log once, not once per retry."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            self._last_error = text
            log.exception("train_tools: job runner error")
        else:
            log.debug("train_tools: job runner error again: %s", text)

    def _work_once(self) -> bool:
        """With the trainer lock held: adopt a job left running, else run the next queued one."""
        left_running = [j for j in self.store.load() if j.status == "running" and j.id not in self.unsaved.jobs]
        if left_running:
            self._handle(left_running[0], self._adopt)
            return True

        def claim(jobs: List[Job]) -> Optional[Job]:
            for job in jobs:
                if job.status == "queued":
                    job.status, job.owner_pid, job.started = "running", os.getpid(), now_iso()
                    return job
            return None

        job = self.store.mutate(claim)
        if job is None:
            return False
        self._handle(job, self._execute)
        return True

    def _handle(self, job: Job, work: Callable[[Job], None]) -> None:
        self._handling = job.id
        try:
            work(job)
        finally:
            self._handling = None
            self._notify_changed()

    def _adopt(self, job: Job) -> None:
        """A job marked running that nobody follows: reattach to its trainer or settle what became of it."""
        try:
            v = self.workspace.version(job.project, job.version)
        except ProjectError:
            self._finish_job(job, "failed", tr("The version was deleted or renamed while it was training."))
            return
        run = TrainerRun(job, v, checkpoints=list(v.state().get("checkpoints") or []))
        if job.pid is None:  # the runner went away between claiming the job and starting its trainer
            self._conclude(run, "failed", tr("Train Tools stopped before the trainer started; press Train again."),
                           exit_code=None)
            return
        self._replay(run)
        if find_trainer(job) is None:
            self._settle_lost(run)
            return
        log.info("train_tools: reattaching to trainer pid %s of %s", job.pid, job.key)
        self._supervise(run, start=None)

    def _settle_lost(self, run: TrainerRun) -> None:
        """The trainer ended while no runner watched it: its events tell what happened."""
        end = run.terminal
        if end and end.get("event") == "done" and not end.get("interrupted"):
            status, message = "done", None
        elif run.job.stop_requested:
            status, message = "cancelled", tr("Stopped on request; the checkpoints written so far are kept.")
        elif end and end.get("event") == "error":
            status, message = "failed", str(end.get("message") or "")
        else:
            status, message = "interrupted", tr(
                "Training was interrupted while Train Tools was not running (the trainer is gone).")
        self._conclude(run, status, message, exit_code=None)

    def _replay(self, run: TrainerRun) -> None:
        """Rebuild the run's progress from its events so far, without notifying listeners."""
        run.tail = EventTail(run.version.events_path, run.job.events_offset)
        changes: Dict[str, Any] = {}
        for event in run.tail.read():
            apply_event(run, event, changes)
        if changes:
            run.version.update(**changes)

    # ---- running one job -------------------------------------------------------------------------------
    def _execute(self, job: Job) -> None:
        try:
            v = self.workspace.version(job.project, job.version)
        except ProjectError as exc:
            self._finish_job(job, "failed", str(exc))
            return
        run = TrainerRun(job, v)
        try:
            config = prepare_config(v, job)
            if not job.resume:
                if v.events_path.exists():
                    os.replace(v.events_path, v.events_path.with_name("events.prev.jsonl"))
                # A fresh run starts clean: the last run's checkpoints, samples and previews go to the trash
                # (restorable) instead of mixing with the new ones in the list and the preview grid.
                if v.archive_outputs() is not None:
                    self._forget_preview_loras(v)
            v.logs_dir.mkdir(parents=True, exist_ok=True)
            job.config = str(config)
            job.log_offset = v.log_path.stat().st_size if v.log_path.exists() else 0
            job.events_offset = v.events_path.stat().st_size if v.events_path.exists() else 0
            run.tail = EventTail(v.events_path, job.events_offset)
            reset: Dict[str, Any] = dict(
                status="running", job_id=job.id, pid=None, started=job.started, finished=None, exit_code=None,
                error=None, message=None, total_steps=None, epochs=None, step=0, epoch=0, loss=None, lr=None,
                it_per_s=None, eta_s=None, warnings=[], last_sample=None, resumable=False, resume_state=None,
                resumed_from=job.resume, after_train_error=None, restore_error=None, stop_requested=None)
            if job.resume:
                run.checkpoints = list(v.state().get("checkpoints") or [])
            else:
                reset["checkpoints"] = []
            v.update(**reset)
            self.store.update(job.id, config=job.config, log_offset=job.log_offset,
                              events_offset=job.events_offset)
        except Exception as exc:
            message = exc.args[0] if isinstance(exc, (JobError, ProjectError)) and exc.args else \
                tr("Train Tools' job runner failed: {error}", error=f"{type(exc).__name__}: {exc}")
            self._conclude(run, "failed", message, exit_code=None)
            return
        self._notify(job, {"event": "job", "status": "running"})
        self._notify_changed()
        self._supervise(run, start=lambda: spawn_trainer(v, job, config, self.settings, self.store))

    def _supervise(self, run: TrainerRun, start: Optional[Callable[[], TrainerProcess]]) -> None:
        """Free the host's GPU, start (or reattach to) the trainer, follow it to its end and restore the GPU
        exactly once — also when anything here fails — before the job is marked ended. A shutdown leaves the
        trainer and the GPU to the next runner."""
        try:
            self.host.release_gpu()
        except Exception as exc:  # a host that cannot unload should not stop training on a big GPU
            log.warning("train_tools: release_gpu failed: %s", exc)
            run.warnings.append(tr("Could not free the GPU before training: {error}", error=str(exc)))
        restore = True
        try:
            if start is not None:
                run.trainer = start()
            elif run.job.pid:
                run.trainer = TrainerProcess(run.job.pid)
            else:
                raise JobError(tr("The trainer of \"{key}\" cannot be found.", key=run.job.key))
            self._follow(run)
            status, message, extra = outcome(run)
        except _Detached:
            restore = False
            if run.trainer is not None and run.trainer.popen is not None:
                # reap it whenever it ends, so that it never lingers as a zombie of this process
                threading.Thread(target=run.trainer.popen.wait, name="train-tools-reaper", daemon=True).start()
            return
        except Exception as exc:
            log.exception("train_tools: job %s failed in the runner", run.job.key)
            if run.trainer is not None and not run.trainer.poll():
                terminate(run, self.settings.stop_timeout_s)
            status = "failed"
            message = exc.args[0] if isinstance(exc, JobError) and exc.args else \
                tr("Train Tools' job runner failed: {error}", error=f"{type(exc).__name__}: {exc}")
            extra = {"traceback_tail": "" if isinstance(exc, JobError) else traceback_tail()}
        finally:
            if restore:
                self._restore_gpu(run)
        self._conclude(run, status, message, exit_code=run.trainer.exit_code if run.trainer else None, **extra)
        self._maybe_after_train(run)

    def _follow(self, run: TrainerRun) -> None:
        """Read events and watch the process until it has ended; handles stop requests and the kill timeout."""
        assert run.trainer is not None
        tail = run.tail or EventTail(run.version.events_path, run.job.events_offset)
        while True:
            ended = run.trainer.poll()
            self._consume(run, tail.read(final=ended))
            if ended:
                return
            if self._stopping.is_set():
                if not self._stop_trainer_on_shutdown:
                    raise _Detached()
                run.job.stop_requested = True
            if not run.job.stop_requested:
                stored = self.store.get(run.job.id)  # a stop may come from another process
                run.job.stop_requested = bool(stored and stored.stop_requested) or run.job.id in self.unsaved.stops
            if run.job.stop_requested:
                enforce_stop(run, self.settings.stop_timeout_s)
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    # ---- events -> version.json ------------------------------------------------------------------------
    def _consume(self, run: TrainerRun, events: List[Dict[str, Any]]) -> None:
        if not events:
            return
        changes: Dict[str, Any] = {}
        for event in events:
            apply_event(run, event, changes)
        if changes:
            self._update_version(run.version, changes)
        for event in events:
            self._notify(run.job, event)

    # ---- endings ---------------------------------------------------------------------------------------
    def _conclude(self, run: TrainerRun, status: str, message: Optional[str], exit_code: Optional[int],
                  traceback_tail: str = "") -> None:
        changes = final_changes(run, status, message, exit_code, traceback_tail)
        if run.trainer is not None and run.trainer.popen is not None:
            log_line(run.version, f"trainer exited with code {exit_code}; job {status}")
        try:
            self._update_version(run.version, changes)
        except Exception:  # the version vanished; jobs.json still records the outcome
            log.exception("train_tools: cannot record the end of %s in version.json", run.job.key)
        self._finish_job(run.job, status, message, exit_code)

    def _finish_job(self, job: Job, status: str, message: Optional[str], exit_code: Optional[int] = None) -> None:
        job.status, job.finished, job.message, job.exit_code = status, now_iso(), message, exit_code
        changes = dict(status=status, finished=job.finished, message=message, exit_code=exit_code)
        try:
            self.store.update(job.id, **changes)
        except OSError as exc:  # a full disk: the job has ended all the same; jobs.json follows when it can
            log.warning("train_tools: cannot write the end of job %s to jobs.json (%s); kept in memory", job.key, exc)
            self.unsaved.keep_job(job.id, changes)
        self._notify(job, {"event": "job", "status": status, "message": message})
        self._notify_changed()

    def _update_version(self, v: Version, changes: Dict[str, Any]) -> None:
        """version.json changes; on a write failure (a full disk) they are kept for status() and written later."""
        try:
            v.update(**changes)
        except OSError as exc:
            if self.unsaved.keep_version(v.key, changes):
                log.warning("train_tools: cannot write %s (%s); its state is kept in memory", v.state_path, exc)
            return
        self.unsaved.version_written(v.key)

    @property
    def unsaved_revision(self) -> int:
        """Changes whenever what a full disk kept does: the tab's poll refreshes on it (the files stay put)."""
        return self.unsaved.revision

    def _retry_unsaved(self) -> None:
        """Write what a full disk kept in memory (Unsaved.retry decides when)."""

        def write_version(key: str, changes: Dict[str, Any]) -> bool:
            project, name = key.split("/", 1)
            try:
                self.workspace.version(project, name).update(**changes)
            except ProjectError:
                return True  # deleted since: nothing to write
            except OSError:
                return False
            return True

        def write_job(job_id: str, changes: Dict[str, Any]) -> bool:
            try:
                self.store.update(job_id, **changes)
            except OSError:
                return False
            return True

        self.unsaved.retry(write_version, write_job)

    def _forget_preview_loras(self, v: Version) -> None:
        """Drop the copies of the last run's checkpoints the host staged for previews (their names are content
        hashes, so they would only clutter its Lora folder)."""
        try:
            self.host.forget_preview_loras(v.path)
        except Exception as exc:  # a host that cannot (or a recording host in tests) must not stop the run
            log.info("train_tools: forget_preview_loras: %s", exc)

    def _restore_gpu(self, run: TrainerRun) -> None:
        try:
            self.host.restore_gpu()
        except Exception as exc:
            log.warning("train_tools: restore_gpu failed: %s", exc)
            try:
                run.version.update(restore_error=str(exc))
            except ProjectError:
                pass

    def _maybe_after_train(self, run: TrainerRun) -> None:
        if self.after_train is None or run.job.status != "done":
            return
        try:
            wanted = bool((run.version.state().get("settings") or {}).get("auto_preview"))
        except ProjectError:
            return
        if not wanted:
            return
        try:
            self.after_train(run.version)
        except Exception as exc:  # the preview failing must never stop the queue
            log.exception("train_tools: after_train hook failed for %s", run.job.key)
            try:
                run.version.update(after_train_error={"message": f"{type(exc).__name__}: {exc}",
                                                      "traceback_tail": traceback_tail()})
            except ProjectError:
                pass

    # ---- helpers ---------------------------------------------------------------------------------------
    def _notify(self, job: Job, event: Dict[str, Any]) -> None:
        for callback in list(self._listeners):
            try:
                callback(job, event)
            except Exception:
                log.exception("train_tools: job listener failed")

    def _notify_changed(self) -> None:
        with self._changed:
            self._changed.notify_all()


class _Detached(Exception):
    """The runner shuts down and leaves the trainer running."""
