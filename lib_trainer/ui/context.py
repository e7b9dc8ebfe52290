"""What the tab works on: the workspace, the host, the job runner and the settings.

The WebUI entry (``scripts/train_tools.py``) and the standalone app (``lib_trainer.app``) each build one
:class:`UIContext` and hand it to :func:`lib_trainer.ui.tab.build_tab`. Nothing in the tab keeps state of its own
that matters after a page reload: what a version is doing is read from its ``version.json`` and events, and the
last selected project and version are remembered in the workspace (``ui.json``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, Union

from lib_trainer.common.files import atomic_write_json, read_json
from lib_trainer.projects import ProjectError, Version, Workspace

if TYPE_CHECKING:
    from lib_trainer.hosts.base import Host
    from lib_trainer.preview.tasks import PreviewTasks

UI_STATE_FILE = "ui.json"


@dataclass
class UISettings:
    """The settings the tab reads (the WebUI's "Train Tools" settings section, or the app's command line)."""

    default_preset: str = "character"
    default_vram_gb: int = 8
    #: Draw the preview grid when a training run finishes (stored per version when it is trained).
    auto_preview: bool = True
    #: Server folders that "Import a folder" may read (their sub-folders too); None: any folder.
    import_roots: Optional[List[str]] = None
    #: How often the open tab asks for progress, in seconds.
    poll_seconds: float = 2.0


class UIContext:
    """The workspace, host, job runner and settings one tab works with.

    ``settings`` may be a :class:`UISettings` or a function returning one (read at each use, so a setting
    changed in the WebUI applies without a restart).
    """

    def __init__(self, workspace: Union[Workspace, str], host: "Host", runner: Any,
                 settings: Union[UISettings, Callable[[], UISettings], None] = None,
                 previews: Optional["PreviewTasks"] = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.host = host
        self.runner = runner
        self._settings = settings or UISettings()
        self._lock = threading.Lock()
        self._previews = previews  # the process's previews, shared with the job runner's after-training hook
        # version key → the checkpoint the person picked in the Checkpoints step; until they pick one, the picker
        # follows the suggested checkpoint (which changes while training writes new ones)
        self.picked_checkpoints: dict = {}
        self.picked_grids: dict = {}  # version key → the grid (prompt) the person chose, likewise
        # version key → (checkpoints, when) of the question asked before Train moves a last run's checkpoints to
        # the trash; the same Train pressed again soon after goes ahead
        self.restart_asked: dict = {}

    @property
    def settings(self) -> UISettings:
        return self._settings() if callable(self._settings) else self._settings

    @property
    def previews(self) -> "PreviewTasks":
        """The previews of this process: the tab's ("Preview", "Preview this checkpoint") and, when the context was
        made with the runner's, the one drawn after training."""
        with self._lock:
            if self._previews is None:
                from lib_trainer.preview.tasks import PreviewTasks

                self._previews = PreviewTasks(self.host)
            return self._previews

    # ---- versions ----------------------------------------------------------------------------------------
    def forget_previews(self, version_dirs: List[Any]) -> None:
        """Have the host drop the LoRA copies it staged for these versions' previews (after their checkpoints were
        moved to the trash or the versions renamed: the copies' names would only clutter its Lora list)."""
        for path in version_dirs:
            try:
                self.host.forget_preview_loras(path)
            except Exception:  # never in the way of what the person asked for
                pass

    def version(self, project: Optional[str], version: Optional[str]) -> Optional[Version]:
        """The version, or None when nothing is selected or it no longer exists."""
        if not project or not version:
            return None
        try:
            return self.workspace.version(project, version)
        except (ProjectError, ValueError):
            return None

    def project_names(self) -> List[str]:
        return [p.name for p in self.workspace.projects()]

    def version_names(self, project: Optional[str]) -> List[str]:
        if not project:
            return []
        try:
            return [v.name for v in self.workspace.project(project).versions()]
        except (ProjectError, ValueError):
            return []

    # ---- the remembered selection -----------------------------------------------------------------------
    def remember(self, project: Optional[str], version: Optional[str]) -> None:
        path = self.workspace.root / UI_STATE_FILE
        data = read_json(path, {}) or {}
        if data.get("project") == project and data.get("version") == version:
            return
        data.update(project=project, version=version)
        try:
            atomic_write_json(path, data)
        except OSError:
            pass  # a read-only workspace only loses the remembered selection

    def remembered(self) -> Tuple[Optional[str], Optional[str]]:
        data = read_json(self.workspace.root / UI_STATE_FILE, {}) or {}
        return data.get("project"), data.get("version")

    def initial_selection(self) -> Tuple[Optional[str], Optional[str]]:
        """What the tab shows when it opens: a version that is training (or queued), else the one last
        selected, else the newest version of the first project."""
        try:
            jobs = list(self.runner.jobs()) if self.runner is not None else []
        except Exception:
            jobs = []
        for status in ("running", "queued"):
            for job in jobs:
                if getattr(job, "status", None) == status and self.version(job.project, job.version):
                    return job.project, job.version
        project, version = self.remembered()
        if self.version(project, version):
            return project, version
        if project and project in self.project_names():
            names = self.version_names(project)
            return project, (names[-1] if names else None)
        projects = self.project_names()
        if not projects:
            return None, None
        names = self.version_names(projects[0])
        return projects[0], (names[-1] if names else None)


__all__ = ["UIContext", "UISettings", "UI_STATE_FILE"]
