"""The HTTP API (lib_trainer/api.py) on a FastAPI app, driving a runner with a fake trainer."""
from __future__ import annotations

import base64
import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_trainer.api import PREFIX, mount_api, parse_api_auth
from lib_trainer.jobs.runner import JobRunner, RunnerSettings
from lib_trainer.projects import Workspace
from tests.jobs_support import RecordingHost, fake_python, make_version, wait_for

USER, PASSWORD = "anchor", "s3cret:with-colon"


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_MODE", "slow")
    ws = Workspace(tmp_path / "ws")
    make_version(ws, tmp_path / "unused-model.safetensors", project="cute dog", version="v1")
    host = RecordingHost()
    runner = JobRunner(ws, host, RunnerSettings(python=fake_python(tmp_path), poll_s=0.1, stop_timeout_s=30))
    yield ws, runner, host
    runner.shutdown(stop_running=True, timeout=60)


def client_for(ws, runner, credentials=None) -> TestClient:
    app = FastAPI()
    mount_api(app, runner, ws, credentials)
    return TestClient(app)


def test_parse_api_auth():
    assert parse_api_auth(None) is None and parse_api_auth("  ") is None
    assert parse_api_auth("a:b, c:d:e") == ["a:b", "c:d:e"]


def test_credentials_are_enforced(setup):
    ws, runner, _ = setup
    client = client_for(ws, runner, parse_api_auth(f"other:pw,{USER}:{PASSWORD}"))
    for headers in ({}, basic(USER, "wrong"), basic("nobody", PASSWORD), {"Authorization": "Basic !!!"},
                    {"Authorization": "Bearer " + PASSWORD}):
        answer = client.get(f"{PREFIX}/projects", headers=headers)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")
    answer = client.post(f"{PREFIX}/jobs", json={"project": "cute dog", "version": "v1"})
    assert answer.status_code == 401 and runner.jobs() == []
    ok = client.get(f"{PREFIX}/projects", headers=basic(USER, PASSWORD))
    assert ok.status_code == 200 and ok.json()[0]["name"] == "cute dog"
    assert client.get(f"{PREFIX}/jobs", headers=basic("other", "pw")).status_code == 200
    open_client = client_for(ws, runner, None)
    assert open_client.get(f"{PREFIX}/projects").status_code == 200


def test_names_and_paths_outside_the_workspace_are_refused(setup, tmp_path):
    ws, runner, _ = setup
    client = client_for(ws, runner)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "project.json").write_text('{"name": "escape"}', encoding="utf-8")
    (outside / "versions" / "v1").mkdir(parents=True)
    (outside / "versions" / "v1" / "version.json").write_text('{"status": "draft"}', encoding="utf-8")
    os.symlink(outside, ws.projects_dir / "escape")

    for project in ("..", "../..", "a/b", "..\\x", "", "x\x00y"):
        answer = client.post(f"{PREFIX}/jobs", json={"project": project, "version": "v1"})
        assert answer.status_code == 400, (project, answer.text)
    assert client.get(f"{PREFIX}/status", params={"project": "cute dog", "version": ".."}).status_code == 400
    assert client.get(f"{PREFIX}/projects/%2e%2e/versions").status_code in (400, 404)
    assert client.get(f"{PREFIX}/projects/..%2F..%2Fetc/versions").status_code in (400, 404)

    answer = client.get(f"{PREFIX}/projects/escape/versions")  # a link leading out of the workspace
    assert answer.status_code == 400 and "outside" in answer.json()["detail"]
    assert client.post(f"{PREFIX}/jobs", json={"project": "escape", "version": "v1"}).status_code == 400
    assert [p["name"] for p in client.get(f"{PREFIX}/projects").json()] == ["cute dog"]
    assert client.get(f"{PREFIX}/status", params={"project": "nope", "version": "v1"}).status_code == 404
    assert client.post(f"{PREFIX}/jobs", json={"project": "cute dog"}).status_code == 422
    assert runner.jobs() == []


def test_start_status_stop_flow(setup):
    ws, runner, host = setup
    client = client_for(ws, runner)
    versions = client.get(f"{PREFIX}/projects/cute dog/versions").json()
    assert [(v["version"], v["status"]) for v in versions] == [("v1", "draft")]

    job = client.post(f"{PREFIX}/jobs", json={"project": "cute dog", "version": "v1"}).json()
    assert job["status"] == "queued" and job["position"] == 1
    again = client.post(f"{PREFIX}/jobs", json={"project": "cute dog", "version": "v1"})
    assert again.status_code == 409 and "already queued" in again.json()["detail"]
    resume = client.post(f"{PREFIX}/jobs", json={"project": "cute dog", "version": "v1", "resume": True})
    assert resume.status_code == 409

    runner.start()
    query = {"project": "cute dog", "version": "v1", "events": 3}
    status = wait_for(lambda: (lambda s: s if (s.get("step") or 0) >= 3 else None)(
        client.get(f"{PREFIX}/status", params=query).json()), 60, "steps")
    assert status["status"] == "running" and status["job"]["id"] == job["id"] and status["position"] is None
    assert len(status["events"]) == 3 and status["events"][-1]["event"] == "step"
    assert [j["status"] for j in client.get(f"{PREFIX}/jobs").json()] == ["running"]

    stopped = client.post(f"{PREFIX}/jobs/stop", json={"project": "cute dog", "version": "v1"}).json()
    assert stopped == {"project": "cute dog", "version": "v1", "result": "stopping"}
    final = runner.wait("cute dog", "v1", timeout=30)
    assert final["status"] == "cancelled" and final["resumable"] and final["checkpoints"]
    assert client.get(f"{PREFIX}/status", params=query).json()["events"][-1]["event"] == "done"

    resumed = client.post(f"{PREFIX}/jobs", json={"project": "cute dog", "version": "v1", "resume": True}).json()
    assert resumed["resume"] == final["resume_state"]
    wait_for(lambda: runner.status("cute dog", "v1")["status"] == "running", 30, "the resumed run")
    assert client.post(f"{PREFIX}/jobs/stop", json={"project": "cute dog", "version": "v1"}).json()["result"] \
        == "stopping"
    assert runner.wait("cute dog", "v1", timeout=30)["status"] == "cancelled"
    assert client.post(f"{PREFIX}/jobs/stop", json={"project": "cute dog", "version": "v1"}).json()["result"] == "idle"
    assert host.calls == ["release", "restore"] * 2


def test_credentials_come_from_api_auth_else_the_pages_auth_and_its_file(tmp_path):
    from lib_trainer.api import credentials_from

    assert credentials_from(None) is None
    assert credentials_from("a:b", "page:pw") == ["a:b"]  # --api-auth wins, as in the WebUI's own API
    assert credentials_from(None, "page:pw") == ["page:pw"]
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("one:1, two:2\n\nthree:3:with-colon\n", encoding="utf-8")
    assert credentials_from(None, "page:pw", str(auth_file)) == ["page:pw", "one:1", "two:2", "three:3:with-colon"]
    assert credentials_from(None, None, str(auth_file)) == ["one:1", "two:2", "three:3:with-colon"]
    # a file that cannot be read, or an empty one, locks the API instead of leaving it open
    assert credentials_from(None, None, str(tmp_path / "missing.txt")) == []
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    assert credentials_from(None, None, str(tmp_path / "empty.txt")) == []


def test_an_auth_file_protected_webui_serves_the_api_only_with_a_login(setup, tmp_path):
    from lib_trainer.api import credentials_from

    ws, runner, _ = setup
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text(f"{USER}:{PASSWORD}\n", encoding="utf-8")
    client = client_for(ws, runner, credentials_from(None, None, str(auth_file)))
    assert client.get(f"{PREFIX}/projects").status_code == 401
    assert client.get(f"{PREFIX}/projects", headers=basic(USER, PASSWORD)).status_code == 200
    locked = client_for(ws, runner, credentials_from(None, None, str(tmp_path / "missing.txt")))
    assert locked.get(f"{PREFIX}/projects", headers=basic(USER, PASSWORD)).status_code == 401


def test_previews_through_the_api_are_the_tabs_preview_tasks(tmp_path):
    from lib_trainer.preview.config import PreviewConfig, save_config
    from lib_trainer.preview.tasks import PreviewTasks
    from tests.ui_support import PaintHost, fake_checkpoint

    ws = Workspace(tmp_path / "ws")
    version = ws.create_project("dog", first_version="v1").version("v1")
    for epoch in (1, 2):
        fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-{epoch:06d}.safetensors", epoch, epoch * 3)
    version.update(status="finished")
    save_config(version, PreviewConfig(prompts=["a dog"], weights=[1.0], width=16, height=16, steps=1, reference=False))
    previews = PreviewTasks(PaintHost(tmp_path))
    app = FastAPI()
    mount_api(app, JobRunner(ws, RecordingHost()), ws, None, previews=previews)
    client = TestClient(app)
    query = {"project": "dog", "version": "v1"}
    assert client.get(f"{PREFIX}/previews", params=query).json()["running"] is False
    started = client.post(f"{PREFIX}/previews", json=query)
    assert started.status_code == 200 and started.json()["origin"] == "api"
    assert previews.wait(version, 30)
    state = client.get(f"{PREFIX}/previews", params=query).json()
    assert state["running"] is False and (state["done"], state["total"]) == (2, 2)
    assert state["status"].startswith("Preview done: 2 pictures")  # what the tab's status line shows
    assert client.post(f"{PREFIX}/previews/stop", json=query).json()["result"] == "idle"
    missing = client.post(f"{PREFIX}/previews", json={**query, "checkpoints": ["nope"]})
    assert missing.status_code == 409 and "no checkpoint" in missing.json()["detail"]
    version.update(status="running")
    assert client.post(f"{PREFIX}/previews", json=query).status_code == 409
