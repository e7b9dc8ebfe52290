"""scripts/train_tools.py against a double of the WebUI's modules: settings section, the tab, the API mount."""
import base64

import pytest

from lib_trainer.common import runtime
from lib_trainer.jobs.runner import JobRunner
from lib_trainer.projects import Workspace
from lib_trainer.ui.context import UIContext
from tests import webui_double
from tests.jobs_support import RecordingHost


@pytest.fixture
def webui(tmp_path):
    def start(**cmd_opts):
        double = webui_double.install(cmd_opts)
        ws = Workspace(tmp_path / "ws")
        runner = JobRunner(ws, RecordingHost())
        runtime.forget("webui_context")
        runtime.process_singleton("webui_context", lambda: UIContext(ws, RecordingHost(), runner))
        double.script = webui_double.load_script()
        double.workspace = ws
        return double
    yield start
    runtime.forget("webui_context")
    webui_double.uninstall()


def test_registers_settings_tab_and_api_callbacks(webui):
    double = webui()
    assert all(len(v) == 1 for v in double.callbacks.values())
    double.callbacks["ui_settings"][0]()
    labels = double.shared.opts.data_labels
    assert {"train_tools_workspace", "train_tools_python", "train_tools_gpu", "train_tools_default_preset",
            "train_tools_default_vram", "train_tools_auto_preview", "train_tools_api"} <= set(labels)
    assert all(info.section == ("train_tools", "Train Tools") for info in labels.values())


def test_settings_reach_the_runner_and_the_tab_without_restart(webui):
    double = webui()
    double.callbacks["ui_settings"][0]()
    live = double.script._LiveRunnerSettings()
    assert live.python is None and live.gpu is None
    double.shared.opts.train_tools_python = " /opt/kohya/venv/bin/python "
    double.shared.opts.train_tools_gpu = "1"
    double.shared.opts.train_tools_default_preset = "style"
    double.shared.opts.train_tools_default_vram = "16"
    assert (live.python, live.gpu) == ("/opt/kohya/venv/bin/python", "1")
    settings = double.script._ui_settings()
    assert (settings.default_preset, settings.default_vram_gb) == ("style", 16)


def test_the_tab_is_built(webui):
    double = webui()
    double.callbacks["ui_settings"][0]()
    [(blocks, title, elem_id)] = double.callbacks["ui_tabs"][0]()
    assert title == "Train Tools" and elem_id == "train_tools"
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert "train_tools_root" in ids


def _client(double, fastapi_app):
    from fastapi.testclient import TestClient
    double.callbacks["app_started"][0](None, fastapi_app)
    return TestClient(fastapi_app)


def test_api_is_mounted_only_with_api_and_checks_api_auth(webui):
    from fastapi import FastAPI

    double = webui(api=False)
    client = _client(double, FastAPI())
    assert client.get("/train_tools/v1/projects").status_code == 404
    webui_double.uninstall()

    double = webui(api=True, api_auth="ann:secret")
    double.workspace.create_project("可爱的狗")
    client = _client(double, FastAPI())
    assert client.get("/train_tools/v1/projects").status_code == 401
    token = base64.b64encode("ann:secret".encode()).decode()
    response = client.get("/train_tools/v1/projects", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 200 and "可爱的狗" in response.text


def test_the_api_setting_mounts_it_without_api_flag(webui):
    from fastapi import FastAPI

    double = webui(api=False)
    double.callbacks["ui_settings"][0]()
    double.shared.opts.train_tools_api = True
    client = _client(double, FastAPI())
    assert client.get("/train_tools/v1/projects").status_code == 200


def test_import_folders_are_limited_when_the_webui_is_reachable_without_login(webui, tmp_path):
    double = webui()
    assert double.script._ui_settings(tmp_path).import_roots is None
    for loopback in ("127.0.0.1", "localhost", "::1"):
        double.shared.cmd_opts.server_name = loopback
        assert double.script._ui_settings(tmp_path).import_roots is None, loopback
    double.shared.cmd_opts.server_name = "0.0.0.0"
    assert double.script._ui_settings(tmp_path).import_roots == [str(tmp_path)]
    double.shared.cmd_opts.server_name = None
    double.shared.cmd_opts.listen = True
    assert double.script._ui_settings(tmp_path).import_roots == [str(tmp_path)]
    double.shared.cmd_opts.gradio_auth = "ann:secret"
    assert double.script._ui_settings(tmp_path).import_roots is None
