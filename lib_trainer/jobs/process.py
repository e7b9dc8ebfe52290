"""The trainer's process: starting it with its private environment, stopping or killing it (Windows included),
and finding it again after a restart (pid, start time and command line).

Standard library + psutil only: runs inside the WebUI process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, List, Optional

import psutil

from lib_trainer import deps
from lib_trainer.common.i18n import current_language

if TYPE_CHECKING:
    from lib_trainer.jobs.store import Job

TRAINER_MODULE = "lib_trainer.trainer"


def trainer_command(python: Optional[str], config: Path) -> List[str]:
    """The command line that trains with ``config``; ``python`` None means this interpreter."""
    return [python or sys.executable, "-m", TRAINER_MODULE, str(config)]


def trainer_env(python: str, deps_dir: Optional[Path], gpu: Optional[str]) -> Dict[str, str]:
    """The trainer's environment: its private dependencies on the path, the language of its messages, and the
    GPU it may use."""
    env = deps.trainer_env(python, deps_dir)
    env["TRAIN_TOOLS_LANG"] = current_language() or ""  # the trainer's messages in the tab's language
    if gpu not in (None, ""):
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def start_trainer(command: List[str], env: Dict[str, str], log_file: IO[bytes]) -> subprocess.Popen:
    """Start the trainer in its own session / process group, its output going to ``log_file``; OSError if it
    cannot start."""
    kwargs: Dict[str, Any] = {}
    if os.name == "nt":  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True  # signals from the WebUI's terminal do not reach the trainer
    return subprocess.Popen(command, cwd=str(deps.EXTENSION_ROOT), env=env, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT, close_fds=True, **kwargs)


def create_time(pid: int) -> Optional[float]:
    """When the process started (psutil's clock), to tell it from a later process with the same pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class TrainerProcess:
    """A trainer process: our own child (Popen) or one found again after a restart (psutil)."""

    def __init__(self, pid: int, popen: Optional[subprocess.Popen] = None):
        self.pid = pid
        self.popen = popen
        self.exit_code: Optional[int] = None
        self.ended = False

    def poll(self) -> bool:
        """True once the process has ended (and has been reaped when it is our child)."""
        if self.ended:
            return True
        if self.popen is not None:
            code = self.popen.poll()
            if code is not None:
                self.exit_code, self.ended = code, True
            return self.ended
        if hasattr(os, "WNOHANG"):
            try:  # a trainer started by an earlier runner of this same process is still our child
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.exit_code, self.ended = _exit_code(status), True
                    return True
            except ChildProcessError:
                pass
        try:
            proc = psutil.Process(self.pid)
            self.ended = proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            self.ended = True
        return self.ended

    def signal_stop(self) -> None:
        """Ask the trainer to save and exit (it finishes its step first)."""
        if os.name == "nt":  # pragma: no cover - the trainer was started with CREATE_NEW_PROCESS_GROUP
            _send(self.pid, signal.CTRL_BREAK_EVENT)
        else:
            _send_group(self.pid, signal.SIGINT)

    def kill(self) -> None:
        if os.name == "nt":  # pragma: no cover
            try:
                proc = psutil.Process(self.pid)
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()
            except psutil.Error:
                pass
        else:
            _send_group(self.pid, signal.SIGKILL)

    def wait(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def _exit_code(status: int) -> int:
    if hasattr(os, "waitstatus_to_exitcode"):
        return os.waitstatus_to_exitcode(status)
    return -(status & 0x7F) if status & 0x7F else status >> 8  # pragma: no cover - Python < 3.9


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _send_group(pid: int, sig: int) -> None:
    """Signal the trainer's process group (it leads its own session), or the trainer alone if it does not."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError, OSError):
        pass
    _send(pid, sig)


def find_trainer(job: Job) -> Optional[psutil.Process]:
    """The job's trainer if it is still running: same pid, same start time, our module with the job's config."""
    if not job.pid:
        return None
    try:
        proc = psutil.Process(job.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            if hasattr(os, "WNOHANG"):
                try:
                    os.waitpid(job.pid, os.WNOHANG)  # never leave a zombie of ours behind
                except ChildProcessError:
                    pass
            return None
        if job.pid_create_time is not None and abs(proc.create_time() - job.pid_create_time) > 1.0:
            return None  # the pid was reused by another process
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    if TRAINER_MODULE not in cmdline or (job.config and job.config not in cmdline):
        return None
    return proc
