"""Running the queue in a background worker and following a job until it ends (``train``, ``status --follow``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple

from lib_trainer.cli.common import EXTENSION_ROOT, POLL_S, ckpt_dirs, lora_dir, version_settings
from lib_trainer.cli.hints import command as hint_command
from lib_trainer.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from lib_trainer.cli.output import Output, TrainProgress, checkpoint_dicts, say_checkpoints
from lib_trainer.common.i18n import tr


QUEUE_NOTICE_S = 2.0  # say that a job waits in the queue once it has waited this long


def spawn_worker(args: argparse.Namespace, ws):
    """A background ``worker`` that runs the workspace's queue until it is empty (own session, so Ctrl-C in this
    terminal does not reach it; this command stops the job through the queue instead)."""
    import subprocess

    command = [sys.executable, "-m", "lib_trainer.cli", "worker", "--workspace", str(ws.root)]
    for folder in ckpt_dirs(args):
        command += ["--ckpt-dir", str(folder)]
    command += ["--lora-dir", str(lora_dir(args))]
    if getattr(args, "python", None):
        command += ["--python", args.python]
    if getattr(args, "gpu", None):
        command += ["--gpu", args.gpu]
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(EXTENSION_ROOT)] + paths)
    env["PYTHONUNBUFFERED"] = "1"
    log_dir = ws.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    kwargs: Dict[str, Any] = {}
    if os.name == "nt":  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    with open(log_dir / "worker.log", "ab") as log:
        return subprocess.Popen(command, cwd=str(EXTENSION_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, close_fds=True, **kwargs)


def follow_job(out: Output, runner, version, job_id: str, since: float, worker=None,
               command: str = "train", args: Optional[argparse.Namespace] = None) -> Tuple[int, Dict[str, Any]]:
    """Show a job's progress until it ends; Ctrl-C asks the trainer to save and stop (twice: stop it at once)."""
    from lib_trainer.jobs.events import EventTail
    from lib_trainer.jobs.store import ACTIVE_STATUSES

    progress = TrainProgress(out)
    tail = None
    stops = 0
    last_status: Optional[Tuple[str, Optional[int]]] = None
    queued_since, told = time.monotonic(), False
    while True:
        try:
            job = runner.store.get(job_id)
            state = version.state()
            if tail is None and state.get("job_id") == job_id and state.get("status") != "queued":
                tail = EventTail(version.events_path)  # the runner has started this run's events file by now
            ended = job is None or job.status not in ACTIVE_STATUSES
            if tail is not None:
                for event in tail.read(final=ended):
                    if float(event.get("time") or 0) >= since:
                        progress.event(event)
            status = (job.status, job.position) if job is not None else ("removed", None)
            if status != last_status:
                last_status, queued_since, told = status, time.monotonic(), False
                out.emit({"event": "job", "id": job_id, "status": status[0], "position": status[1]})
            if status[0] == "queued" and not told and time.monotonic() - queued_since > QUEUE_NOTICE_S:
                told = True  # a job that starts at once needs no word about the queue
                out.say(tr("Waiting in the queue (position {position}).", position=status[1] or 1))
            if ended:
                break
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            stops += 1
            out.end_progress()
            if stops == 1:
                with _no_interrupts():  # a second Ctrl-C must not cut the queue update in half
                    runner.stop(version.project.name, version.name)
                out.warn(tr("Stopping: the trainer saves a checkpoint and exits (Ctrl-C again to stop it at once)."))
            elif stops == 2:
                with _no_interrupts():
                    _kill_trainer(runner, job_id)
                out.warn(tr("Stopping at once."))
            else:
                return EXIT_STOPPED, {"ok": False, "command": command, "version": version.key, "status": "stopping"}
    out.end_progress()
    if worker is not None and not wants_auto_preview(version):
        try:
            worker.wait(timeout=10)  # it exits once the queue is empty; never leave a zombie behind
        except Exception:
            pass
    return _conclude(out, runner, version, job_id, stopped_by_user=stops > 0, command=command, args=args)


def wants_auto_preview(version) -> bool:
    return bool(version_settings(version).get("auto_preview"))


class _no_interrupts:
    """Ignore SIGINT for the duration of a with-block (main thread only; elsewhere it does nothing)."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _kill_trainer(runner, job_id: str) -> None:
    from lib_trainer.jobs.process import find_trainer

    job = runner.store.get(job_id)
    proc = find_trainer(job) if job is not None else None
    if proc is None:
        return
    try:
        if os.name != "nt" and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except Exception:
        pass


def _conclude(out: Output, runner, version, job_id: str, stopped_by_user: bool, command: str,
              args: Optional[argparse.Namespace]) -> Tuple[int, Dict[str, Any]]:
    state = version.state()
    job = runner.store.get(job_id)
    status = state.get("status", "draft")
    document: Dict[str, Any] = {"ok": status == "finished", "command": command, "version": version.key,
                                "status": status, "job": job.to_dict() if job else None,
                                "checkpoints": checkpoint_dicts(version), "error": state.get("error")}
    if status == "finished":
        out.say(tr("Training of \"{key}\" finished.", key=version.key))
        say_checkpoints(out, version)
        out.say(tr("Next: draw every checkpoint at several weights side by side with:\n  {command}",
                   command=hint_command(args, "preview", version.key)))
        code = EXIT_OK
    elif status == "failed":
        error = state.get("error") or {}
        message = error.get("message") or tr("The trainer failed.")
        document["message"] = message
        out.warn(tr("Training failed: {message}", message=message))
        if error.get("log_tail") and not out.json:
            out.warn(error["log_tail"])
        out.warn(tr("Full log: {path}", path=str(version.log_path)))
        code = EXIT_FAILED
    else:  # cancelled, interrupted, or removed from the queue (draft)
        message = state.get("message") or tr("Training of \"{key}\" stopped.", key=version.key)
        document["message"] = message
        out.warn(message)
        if state.get("resumable"):
            out.warn(tr("Continue it with:\n  {command}", command=hint_command(args, "train", version.key,
                                                                                "--resume")))
        if version.checkpoints():
            say_checkpoints(out, version)
        code = EXIT_STOPPED if stopped_by_user else EXIT_FAILED
    return code, document
