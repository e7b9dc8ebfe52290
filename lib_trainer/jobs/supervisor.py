"""Following one trainer process: its config made ready, the process started, a stop enforced, its events folded
into ``version.json``, and what became of it (the outcome and the version's final state).

The job runner (``jobs.runner``) decides which job runs and when; this module knows how one run goes. Standard
library only: it runs inside the WebUI process.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Tuple

from lib_trainer.common.disk import DiskFull, disk_full
from lib_trainer.common.i18n import tr
from lib_trainer.jobs.events import EventTail, log_tail, parse_event_line, read_from
from lib_trainer.jobs.process import TrainerProcess, create_time, start_trainer, trainer_command, trainer_env
from lib_trainer.jobs.store import Job, JobError, JobStore
from lib_trainer.projects import now_iso, Version
from lib_trainer.trainer import schema

log = logging.getLogger("train_tools.jobs")

# job status -> version status
VERSION_STATUS = {"queued": "queued", "running": "running", "done": "finished", "failed": "failed",
                  "cancelled": "cancelled", "interrupted": "interrupted"}
STATE_SUFFIX = "-state"


class TrainerSettings(Protocol):
    python: Optional[str]
    gpu: Optional[str]
    deps_dir: Optional[Path]
    stop_timeout_s: float


@dataclass
class TrainerRun:
    """What the runner knows about the trainer of the job it is following."""
    job: Job
    version: Version
    trainer: Optional[TrainerProcess] = None
    stop_sent_at: Optional[float] = None
    killed: bool = False
    terminal: Optional[Dict[str, Any]] = None     # the last done/error event
    tail: Optional[EventTail] = None
    checkpoints: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    step_s: Optional[float] = None  # seconds per step, from the trainer's step events


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


def output_dir(v: Version) -> Path:
    """Where the version's trainer writes its checkpoints and states (its config's output_dir)."""
    try:
        cfg, _ = schema.load_config(v.config_path)
        if cfg.output_dir:
            return Path(cfg.output_dir)
    except schema.ConfigError:
        pass
    return v.checkpoints_dir


def log_line(v: Version, text: str) -> None:
    """A line of Train Tools' own in the version's trainer.log."""
    try:
        with open(v.log_path, "ab") as fh:
            fh.write(f"===== {now_iso()} Train Tools: {text}\n".encode("utf-8"))
    except OSError:
        pass


# ---- starting -------------------------------------------------------------------------------------------------

def prepare_config(v: Version, job: Job) -> Path:
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


def spawn_trainer(v: Version, job: Job, config: Path, settings: TrainerSettings, store: JobStore) -> TrainerProcess:
    """Start the trainer of ``job`` (its output appended to trainer.log) and record its pid."""
    command = trainer_command(settings.python, config)
    python = command[0]
    env = trainer_env(python, settings.deps_dir, settings.gpu)
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
    store.update(job.id, pid=popen.pid, pid_create_time=started_at)
    v.update(pid=popen.pid)
    return TrainerProcess(popen.pid, popen)


# ---- stopping -------------------------------------------------------------------------------------------------

def stop_grace_s(run: TrainerRun, timeout_s: float) -> float:
    """How long a stopped trainer may take to exit: ``timeout_s`` for saving, plus two of its steps (it ends the
    step it is in first; on a CPU or a big model one step can take minutes)."""
    return timeout_s + 2 * (run.step_s or 0.0)


def enforce_stop(run: TrainerRun, timeout_s: float) -> None:
    """Ask the trainer to save and exit; kill it when it has not ended in :func:`stop_grace_s` after the request."""
    assert run.trainer is not None
    now = time.monotonic()
    grace = stop_grace_s(run, timeout_s)
    if run.stop_sent_at is None:
        run.stop_sent_at = now
        log_line(run.version, f"stop requested: asking the trainer to save and exit (within {grace:.0f} s)")
        run.trainer.signal_stop()
    elif not run.killed and now - run.stop_sent_at > grace:
        run.killed = True
        log_line(run.version, f"the trainer did not exit within {grace:.0f} s: killing it")
        run.trainer.kill()


def terminate(run: TrainerRun, timeout_s: float) -> None:
    """Stop a trainer whose runner broke: gracefully, then by force; waits so that nothing is left behind."""
    assert run.trainer is not None
    run.trainer.signal_stop()
    if not run.trainer.wait(timeout_s):
        run.trainer.kill()
        run.trainer.wait(10)
    if run.trainer.popen is not None:
        try:
            run.trainer.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


# ---- events -> version.json -----------------------------------------------------------------------------------

def apply_event(run: TrainerRun, event: Dict[str, Any], changes: Dict[str, Any]) -> None:
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
            if isinstance(event.get("it_per_s"), (int, float)) and event["it_per_s"] > 0:
                run.step_s = 1.0 / event["it_per_s"]
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


# ---- endings --------------------------------------------------------------------------------------------------

def outcome(run: TrainerRun) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """(job status, message, extra error fields) of a trainer that has ended."""
    assert run.trainer is not None
    job = run.job
    terminal = run.terminal or terminal_from_log(run)
    code = run.trainer.exit_code
    if job.stop_requested:
        if run.killed:
            state = newest_state(output_dir(run.version))
            return "cancelled", stopped_by_force(run, state is not None), {}
        return "cancelled", tr("Stopped on request; the checkpoints written so far are kept."), {}
    if terminal and terminal.get("event") == "done":
        if terminal.get("interrupted"):
            return "interrupted", tr("The trainer was stopped from outside Train Tools; it saved its state."), {}
        return "done", None, {}
    full = disk_full(output_dir(run.version))
    if full is not None:  # whatever the trainer made of it ("unexpected pos"), or could not even write
        detail = str(terminal.get("message") or "") if terminal else ""
        return "failed", disk_full_advice(full, newest_state(output_dir(run.version)) is not None), \
            {"traceback_tail": "\n".join(p for p in (detail, str((terminal or {}).get("traceback_tail") or "")) if p)}
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


def stopped_by_force(run: TrainerRun, resumable: bool) -> str:
    """The message of a stop the trainer did not finish in time (it was killed)."""
    seconds = round(time.monotonic() - run.stop_sent_at) if run.stop_sent_at is not None else 0
    if resumable:
        return tr("Stopped on request: the trainer had not ended {seconds} s after the request, so it was ended "
                  "by force. The checkpoints written so far are kept, and Resume continues from the last saved "
                  "state.", seconds=seconds)
    return tr("Stopped on request: the trainer had not ended {seconds} s after the request, so it was ended by "
              "force before it saved its state, and there is none to resume from. The checkpoints written so far "
              "are kept; Train starts the run again.", seconds=seconds)


def disk_full_advice(full: DiskFull, resumable: bool) -> str:
    """What to do after the disk filled up during training."""
    if resumable:
        return tr("{disk} Free some space, then press Resume: the checkpoints written so far and the last saved "
                  "state are kept.", disk=str(full))
    return tr("{disk} Free some space, then press Train again: the checkpoints written so far are kept (no "
              "training state was saved to resume from).", disk=str(full))


def terminal_from_log(run: TrainerRun) -> Optional[Dict[str, Any]]:
    """An error the trainer printed before it knew where its events file was (a config error)."""
    found = None
    for line in read_from(run.version.log_path, run.job.log_offset).split(b"\n"):
        event = parse_event_line(line)
        if event and event["event"] in ("done", "error"):
            found = event
    return found


def final_changes(run: TrainerRun, status: str, message: Optional[str], exit_code: Optional[int],
                  traceback_tail: str = "") -> Dict[str, Any]:
    """The version.json changes that record how the run ended (resumable from which state, the error)."""
    v, job = run.version, run.job
    changes: Dict[str, Any] = {"status": VERSION_STATUS[status], "finished": now_iso(), "exit_code": exit_code,
                               "pid": None, "eta_s": 0 if status == "done" else None}
    if status in ("failed", "cancelled", "interrupted"):
        state = newest_state(output_dir(v))
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
    return changes
