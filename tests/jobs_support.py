"""Shared pieces of the job-runner and API tests: a recording host, versions with tiny configs, a fake trainer."""
from __future__ import annotations

import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from lib_trainer.hosts.base import Host, HostError
from lib_trainer.projects import Version, Workspace
from lib_trainer.trainer.schema import save_config
from tests.trainer_fixtures import make_config, make_dataset

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"


class RecordingHost(Host):
    """A host that only counts GPU releases and restores (all the runner uses); the rest says it cannot."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    @property
    def released(self) -> int:
        return self.calls.count("release")

    @property
    def restored(self) -> int:
        return self.calls.count("restore")

    def release_gpu(self) -> None:
        with self._lock:
            self.calls.append("release")

    def restore_gpu(self) -> None:
        with self._lock:
            self.calls.append("restore")

    def _cannot(self, *args: Any, **kwargs: Any) -> Any:
        raise HostError("the recording host only records GPU calls")

    checkpoints = txt2img = interrupt = samplers = taggers = tag = upscalers = upscale = _cannot  # type: ignore
    lora_dir = outputs_dir = refresh_loras = send_to_txt2img = forget_preview_loras = _cannot  # type: ignore


def make_version(ws: Workspace, model: Path, project: str = "dog", version: str = "v1",
                 settings: Optional[dict] = None, **overrides: Any) -> Version:
    """A version with a 4-picture dataset and a tiny config writing into its checkpoints/ folder."""
    p = ws.project(project) if (ws.projects_dir / project / "project.json").exists() else \
        ws.create_project(project, first_version=None)
    v = p.create_version(version)
    make_dataset(v.dataset_dir)
    cfg = make_config(v.path, model, train_data_dir=str(v.train_dir), output_dir=str(v.checkpoints_dir),
                      output_name=v.output_name, **overrides)
    save_config(cfg, v.config_path)
    if settings:
        v.update(settings=settings)
    return v


def fake_python(folder: Path) -> str:
    """An executable that runs the fake trainer with the arguments the runner gives Python."""
    path = Path(folder) / "fake-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TRAINER}" "$@"\n', encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def single_thread_env(monkeypatch) -> None:
    """The trainer subprocess inherits this: one torch thread on the shared 2-core machine."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")


__all__ = ["RecordingHost", "make_version", "fake_python", "wait_for", "pid_alive", "single_thread_env",
           "FAKE_TRAINER"]
