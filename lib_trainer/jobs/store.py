"""The persistent job queue: ``<workspace>/jobs.json`` (atomic writes) and the :class:`Job` records it holds."""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from lib_trainer.common.files import atomic_write_json, read_json
from lib_trainer.jobs.lock import workspace_lock
from lib_trainer.projects import ProjectError

log = logging.getLogger("train_tools.jobs")

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
HISTORY_KEPT = 200


class JobError(ProjectError):
    """A job cannot be queued, resumed or run; the message says why."""


@dataclass
class Job:
    id: str
    project: str
    version: str
    created: str
    status: str = "queued"
    kind: str = "train"
    pid: Optional[int] = None
    position: Optional[int] = None      # 1 = next to run, while queued
    resume: Optional[str] = None        # state folder this run continues from
    config: Optional[str] = None        # the config the trainer was started with
    pid_create_time: Optional[float] = None
    owner_pid: Optional[int] = None     # the process whose runner started the trainer
    started: Optional[str] = None
    finished: Optional[str] = None
    exit_code: Optional[int] = None
    stop_requested: bool = False
    log_offset: int = 0                 # where this run's part of trainer.log begins
    events_offset: int = 0              # where this run's events begin in events.jsonl (a resume appends)
    message: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.project}/{self.version}"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Job":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class JobStore:
    """``jobs.json``: every queued and running job plus recent history, in submission order."""

    def __init__(self, root: Path):
        self.path = Path(root) / "jobs.json"
        self._file_lock = workspace_lock(Path(root) / ".jobs.lock")
        self._lock = threading.RLock()

    def load(self) -> List[Job]:
        try:
            data = read_json(self.path, {}) or {}
        except ValueError:
            log.warning("train_tools: %s is damaged; starting an empty queue", self.path)
            data = {}
        return [Job.from_dict(j) for j in data.get("jobs", []) if isinstance(j, dict) and j.get("id")]

    def mutate(self, change: Callable[[List[Job]], Any]) -> Any:
        """Apply ``change`` to the job list under an in-process and an OS lock; positions are renumbered. The file
        is written only when something changed (the worker asks for a queued job at every poll)."""
        with self._lock, self._file_lock:
            jobs = self.load()
            before = [j.to_dict() for j in jobs]
            result = change(jobs)
            position = 0
            for job in jobs:
                if job.status == "queued":
                    position += 1
                    job.position = position
                else:
                    job.position = None
            done = [j for j in jobs if j.status not in ACTIVE_STATUSES]
            drop = {j.id for j in done[:max(0, len(done) - HISTORY_KEPT)]}
            jobs[:] = [j for j in jobs if j.id not in drop]
            after = [j.to_dict() for j in jobs]
            if after != before or not self.path.exists():
                atomic_write_json(self.path, {"jobs": after})
            return result

    def update(self, job_id: str, **changes: Any) -> Optional[Job]:
        def change(jobs: List[Job]) -> Optional[Job]:
            for job in jobs:
                if job.id == job_id:
                    for k, v in changes.items():
                        setattr(job, k, v)
                    return job
            return None
        return self.mutate(change)

    def get(self, job_id: str) -> Optional[Job]:
        return next((j for j in self.load() if j.id == job_id), None)
