"""Workspace → Project → Version on disk.

```
<workspace>/projects/<project>/project.json
<workspace>/projects/<project>/versions/<version>/version.json, config.toml, dataset/, checkpoints/, …
<workspace>/.trash/<entry>/trash.json + the deleted folder or files
```
The workspace is the WebUI's ``outputs/train_tools`` (a setting can move it). Every JSON write is atomic, and
``version.json`` is only ever changed through :meth:`Version.update`, which serialises writers in this process.
Standard library only: this runs inside the WebUI process.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from lib_trainer.common.files import atomic_write_json, atomic_write_text, read_json, safe_file_stem, short_hash
from lib_trainer.common.i18n import tr
from lib_trainer.common.names import validate_name
from lib_trainer.common.safetensors_header import read_metadata

STATUSES = ("draft", "queued", "running", "finished", "failed", "cancelled", "interrupted")
BUSY_STATUSES = ("queued", "running")
DEFAULT_VERSION = "v1"
CHECKPOINT_SUFFIXES = (".safetensors",)

_state_locks: Dict[str, threading.RLock] = {}
_state_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.RLock:
    with _state_locks_guard:
        return _state_locks.setdefault(str(path), threading.RLock())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ProjectError(Exception):
    """A user-facing problem with projects or versions; the message says what to do."""


class NotFound(ProjectError):
    pass


class AlreadyExists(ProjectError):
    pass


class Busy(ProjectError):
    """The version (or a version of the project) is queued or training."""


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    name: str
    epoch: Optional[int]
    step: Optional[int]
    size: int
    mtime: float
    final: bool

    def to_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "epoch": self.epoch, "step": self.step,
                "size": self.size, "mtime": self.mtime, "final": self.final}


@dataclass(frozen=True)
class TrashEntry:
    id: str
    path: Path
    kind: str           # "project", "version" or "files"
    label: str
    original: Path
    deleted: str

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "label": self.label, "original": str(self.original),
                "deleted": self.deleted}


class Version:
    """One training run's folder: dataset, config, checkpoints, samples, previews and logs."""

    def __init__(self, project: "Project", name: str):
        self.project = project
        self.name = name
        self.path = project.path / "versions" / name

    def __repr__(self) -> str:
        return f"Version({self.project.name!r}, {self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---- folders ---------------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """``project/version``: how jobs and the API name a version."""
        return f"{self.project.name}/{self.name}"

    @property
    def state_path(self) -> Path:
        return self.path / "version.json"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def dataset_dir(self) -> Path:
        return self.path / "dataset"

    @property
    def source_dir(self) -> Path:
        return self.dataset_dir / "source"

    @property
    def train_dir(self) -> Path:
        return self.dataset_dir / "train"

    @property
    def reg_dir(self) -> Path:
        return self.dataset_dir / "reg"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def previews_dir(self) -> Path:
        return self.path / "previews"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def events_path(self) -> Path:
        return self.logs_dir / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "trainer.log"

    # ---- state -----------------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        data = read_json(self.state_path, None)
        if data is None:
            raise NotFound(tr("Version \"{version}\" of project \"{project}\" does not exist.",
                              version=self.name, project=self.project.name))
        return data

    def update(self, **changes: Any) -> Dict[str, Any]:
        """Change fields of version.json atomically; returns the new state."""
        with _lock_for(self.state_path):
            data = self.state()
            if "status" in changes and changes["status"] not in STATUSES:
                raise ValueError(f"unknown status {changes['status']!r}")
            data.update(changes)
            data["updated"] = now_iso()
            atomic_write_json(self.state_path, data)
            return data

    @property
    def status(self) -> str:
        return str(self.state().get("status", "draft"))

    @property
    def output_name(self) -> str:
        return str(self.state()["output_name"])

    @property
    def busy(self) -> bool:
        return self.status in BUSY_STATUSES

    # ---- outputs ---------------------------------------------------------------------------------------
    def checkpoints(self) -> List[CheckpointFile]:
        """Every LoRA file in checkpoints/, oldest step first, the final one last."""
        if not self.checkpoints_dir.is_dir():
            return []
        output_name = self.state().get("output_name", "")
        found = []
        for path in self.checkpoints_dir.iterdir():
            if path.suffix not in CHECKPOINT_SUFFIXES or path.name.startswith(".") or not path.is_file():
                continue
            meta = read_metadata(path)
            epoch = _int_or_none(meta.get("ss_epoch"))
            step = _int_or_none(meta.get("ss_steps"))
            if epoch is None:
                match = re.search(r"-(\d{6})$", path.stem)
                epoch = int(match.group(1)) if match else None
            st = path.stat()
            found.append(CheckpointFile(path=path, name=path.stem, epoch=epoch, step=step, size=st.st_size,
                                        mtime=st.st_mtime, final=path.stem == output_name))
        found.sort(key=lambda c: (c.final, c.step if c.step is not None else -1,
                                  c.epoch if c.epoch is not None else -1, c.mtime))
        return found

    def previous_outputs(self) -> List[Path]:
        """What a finished or stopped run left: checkpoints (and their state folders), sample pictures, and
        drawn previews — not the preview settings or the sample prompts, which belong to the version."""
        keep = {"preview.json", "prompts.txt"}
        found: List[Path] = []
        for folder in (self.checkpoints_dir, self.samples_dir, self.previews_dir):
            if folder.is_dir():
                found += sorted(p for p in folder.iterdir() if p.name not in keep)
        return found

    def archive_outputs(self) -> Optional["TrashEntry"]:
        """Move :meth:`previous_outputs` to the workspace trash (restorable), so that a fresh run of this version
        neither mixes its checkpoints with the last run's nor destroys them. None when there was nothing."""
        outputs = self.previous_outputs()
        if not outputs:
            return None
        return self.project.workspace.move_to_trash(outputs, kind="files",
                                                    label=tr("previous run of {version}", version=self.key))

    def read_events(self, last: Optional[int] = None) -> List[Dict[str, Any]]:
        """The events of the last run (garbage lines skipped); only the last ``last`` when given."""
        events = []
        try:
            with open(self.events_path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    line = line.strip()
                    if not line.startswith("{"):
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and "event" in event:
                        events.append(event)
        except FileNotFoundError:
            return []
        return events[-last:] if last else events

    def to_dict(self) -> Dict[str, Any]:
        state = self.state()
        return {"project": self.project.name, "version": self.name, "path": str(self.path), **state}


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Project:
    def __init__(self, workspace: "Workspace", name: str):
        self.workspace = workspace
        self.name = name
        self.path = workspace.projects_dir / name

    def __repr__(self) -> str:
        return f"Project({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Project) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def state_path(self) -> Path:
        return self.path / "project.json"

    def state(self) -> Dict[str, Any]:
        data = read_json(self.state_path, None)
        if data is None:
            raise NotFound(tr("Project \"{project}\" does not exist.", project=self.name))
        return data

    def update(self, **changes: Any) -> Dict[str, Any]:
        with _lock_for(self.state_path):
            data = self.state()
            data.update(changes)
            data["updated"] = now_iso()
            atomic_write_json(self.state_path, data)
            return data

    def versions(self) -> List[Version]:
        root = self.path / "versions"
        if not root.is_dir():
            return []
        found = [Version(self, p.name) for p in root.iterdir() if (p / "version.json").is_file()]
        return sorted(found, key=lambda v: (v.state().get("created", ""), v.name))

    def version(self, name: str) -> Version:
        version = Version(self, validate_name(name, tr("version name")))
        if not version.state_path.is_file():
            raise NotFound(tr("Version \"{version}\" of project \"{project}\" does not exist.",
                              version=name, project=self.name))
        return version

    def create_version(self, name: str, from_version: Optional[Union[str, Version]] = None) -> Version:
        """A new version; with ``from_version`` its dataset, config and settings are copied ("new version from
        this one"), never its checkpoints, samples, previews or logs."""
        name = validate_name(name, tr("version name"))
        version = Version(self, name)
        if version.path.exists():
            raise AlreadyExists(tr("Project \"{project}\" already has a version \"{version}\".",
                                   project=self.name, version=name))
        source = None
        if from_version is not None:
            source = from_version if isinstance(from_version, Version) else self.version(from_version)
        with _lock_for(self.workspace.root):
            output_name = self.workspace.unique_output_name(f"{self.name}_{name}")
            tmp = version.path.with_name(f".{name}.creating")
            shutil.rmtree(tmp, ignore_errors=True)
            for sub in ("dataset/source", "dataset/train", "dataset/reg", "checkpoints", "samples", "previews",
                        "logs"):
                (tmp / sub).mkdir(parents=True, exist_ok=True)
            state: Dict[str, Any] = {"name": name, "status": "draft", "created": now_iso(), "output_name": output_name,
                                     "settings": {}}
            if source is not None:
                src_state = source.state()
                state["settings"] = dict(src_state.get("settings", {}))
                state["cloned_from"] = source.name
                shutil.rmtree(tmp / "dataset")
                shutil.copytree(source.dataset_dir, tmp / "dataset")
                for sub in ("source", "train", "reg"):
                    (tmp / "dataset" / sub).mkdir(parents=True, exist_ok=True)
                if source.config_path.is_file():
                    text = source.config_path.read_text(encoding="utf-8")
                    text = retarget_config_text(text, source.path, version.path,
                                                {source.output_name: output_name})
                    atomic_write_text(tmp / "config.toml", text)
            atomic_write_json(tmp / "version.json", state)
            os.replace(tmp, version.path)
        self.update()
        return version

    def rename_version(self, name: str, new_name: str) -> Version:
        version = self.version(name)
        new_name = validate_name(new_name, tr("version name"))
        if version.busy:
            raise Busy(tr("Version \"{version}\" is training or queued; stop it before renaming.", version=name))
        target = Version(self, new_name)
        if target.path.exists():
            raise AlreadyExists(tr("Project \"{project}\" already has a version \"{version}\".",
                                   project=self.name, version=new_name))
        os.replace(version.path, target.path)
        target.update(name=new_name)
        _retarget_config_file(target.config_path, version.path, target.path)
        return target

    def delete_version(self, name: str) -> TrashEntry:
        version = self.version(name)
        if version.busy:
            raise Busy(tr("Version \"{version}\" is training or queued; stop it before deleting.", version=name))
        return self.workspace.move_to_trash([version.path], kind="version", label=version.key)


class Workspace:
    """The root folder that holds every project (``outputs/train_tools``)."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root).resolve()
        self.projects_dir = self.root / "projects"
        self.trash_dir = self.root / ".trash"
        self.projects_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ---- projects --------------------------------------------------------------------------------------
    def projects(self) -> List[Project]:
        found = [Project(self, p.name) for p in self.projects_dir.iterdir() if (p / "project.json").is_file()]
        return sorted(found, key=lambda p: p.name.casefold())

    def project(self, name: str) -> Project:
        project = Project(self, validate_name(name, tr("project name")))
        if not project.state_path.is_file():
            raise NotFound(tr("Project \"{project}\" does not exist.", project=name))
        return project

    def version(self, project: str, version: str) -> Version:
        return self.project(project).version(version)

    def versions(self) -> Iterator[Version]:
        for project in self.projects():
            yield from project.versions()

    def create_project(self, name: str, first_version: Optional[str] = DEFAULT_VERSION,
                       settings: Optional[Dict[str, Any]] = None) -> Project:
        name = validate_name(name, tr("project name"))
        project = Project(self, name)
        if project.path.exists() or any(p.name.casefold() == name.casefold() for p in self.projects()):
            raise AlreadyExists(tr("A project named \"{project}\" already exists.", project=name))
        tmp = self.projects_dir / f".{name}.creating"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "versions").mkdir(parents=True)
        atomic_write_json(tmp / "project.json", {"name": name, "created": now_iso(), "settings": settings or {}})
        os.replace(tmp, project.path)
        if first_version:
            project.create_version(first_version)
        return project

    def rename_project(self, name: str, new_name: str) -> Project:
        project = self.project(name)
        new_name = validate_name(new_name, tr("project name"))
        if any(v.busy for v in project.versions()):
            raise Busy(tr("A version of \"{project}\" is training or queued; stop it before renaming.",
                          project=name))
        target = Project(self, new_name)
        if target.path.exists() or any(p.name.casefold() == new_name.casefold() and p.name != name
                                       for p in self.projects()):
            raise AlreadyExists(tr("A project named \"{project}\" already exists.", project=new_name))
        os.replace(project.path, target.path)
        target.update(name=new_name)
        for version in target.versions():
            _retarget_config_file(version.config_path, project.path / "versions" / version.name, version.path)
        return target

    def delete_project(self, name: str) -> TrashEntry:
        project = self.project(name)
        if any(v.busy for v in project.versions()):
            raise Busy(tr("A version of \"{project}\" is training or queued; stop it before deleting.",
                          project=name))
        return self.move_to_trash([project.path], kind="project", label=project.name)

    # ---- output names ----------------------------------------------------------------------------------
    def output_names(self) -> set:
        """Every output name in use, also by versions in the trash (they may come back)."""
        names = set()
        for state_file in list(self.projects_dir.glob("*/versions/*/version.json")) + \
                list(self.trash_dir.glob("**/version.json")):
            data = read_json(state_file, {}) or {}
            if data.get("output_name"):
                names.add(str(data["output_name"]).casefold())
        return names

    def unique_output_name(self, wanted: str) -> str:
        """A LoRA file stem no other version uses (case-insensitively, for Windows and macOS)."""
        base = safe_file_stem(wanted, max_len=60)
        taken = self.output_names()
        name, n = base, 2
        while name.casefold() in taken:
            name, n = f"{base}-{n}", n + 1
        return name

    # ---- trash -----------------------------------------------------------------------------------------
    def move_to_trash(self, paths: Sequence[Path], kind: str, label: str) -> TrashEntry:
        """Move files or folders into one new trash entry (restorable with :meth:`restore`)."""
        paths = [Path(p) for p in paths]
        for p in paths:
            self.ensure_inside(p)
        entry_id = time.strftime("%Y%m%d-%H%M%S-") + short_hash(label, str(time.time_ns()), length=8)
        entry_dir = self.trash_dir / entry_id
        entry_dir.mkdir(parents=True)
        items = []
        for i, p in enumerate(paths):
            dest = entry_dir / f"{i:03d}-{p.name}"
            shutil.move(str(p), str(dest))
            items.append({"stored": dest.name, "original": str(p)})
        info = {"id": entry_id, "kind": kind, "label": label, "deleted": now_iso(), "items": items}
        atomic_write_json(entry_dir / "trash.json", info)
        return self._trash_entry(entry_dir)

    def _trash_entry(self, entry_dir: Path) -> TrashEntry:
        info = read_json(entry_dir / "trash.json", {}) or {}
        items = info.get("items") or [{"original": ""}]
        return TrashEntry(id=entry_dir.name, path=entry_dir, kind=info.get("kind", "files"),
                          label=info.get("label", entry_dir.name), original=Path(items[0]["original"]),
                          deleted=info.get("deleted", ""))

    def trash(self) -> List[TrashEntry]:
        if not self.trash_dir.is_dir():
            return []
        entries = [self._trash_entry(d) for d in self.trash_dir.iterdir() if (d / "trash.json").is_file()]
        return sorted(entries, key=lambda e: e.id, reverse=True)

    def restore(self, entry_id: str) -> List[Path]:
        """Put a trash entry's files back where they were; refuses to overwrite anything."""
        if "/" in entry_id or "\\" in entry_id or ".." in entry_id:
            raise NotFound(tr("There is no trash entry \"{id}\".", id=entry_id))
        entry_dir = self.trash_dir / entry_id
        info = read_json(entry_dir / "trash.json", None)
        if info is None:
            raise NotFound(tr("There is no trash entry \"{id}\".", id=entry_id))
        for item in info["items"]:
            if Path(item["original"]).exists():
                raise AlreadyExists(tr("Cannot restore: {path} exists again. Rename or delete it first.",
                                       path=item["original"]))
        restored = []
        for item in info["items"]:
            original = Path(item["original"])
            self.ensure_inside(original)
            original.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(entry_dir / item["stored"]), str(original))
            restored.append(original)
        shutil.rmtree(entry_dir, ignore_errors=True)
        return restored

    def empty_trash(self, entry_id: Optional[str] = None) -> None:
        targets = [self.trash_dir / entry_id] if entry_id else [e.path for e in self.trash()]
        for target in targets:
            self.ensure_inside(target)
            shutil.rmtree(target, ignore_errors=True)

    # ---- safety ----------------------------------------------------------------------------------------
    def ensure_inside(self, path: Union[str, os.PathLike]) -> Path:
        """``path`` resolved, or :class:`ProjectError` when it lies outside the workspace."""
        resolved = Path(path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ProjectError(tr("Refused: {path} is outside the Train Tools workspace.", path=str(path)))
        return resolved


def retarget_config_text(text: str, old_dir: Path, new_dir: Path, renames: Optional[Dict[str, str]] = None) -> str:
    """A config's TOML with every path under ``old_dir`` moved to ``new_dir`` (and output names renamed)."""
    from lib_trainer.trainer import schema

    data = schema.flatten_sections(schema._toml_loads(text))
    old, new = str(old_dir), str(new_dir)

    def move(value: Any) -> Any:
        if isinstance(value, str):
            if value == old or value.startswith(old + os.sep) or value.startswith(old + "/"):
                return new + value[len(old):]
            if renames and value in renames:
                return renames[value]
            return value
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    cfg, _ = schema.config_from_dict({k: move(v) for k, v in data.items()})
    return schema.dumps_config(cfg)


def _retarget_config_file(path: Path, old_dir: Path, new_dir: Path) -> None:
    if path.is_file():
        atomic_write_text(path, retarget_config_text(path.read_text(encoding="utf-8"), old_dir, new_dir))


__all__ = ["Workspace", "Project", "Version", "CheckpointFile", "TrashEntry", "ProjectError", "NotFound",
           "AlreadyExists", "Busy", "STATUSES", "BUSY_STATUSES",
           "retarget_config_text"]
