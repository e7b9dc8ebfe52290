"""What a full disk keeps the job runner from writing, held in memory until it can be written.

When ``version.json`` or ``jobs.json`` cannot be written (the disk is full), the runner still knows how a job went:
it keeps the changes here. :meth:`JobRunner.status` and :meth:`JobRunner.jobs` show them, the worker never takes a
job settled here for one left running, and :meth:`Unsaved.retry` writes them again at most every
:data:`RETRY_S` — never in a loop. ``revision`` changes whenever they do, so the tab's poll (which watches the files'
stamps) refreshes although the files stay as they were.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict

RETRY_S = 30.0  # how often the kept changes are written again

Write = Callable[[str, Dict[str, Any]], bool]  # (key, changes) -> written (False: not now)


class Unsaved:
    def __init__(self) -> None:
        self.versions: Dict[str, Dict[str, Any]] = {}  # version key → version.json changes
        self.jobs: Dict[str, Dict[str, Any]] = {}  # job id → jobs.json changes
        self.stops: set = set()  # ids of jobs asked to stop while jobs.json could not be written
        self.revision = 0
        self._retry_at = 0.0

    def keep_version(self, key: str, changes: Dict[str, Any]) -> bool:
        """Keep version.json changes; True when the version had none kept before (the first failure)."""
        first = key not in self.versions
        self.versions[key] = {**self.versions.get(key, {}), **changes}
        self.revision += 1
        return first

    def version_written(self, key: str) -> None:
        if self.versions.pop(key, None) is not None:
            self.revision += 1

    def keep_job(self, job_id: str, changes: Dict[str, Any]) -> None:
        self.jobs[job_id] = {**self.jobs.get(job_id, {}), **changes}
        self.revision += 1

    def job_status(self, job: Any) -> str:
        """The job's status as it ended, when that could not be written."""
        return str(self.jobs.get(job.id, {}).get("status", job.status))

    def apply_to_job(self, job: Any) -> Any:
        for key, value in self.jobs.get(job.id, {}).items():
            setattr(job, key, value)
        return job

    def retry(self, write_version: Write, write_job: Write) -> None:
        """Write what is kept, at most every RETRY_S; what is written (or needs no writing) is forgotten."""
        if not (self.versions or self.jobs) or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RETRY_S
        self.revision += 1
        for key, changes in list(self.versions.items()):
            if write_version(key, changes):
                self.versions.pop(key, None)
        for job_id, changes in list(self.jobs.items()):
            if write_job(job_id, changes):
                self.jobs.pop(job_id, None)


__all__ = ["Unsaved", "RETRY_S"]
