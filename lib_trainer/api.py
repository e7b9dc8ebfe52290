"""The HTTP API under ``/train_tools/v1/``: drive training headless (list, start, stop, status).

Mounted on the WebUI's FastAPI app only when asked (``--api`` or a setting; the WebUI entry decides) by
:func:`mount_api`. Routes added in ``on_app_started`` get no authentication from the WebUI, so this module
enforces the ``--api-auth`` credentials itself (HTTP Basic; 401 with ``WWW-Authenticate`` otherwise).
Every name is validated and every path checked to lie inside the workspace.

    GET  /train_tools/v1/projects                          -> [{name, created, updated, versions: [...]}]
    GET  /train_tools/v1/projects/{project}/versions       -> [version state]
    POST /train_tools/v1/jobs       {project, version, resume=false}   -> job
    POST /train_tools/v1/jobs/stop  {project, version}                 -> {project, version, result}
    GET  /train_tools/v1/jobs                              -> [job]
    GET  /train_tools/v1/status?project=&version=&events=20 -> version state + job + position + last events
    POST /train_tools/v1/previews       {project, version, checkpoints=null}  -> the preview task (drawing)
    POST /train_tools/v1/previews/stop  {project, version}                 -> {project, version, result}
    GET  /train_tools/v1/previews?project=&version=        -> the preview task, or {running: false} when none

A preview started here is one of the process's preview tasks, like the tab's and the one drawn after training:
it replaces one being drawn, the tab shows it and can stop it (and this API stops theirs).

Errors answer ``{"detail": message}``: 400 bad name or path outside the workspace, 401 no valid credentials,
404 no such project/version, 409 busy or not possible now. Pydantic models stay within what pydantic 1 and 2
both accept; only the standard library and what the WebUI ships (fastapi, pydantic) are imported.
"""
from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from lib_trainer.common.i18n import tr
from lib_trainer.jobs.runner import JobRunner
from lib_trainer.jobs.store import JobError
from lib_trainer.common.names import InvalidName, validate_name
from lib_trainer.preview.cells import PreviewError, resolve_checkpoints
from lib_trainer.preview.tasks import PreviewTasks, read_record
from lib_trainer.projects import Busy, NotFound, Project, ProjectError, Version, Workspace

PREFIX = "/train_tools/v1"
MAX_EVENTS = 1000
T = TypeVar("T")


class JobRequest(BaseModel):
    project: str = Field(..., description="Project name")
    version: str = Field(..., description="Version name")
    resume: bool = Field(False, description="Continue from the version's newest saved state instead of starting over")


class StopJobBody(BaseModel):
    project: str = Field(..., description="Project name")
    version: str = Field(..., description="Version name")


class PreviewRequest(BaseModel):
    project: str = Field(..., description="Project name")
    version: str = Field(..., description="Version name")
    checkpoints: Optional[List[str]] = Field(None, description="Checkpoint names to draw (default: every one); "
                                             "the grid still shows them all")


class StopPreviewBody(BaseModel):
    project: str = Field(..., description="Project name")
    version: str = Field(..., description="Version name")


def parse_api_auth(value: Optional[str]) -> Optional[List[str]]:
    """The WebUI's ``--api-auth`` text ("user:pass,user2:pass2") as a list of "user:pass"; None when unset."""
    if not value or not value.strip():
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def credentials_from(api_auth: Optional[str], gradio_auth: Optional[str] = None,
                     gradio_auth_path: Optional[str] = None) -> Optional[List[str]]:
    """The credentials the API asks for: the WebUI's ``--api-auth``, else those of its page (``--gradio-auth`` and
    the lines of the ``--gradio-auth-path`` file, read as the WebUI reads them: comma-separated "user:pass" per
    line); None when none is set. An auth file that cannot be read locks the API (no credential can match)
    rather than leaving it open."""
    given = parse_api_auth(api_auth)
    if given is not None:
        return given
    found = list(parse_api_auth(gradio_auth) or [])
    if gradio_auth_path:
        try:
            with open(gradio_auth_path, encoding="utf-8") as fh:
                for line in fh:
                    found.extend(parse_api_auth(line) or [])
        except OSError:
            return []
        if not found:
            return []
    return found or None


def _basic_auth(credentials: Optional[Sequence[str]]) -> Callable[[Request], None]:
    allowed = None if credentials is None else [c.encode("utf-8") for c in credentials]

    def check(request: Request) -> None:
        if allowed is None:
            return
        scheme, _, param = request.headers.get("authorization", "").partition(" ")
        given = b""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(param.strip(), validate=True)
            except (binascii.Error, ValueError):
                given = b""
        ok = False
        for entry in allowed:  # no early exit: the time taken does not tell which entry matched
            ok |= bool(given) and secrets.compare_digest(given, entry)
        if not ok:
            raise HTTPException(status_code=401, detail=tr("Incorrect username or password."),
                                headers={"WWW-Authenticate": 'Basic realm="Train Tools"'})

    return check


def _answer(call: Callable[[], T]) -> T:
    """Run ``call``, turning the core's exceptions into HTTP errors with their (translated) messages."""
    try:
        return call()
    except InvalidName as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except (Busy, JobError) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except ProjectError as exc:  # e.g. a path outside the workspace
        raise HTTPException(status_code=400, detail=str(exc)) from None


def mount_api(app: FastAPI, runner: JobRunner, workspace: Workspace,
              credentials: Optional[Sequence[str]] = None, previews: Optional[PreviewTasks] = None) -> APIRouter:
    """Add the Train Tools routes to ``app``. ``credentials``: "user:pass" entries (see :func:`credentials_from`);
    None means no authentication (the WebUI runs without ``--api-auth``). ``previews``: the process's preview
    tasks (the tab's); without them the preview routes answer 409."""
    router = APIRouter(prefix=PREFIX, tags=["Train Tools"], dependencies=[Depends(_basic_auth(credentials))])

    def find_project(name: str) -> Project:
        found = workspace.project(validate_name(name, tr("project name")))
        workspace.ensure_inside(found.path)
        return found

    def find_version(project_name: str, version_name: str) -> Version:
        found = find_project(project_name).version(validate_name(version_name, tr("version name")))
        workspace.ensure_inside(found.path)
        return found

    def inside(path: Any) -> bool:
        try:
            workspace.ensure_inside(path)
            return True
        except ProjectError:
            return False

    def list_projects() -> List[Dict[str, Any]]:
        result = []
        for p in workspace.projects():
            if not inside(p.path):
                continue  # a link that leads out of the workspace is not ours to show
            state = p.state()
            result.append({"name": p.name, "created": state.get("created"), "updated": state.get("updated"),
                           "versions": [{"name": v.name, "status": v.status} for v in p.versions()
                                        if inside(v.path)]})
        return result

    @router.get("/projects")
    def get_projects():
        return _answer(list_projects)

    @router.get("/projects/{project_name}/versions")
    def get_versions(project_name: str):
        return _answer(lambda: [v.to_dict() for v in find_project(project_name).versions() if inside(v.path)])

    @router.post("/jobs")
    def post_job(request: JobRequest):
        def start() -> Dict[str, Any]:
            v = find_version(request.project, request.version)
            job = (runner.resume if request.resume else runner.submit)(v.project.name, v.name)
            return job.to_dict()
        return _answer(start)

    @router.post("/jobs/stop")
    def post_stop(request: StopJobBody):
        def stop() -> Dict[str, Any]:
            v = find_version(request.project, request.version)
            return {"project": v.project.name, "version": v.name, "result": runner.stop(v.project.name, v.name)}
        return _answer(stop)

    @router.get("/jobs")
    def get_jobs():
        return _answer(lambda: [job.to_dict() for job in runner.jobs()])

    @router.get("/status")
    def get_status(project: str = Query(...), version_name: str = Query(..., alias="version"),
                   events: int = Query(20, ge=0, le=MAX_EVENTS)):
        def status() -> Dict[str, Any]:
            v = find_version(project, version_name)
            return runner.status(v.project.name, v.name, events=events)
        return _answer(status)

    def preview_tasks() -> PreviewTasks:
        if previews is None:
            raise JobError(tr("This process draws no previews."))
        return previews

    def preview_state(v: Version) -> Dict[str, Any]:
        task = preview_tasks().get(v)
        record = read_record(v)
        state: Dict[str, Any] = {"project": v.project.name, "version": v.name, "status": preview_tasks().describe(v)}
        if task is not None:
            state.update(running=task.running, origin=task.origin, done=task.done, total=task.total,
                         error=task.error, interrupted=bool(task.result and task.result.interrupted))
        elif record is not None:  # drawn by another process on this workspace
            state.update(running=True, origin=record.get("origin"), done=record.get("done"),
                         total=record.get("total"), error=None, interrupted=False)
        else:
            state["running"] = False
        return state

    @router.post("/previews")
    def post_preview(request: PreviewRequest):
        def start() -> Dict[str, Any]:
            v = find_version(request.project, request.version)
            if v.busy:
                raise JobError(tr("This version is training; preview it when training has ended."))
            try:
                if not v.checkpoints():
                    raise PreviewError(tr("There are no checkpoints yet: train first."))
                resolve_checkpoints(v, request.checkpoints)  # an unknown name is refused here, not in the thread
                preview_tasks().start(v, request.checkpoints, origin="api", replace=True)
            except PreviewError as exc:
                raise JobError(str(exc)) from None
            return preview_state(v)
        return _answer(start)

    @router.post("/previews/stop")
    def post_preview_stop(request: StopPreviewBody):
        def stop() -> Dict[str, Any]:
            v = find_version(request.project, request.version)
            stopped = preview_tasks().stop(v)
            return {"project": v.project.name, "version": v.name, "result": "stopping" if stopped else "idle"}
        return _answer(stop)

    @router.get("/previews")
    def get_preview(project: str = Query(...), version_name: str = Query(..., alias="version")):
        return _answer(lambda: preview_state(find_version(project, version_name)))

    app.include_router(router)
    return router


__all__ = ["mount_api", "parse_api_auth", "credentials_from", "JobRequest", "StopJobBody", "PreviewRequest",
           "StopPreviewBody", "PREFIX"]
