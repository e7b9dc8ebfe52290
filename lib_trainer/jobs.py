"""The job queue and runner: one trainer subprocess at a time, followed through its event stream.

Runs inside the WebUI process (or the standalone app): standard library + psutil only, never torch.
The queue file is :mod:`lib_trainer.job_store`, the trainer process :mod:`lib_trainer.job_process`, and the
event stream :mod:`lib_trainer.event_tail`; their public names are importable from here too.

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
import signal
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from lib_trainer.event_tail import LOG_TAIL_LINES, EventTail, last_events, log_tail, parse_event_line, read_from
from lib_trainer.i18n import tr
from lib_trainer.job_process import (TRAINER_MODULE, FileLock, TrainerProcess, create_time, find_trainer,
                                     start_trainer, trainer_command, trainer_env)
from lib_trainer.job_store import ACTIVE_STATUSES, HISTORY_KEPT, JOB_STATUSES, Job, JobStore
from lib_trainer.projects import Busy, ProjectError, Version, Workspace, now_iso
from lib_trainer.trainer import schema

log = logging.getLogger("train_tools.jobs")

# job status -> version status
VERSION_STATUS = {"queued": "queued", "running": "running", "done": "finished", "failed": "failed",
                  "cancelled": "cancelled", "interrupted": "interrupted"}
STATE_SUFFIX = "-state"

Listener = Callable[["Job", Dict[str, Any]], None]
AfterTrain = Callable[[Version], None]


@dataclass
class RunnerSettings:
    python: Optional[str] = None        # None: this interpreter; or another Python (a kohya venv, say)
    gpu: Optional[str] = None           # CUDA_VISIBLE_DEVICES for the trainer ("0", "1", "0,1"); None: unchanged
    deps_dir: Optional[Path] = None     # the trainer's private dependencies; None: deps.default_deps_dir()
    stop_timeout_s: float = 60.0        # after a stop request, how long the trainer may take to save and exit
    poll_s: float = 0.5                 # how often the runner looks at the trainer and its events


class JobError(ProjectError):
    """A job cannot be queued, resumed or run; the message says why."""


def newest_state(folder: Path) -> Optional[Path]:
    """The newest ``*-state`` folder a trainer wrote into ``folder`` (save_state, or a stop), if any."""
    try:
        candidates = [p for p in folder.iterdir()
                      if p.name.endswith(STATE_SUFFIX) and not p.name.startswith(".")
                      and (p / "train_state.json").is_file()]
    except OSError:
        return None
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / "train_state.json").stat().st_mtime)


# ---------------------------------------------------------------------------------------------- the runner

@dataclass
class _Run:
    """What the worker knows about the job it is following."""
    job: Job
    version: Version
    trainer: Optional[TrainerProcess] = None
    stop_sent_at: Optional[float] = None
    killed: bool = False
    terminal: Optional[Dict[str, Any]] = None     # the last done/error event
    tail: Optional[EventTail] = None
    checkpoints: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


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
        self._trainer_lock = FileLock(self.workspace.root / ".trainer.lock")
        self._listeners: List[Listener] = []
        self._changed = threading.Condition(threading.RLock())
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_trainer_on_shutdown = False
        self._thread: Optional[threading.Thread] = None
        self._run: Optional[_Run] = None
        self._handling: Optional[str] = None  # id of the job the worker is busy with (after_train included)

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
        state = newest_state(self._output_dir(v))
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
                if job.key != v.key or job.status not in ACTIVE_STATUSES:
                    continue
                if job.status == "queued":
                    jobs.remove(job)
                    before = v.state().get("queued_from")
                    v.update(status=before if before not in (None, *ACTIVE_STATUSES) else "draft", job_id=None)
                    return "dequeued", job
                job.stop_requested = True
                v.update(stop_requested=now_iso())
                return "stopping", job
            return "idle", None

        outcome, job = self.store.mutate(change)
        if job is not None and outcome == "dequeued":
            self._notify(job, {"event": "job", "status": "dequeued"})
        self._wake.set()
        self._notify_changed()
        return outcome

    def jobs(self) -> List[Job]:
        """Every job in jobs.json: queued and running ones and recent history, in submission order."""
        return self.store.load()

    def job_for(self, project: str, version: str) -> Optional[Job]:
        """The version's latest job, if it ever had one."""
        key = f"{project}/{version}"
        found = [j for j in self.store.load() if j.key == key]
        return found[-1] if found else None

    def status(self, project: str, version: str, events: int = 20) -> Dict[str, Any]:
        """version.json's state plus the latest job, its queue position and the last ``events`` events."""
        v = self.workspace.version(project, version)
        job = self.job_for(v.project.name, v.name)
        return {**v.to_dict(), "job": job.to_dict() if job else None,
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
        while not self._stopping.is_set():
            worked = False
            if self._trainer_lock.acquire(blocking=False):
                try:
                    worked = self._work_once()
                except Exception:  # the worker must never die; the job itself was already marked
                    log.exception("train_tools: job runner error")
                finally:
                    self._trainer_lock.release()
            if not worked:
                self._wake.wait(self.settings.poll_s)
                self._wake.clear()

    def _work_once(self) -> bool:
        """With the trainer lock held: adopt a job left running, else run the next queued one."""
        left_running = [j for j in self.store.load() if j.status == "running"]
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
        run = _Run(job, v, checkpoints=list(v.state().get("checkpoints") or []))
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

    def _settle_lost(self, run: _Run) -> None:
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

    def _replay(self, run: _Run) -> None:
        """Rebuild the run's progress from its events so far, without notifying listeners."""
        run.tail = EventTail(run.version.events_path, run.job.events_offset)
        changes: Dict[str, Any] = {}
        for event in run.tail.read():
            self._apply(run, event, changes)
        if changes:
            run.version.update(**changes)

    # ---- running one job -------------------------------------------------------------------------------
    def _execute(self, job: Job) -> None:
        try:
            v = self.workspace.version(job.project, job.version)
        except ProjectError as exc:
            self._finish_job(job, "failed", str(exc))
            return
        run = _Run(job, v)
        try:
            config = self._prepare_config(v, job)
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
        self._supervise(run, start=lambda: self._spawn(v, job, config))

    def _supervise(self, run: _Run, start: Optional[Callable[[], TrainerProcess]]) -> None:
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
            status, message, extra = self._outcome(run)
        except _Detached:
            restore = False
            if run.trainer is not None and run.trainer.popen is not None:
                # reap it whenever it ends, so that it never lingers as a zombie of this process
                threading.Thread(target=run.trainer.popen.wait, name="train-tools-reaper", daemon=True).start()
            return
        except Exception as exc:
            log.exception("train_tools: job %s failed in the runner", run.job.key)
            if run.trainer is not None and not run.trainer.poll():
                self._terminate(run)
            status = "failed"
            message = exc.args[0] if isinstance(exc, JobError) and exc.args else \
                tr("Train Tools' job runner failed: {error}", error=f"{type(exc).__name__}: {exc}")
            extra = {"traceback_tail": "" if isinstance(exc, JobError) else _traceback_tail()}
        finally:
            if restore:
                self._restore_gpu(run)
        self._conclude(run, status, message, exit_code=run.trainer.exit_code if run.trainer else None, **extra)
        self._maybe_after_train(run)

    def _prepare_config(self, v: Version, job: Job) -> Path:
        """Point the config's events at the version's log folder (and at the resume state, if any).

        A config that does not load is left as it is: the trainer then reports the problem in its own words."""
        path = v.config_path
        if not path.is_file():
            raise JobError(tr("\"{key}\" has no training config (config.toml) yet: set up the training first.",
                              key=v.key))
        try:
            cfg, _ = schema.load_config(path)
        except schema.ConfigError:
            if job.resume:
                raise JobError(tr("The config of \"{key}\" cannot be read, so the run cannot resume.", key=v.key))
            return path
        changed = False
        if cfg.events_file != str(v.events_path):
            cfg.events_file, changed = str(v.events_path), True
        if cfg.resume != job.resume:
            cfg.resume, changed = job.resume, True
        if changed:
            schema.save_config(cfg, path)
        return path

    def _spawn(self, v: Version, job: Job, config: Path) -> TrainerProcess:
        command = trainer_command(self.settings.python, config)
        python = command[0]
        env = trainer_env(python, self.settings.deps_dir, self.settings.gpu)
        with open(v.log_path, "ab") as log_file:
            what = f"resume from {job.resume}" if job.resume else "start"
            log_file.write(f"\n===== {now_iso()} Train Tools job {job.id} ({what}): {' '.join(command)}\n"
                           .encode("utf-8"))
            log_file.flush()
            try:
                popen = start_trainer(command, env, log_file)
            except OSError as exc:
                raise JobError(tr("Cannot start the trainer with {python}: {error}", python=python,
                                  error=exc.strerror or str(exc))) from exc
        started_at = create_time(popen.pid)
        job.pid, job.pid_create_time = popen.pid, started_at
        self.store.update(job.id, pid=popen.pid, pid_create_time=started_at)
        v.update(pid=popen.pid)
        return TrainerProcess(popen.pid, popen)

    def _follow(self, run: _Run) -> None:
        """Read events and watch the process until it has ended; handles stop requests and the kill timeout."""
        assert run.trainer is not None
        tail = run.tail or EventTail(run.version.events_path, run.job.events_offset)
        self._run = run
        try:
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
                    run.job.stop_requested = bool(stored and stored.stop_requested)
                if run.job.stop_requested:
                    self._enforce_stop(run)
                self._wake.wait(self.settings.poll_s)
                self._wake.clear()
        finally:
            self._run = None

    def _enforce_stop(self, run: _Run) -> None:
        assert run.trainer is not None
        now = time.monotonic()
        if run.stop_sent_at is None:
            run.stop_sent_at = now
            self._log_line(run, "stop requested: asking the trainer to save and exit")
            run.trainer.signal_stop()
        elif not run.killed and now - run.stop_sent_at > self.settings.stop_timeout_s:
            run.killed = True
            self._log_line(run, f"the trainer did not exit within {self.settings.stop_timeout_s:g} s: killing it")
            run.trainer.kill()

    def _terminate(self, run: _Run) -> None:
        """Stop a trainer whose runner broke: gracefully, then by force; waits so that nothing is left behind."""
        assert run.trainer is not None
        run.trainer.signal_stop()
        if not run.trainer.wait(self.settings.stop_timeout_s):
            run.trainer.kill()
            run.trainer.wait(10)
        if run.trainer.popen is not None:
            try:
                run.trainer.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass

    # ---- events -> version.json ------------------------------------------------------------------------
    def _consume(self, run: _Run, events: List[Dict[str, Any]]) -> None:
        if not events:
            return
        changes: Dict[str, Any] = {}
        for event in events:
            self._apply(run, event, changes)
        if changes:
            run.version.update(**changes)
        for event in events:
            self._notify(run.job, event)

    def _apply(self, run: _Run, event: Dict[str, Any], changes: Dict[str, Any]) -> None:
        """Fold one event into the version.json changes; a malformed event changes nothing."""
        kind = event.get("event")
        try:
            if kind == "start":
                for key in ("total_steps", "epochs", "steps_per_epoch", "images", "device", "dtype", "arch"):
                    if key in event:
                        changes[key] = event[key]
            elif kind == "step":
                for key in ("step", "epoch"):
                    if isinstance(event.get(key), int):
                        changes[key] = event[key]
                for key in ("loss", "lr", "it_per_s", "eta_s"):
                    if isinstance(event.get(key), (int, float)) or event.get(key) is None:
                        changes[key] = event.get(key)
            elif kind == "checkpoint" and isinstance(event.get("path"), str):
                entry = {k: event.get(k) for k in ("epoch", "step", "path", "eval_loss")}
                run.checkpoints = [c for c in run.checkpoints if c.get("path") != entry["path"]] + [entry]
                changes["checkpoints"] = list(run.checkpoints)
            elif kind == "sample" and isinstance(event.get("path"), str):
                changes["last_sample"] = event["path"]
            elif kind == "warning" and event.get("message"):
                run.warnings = (run.warnings + [str(event["message"])])[-20:]
                changes["warnings"] = list(run.warnings)
            elif kind in ("done", "error"):
                run.terminal = event
        except (TypeError, ValueError, AttributeError):
            log.debug("train_tools: ignored malformed event %r", event)

    # ---- endings ---------------------------------------------------------------------------------------
    def _outcome(self, run: _Run) -> Tuple[str, Optional[str], Dict[str, Any]]:
        assert run.trainer is not None
        job = run.job
        terminal = run.terminal or self._terminal_from_log(run)
        code = run.trainer.exit_code
        if job.stop_requested:
            return "cancelled", tr("Stopped on request; the checkpoints written so far are kept."), {}
        if terminal and terminal.get("event") == "done":
            if terminal.get("interrupted"):
                return "interrupted", tr("The trainer was stopped from outside Train Tools; it saved its state."), {}
            return "done", None, {}
        if terminal and terminal.get("event") == "error":
            return "failed", str(terminal.get("message") or tr("The trainer reported an error.")), \
                {"traceback_tail": str(terminal.get("traceback_tail") or "")}
        if code is None:
            return "failed", tr("The trainer process ended without reporting a result."), {}
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return "failed", tr("The trainer stopped unexpectedly with exit code {code} (killed by {signal}).",
                                code=code, signal=name), {}
        return "failed", tr("The trainer stopped unexpectedly with exit code {code}.", code=code), {}

    def _terminal_from_log(self, run: _Run) -> Optional[Dict[str, Any]]:
        """An error the trainer printed before it knew where its events file was (a config error)."""
        found = None
        for line in read_from(run.version.log_path, run.job.log_offset).split(b"\n"):
            event = parse_event_line(line)
            if event and event["event"] in ("done", "error"):
                found = event
        return found

    def _conclude(self, run: _Run, status: str, message: Optional[str], exit_code: Optional[int],
                  traceback_tail: str = "") -> None:
        v, job = run.version, run.job
        finished = now_iso()
        changes: Dict[str, Any] = {"status": VERSION_STATUS[status], "finished": finished, "exit_code": exit_code,
                                   "pid": None, "eta_s": 0 if status == "done" else None}
        if status in ("failed", "cancelled", "interrupted"):
            state = newest_state(self._output_dir(v))
            changes["resumable"] = state is not None
            changes["resume_state"] = str(state) if state else None
        else:
            changes["resumable"], changes["resume_state"] = False, None
        if status == "failed":
            changes["error"] = {"message": message or "", "traceback_tail": traceback_tail,
                                "log_tail": log_tail(v.log_path, job.log_offset)}
        else:
            changes["error"] = None
        changes["message"] = message
        if run.checkpoints:
            changes["checkpoints"] = list(run.checkpoints)
        if run.warnings:
            changes["warnings"] = list(run.warnings)
        if run.trainer is not None and run.trainer.popen is not None:
            self._log_line(run, f"trainer exited with code {exit_code}; job {status}")
        try:
            v.update(**changes)
        except Exception:  # the version vanished or cannot be written; jobs.json still records the outcome
            log.exception("train_tools: cannot record the end of %s in version.json", job.key)
        self._finish_job(job, status, message, exit_code)

    def _finish_job(self, job: Job, status: str, message: Optional[str], exit_code: Optional[int] = None) -> None:
        job.status, job.finished, job.message, job.exit_code = status, now_iso(), message, exit_code
        self.store.update(job.id, status=status, finished=job.finished, message=message, exit_code=exit_code)
        self._notify(job, {"event": "job", "status": status, "message": message})
        self._notify_changed()

    def _forget_preview_loras(self, v: Version) -> None:
        """Drop the copies of the last run's checkpoints the host staged for previews (their names are content
        hashes, so they would only clutter its Lora folder)."""
        try:
            self.host.forget_preview_loras(v.path)
        except Exception as exc:  # a host that cannot (or a recording host in tests) must not stop the run
            log.info("train_tools: forget_preview_loras: %s", exc)

    def _restore_gpu(self, run: _Run) -> None:
        try:
            self.host.restore_gpu()
        except Exception as exc:
            log.warning("train_tools: restore_gpu failed: %s", exc)
            try:
                run.version.update(restore_error=str(exc))
            except ProjectError:
                pass

    def _maybe_after_train(self, run: _Run) -> None:
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
                                                      "traceback_tail": _traceback_tail()})
            except ProjectError:
                pass

    # ---- helpers ---------------------------------------------------------------------------------------
    def _output_dir(self, v: Version) -> Path:
        try:
            cfg, _ = schema.load_config(v.config_path)
            if cfg.output_dir:
                return Path(cfg.output_dir)
        except schema.ConfigError:
            pass
        return v.checkpoints_dir

    def _log_line(self, run: _Run, text: str) -> None:
        try:
            with open(run.version.log_path, "ab") as fh:
                fh.write(f"===== {now_iso()} Train Tools: {text}\n".encode("utf-8"))
        except OSError:
            pass

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


def _traceback_tail(lines: int = 12) -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-lines:])


__all__ = ["JobRunner", "RunnerSettings", "Job", "JobError", "JobStore", "FileLock", "EventTail",
           "parse_event_line", "last_events", "log_tail", "newest_state", "find_trainer", "JOB_STATUSES",
           "ACTIVE_STATUSES", "HISTORY_KEPT", "LOG_TAIL_LINES", "TRAINER_MODULE"]
