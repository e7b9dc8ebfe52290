"""The ``new``, ``list`` and ``status`` commands."""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, Optional

from lib_trainer.cli.common import find_version, open_workspace, split_target
from lib_trainer.cli.hints import command
from lib_trainer.cli.errors import EXIT_OK
from lib_trainer.cli.job_follow import QUEUE_NOTICE_S, follow_job, spawn_worker
from lib_trainer.cli.output import Output, TrainProgress, checkpoint_dicts, say_checkpoints, status_label
from lib_trainer.common.i18n import tr


def cmd_new(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.common.names import validate_name
    from lib_trainer.projects import AlreadyExists, DEFAULT_VERSION, NotFound

    ws = open_workspace(args)
    project_name, version_name = split_target(args.target)
    project_name = validate_name(project_name, tr("project name"))
    if version_name:  # checked before anything is created
        version_name = validate_name(version_name, tr("version name"))
    try:
        project = ws.project(project_name)
    except NotFound:
        project = None
    if project is None:
        if args.from_version:
            raise NotFound(tr("Project \"{project}\" does not exist.", project=project_name))
        project = ws.create_project(project_name, first_version=version_name or DEFAULT_VERSION)
        version = project.version(version_name or DEFAULT_VERSION)
        out.say(tr("Created project \"{project}\" with version \"{version}\": {path}", project=project.name,
                   version=version.name, path=str(version.path)))
        if version_name:  # "a/b" is PROJECT/VERSION, never a project named "a/b": say so
            out.say(tr("(\"{target}\" reads as PROJECT/VERSION: project \"{project}\", version \"{version}\"; a "
                       "project name cannot contain \"/\".)", target=args.target.strip(), project=project.name,
                       version=version.name))
    else:
        if not version_name:
            raise AlreadyExists(tr("A project named \"{project}\" already exists; to add a version to it:\n  "
                                   "{command}", project=project.name,
                                   command=command(args, "new", f"{project.name}/v{len(project.versions()) + 1}")))
        source = None
        if args.from_version:  # "v1" or "PROJECT/v1" (a version of this project)
            source = split_target(args.from_version)[1] or args.from_version
        version = project.create_version(version_name, from_version=source)
        if source:
            out.say(tr("Created version \"{version}\" of \"{project}\" from \"{source}\" (dataset, captions and "
                       "settings copied): {path}", version=version.name, project=project.name, source=source,
                       path=str(version.path)))
        else:
            out.say(tr("Created version \"{version}\" of \"{project}\": {path}", version=version.name,
                       project=project.name, path=str(version.path)))
    out.say(tr("Next: import pictures (FOLDER: a folder, picture files or a .zip):\n  {command}",
               command=command(args, "import", version.key, "FOLDER")))
    out.emit({"ok": True, "command": "new", "project": project.name, "version": version.to_dict()})
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    ws = open_workspace(args)
    projects = [ws.project(args.project)] if args.project else ws.projects()
    data = []
    for project in projects:
        versions = []
        for v in project.versions():
            state = v.state()
            versions.append({"name": v.name, "key": v.key, "status": state.get("status", "draft"),
                             "created": state.get("created"), "output_name": state.get("output_name"),
                             "checkpoints": len(v.checkpoints()), "path": str(v.path)})
        data.append({"name": project.name, "path": str(project.path), "versions": versions})
    if not data:
        out.say(tr("No projects in {workspace} yet; create one with:\n  {command}", workspace=str(ws.root),
                   command=command(args, "new", "NAME")))
    for project in data:
        out.say(project["name"])
        for v in project["versions"]:
            out.say("  " + tr("{version}  {status}  {count} checkpoint(s)  created {created}", version=v["name"],
                              status=status_label(v["status"]), count=v["checkpoints"], created=v["created"] or "?"))
    out.emit({"ok": True, "command": "list", "workspace": str(ws.root), "projects": data})
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.jobs.runner import JobRunner
    from lib_trainer.jobs.store import ACTIVE_STATUSES

    ws = open_workspace(args)
    runner = JobRunner(ws, host=None)
    if not args.target:
        jobs = runner.jobs()
        if args.all is False:
            jobs = [j for j in jobs if j.status in ACTIVE_STATUSES] or jobs[-10:]
        if not jobs:
            out.say(tr("No training jobs in {workspace}.", workspace=str(ws.root)))
        for job in jobs:
            where = tr(" (position {position})", position=job.position) if job.status == "queued" else ""
            out.say(tr("{id}  {key}  {status}{where}  {message}", id=job.id, key=job.key,
                       status=status_label(job.status), where=where, message=job.message or ""))
        if any(_stuck(j.to_dict()) for j in jobs) and not _queue_is_run(ws):
            out.warn(tr("No Train Tools process is running the queue; this picks the jobs up:\n  {command}",
                        command=command(args, "worker")))
        out.emit({"ok": True, "command": "status", "jobs": [j.to_dict() for j in jobs]})
        return EXIT_OK
    version = find_version(ws, args.target, args)
    status = runner.status(version.project.name, version.name, events=args.events)
    job = status.get("job")
    unattended = bool(job and _stuck(job) and not _queue_is_run(ws))
    if args.follow and job and job.get("status") in ACTIVE_STATUSES:
        if unattended:  # e.g. after a restart: somebody has to run (or settle) the job to follow it
            spawn_worker(args, ws)
        code, document = follow_job(out, runner, version, job["id"],
                                    since=_epoch(job.get("started") or job.get("created")), command="status",
                                    args=args)
        out.emit(document)
        return code
    if unattended:
        out.warn(tr("No Train Tools process is running the queue; this picks the job up and shows its progress:"
                    "\n  {command}", command=command(args, "status", version.key, "--follow")))
    status["unattended"] = unattended
    status["checkpoints_on_disk"] = checkpoint_dicts(version)
    _say_status(args, out, version, status)
    out.emit({"ok": True, "command": "status", **status})
    return EXIT_OK


def _stuck(job: Dict[str, Any]) -> bool:
    """A job that should be moving if a runner were there: running (runners hold the trainer lock throughout) or
    queued for a while (a runner claims a queued job within a second)."""
    if job.get("status") == "running":
        return True
    return job.get("status") == "queued" and time.time() - _epoch(job.get("created")) > QUEUE_NOTICE_S * 5


def _queue_is_run(ws) -> bool:
    """Whether some runner (a worker, the app or the WebUI) holds the workspace's trainer lock right now."""
    from lib_trainer.jobs.lock import try_acquire, workspace_lock

    lock = workspace_lock(ws.root / ".trainer.lock")
    if try_acquire(lock):
        lock.release()
        return False
    return True


def _say_status(args: argparse.Namespace, out: Output, version, status: Dict[str, Any]) -> None:
    state = status.get("status", "draft")
    position = tr(" (position {position} in the queue)", position=status["position"]) if status.get("position") else ""
    out.say(tr("{key}: {status}{position}", key=version.key, status=status_label(state), position=position))
    if state == "running" and status.get("step") is not None:
        progress = TrainProgress(out)
        progress.total, progress.epochs = status.get("total_steps"), status.get("epochs")
        out.say("  " + progress.line(status))
    error = status.get("error") or {}
    if error.get("message"):
        out.say("  " + tr("error: {message}", message=error["message"]))
    if status.get("resumable"):
        out.say("  " + tr("resumable; continue it with:\n    {command}",
                          command=command(args, "train", version.key, "--resume")))
    say_checkpoints(out, version)
    events = status.get("events") or []
    if events:
        out.say(tr("Last events:"))
        for event in events:
            fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time", "traceback_tail"))
            stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time") or 0)))
            out.say(f"  {stamp} {event.get('event')}: {fields}"[:300])


def _epoch(iso: Optional[str]) -> float:
    """Unix time of a projects.now_iso() stamp (0 when there is none), to tell this run's events from older ones."""
    from datetime import datetime

    try:
        return datetime.strptime(str(iso), "%Y-%m-%dT%H:%M:%S%z").timestamp() - 1.0
    except ValueError:
        return 0.0
