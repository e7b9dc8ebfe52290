"""WebUI entry point: the Train Tools tab, its settings section and its HTTP API.

Kept small and cheap at start-up: the heavy parts (the tab's modules, the job runner, the WebUI host) are
imported inside the callbacks, and one runner per process survives the WebUI's "Reload UI" (see
lib_trainer/common/runtime.py), so a training run keeps going and is shown again.
"""
import sys
from pathlib import Path

from modules import script_callbacks, shared

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.append(str(EXTENSION_ROOT))

from lib_trainer.common import i18n, runtime  # noqa: E402  (standard library only)

SECTION = ("train_tools", "Train Tools")
PRESET_CHOICES = ["person", "character", "style", "product"]
VRAM_CHOICES = ["6", "8", "12", "16", "24"]


def _opt(name, default=None):
    return getattr(shared.opts, name, default)


def _language():
    return _opt("localization", None)


i18n.set_language(_language())


def on_ui_settings():
    import gradio as gr

    tr = i18n.tr
    options = {
        "train_tools_workspace": shared.OptionInfo(
            "", tr("Train Tools folder (empty: <outputs folder>/train_tools; restart to apply)"), section=SECTION),
        "train_tools_python": shared.OptionInfo(
            "", tr("Python that runs the trainer (empty: the WebUI's own; or e.g. a kohya venv's python)"),
            section=SECTION),
        "train_tools_gpu": shared.OptionInfo(
            "", tr("GPU for training (CUDA_VISIBLE_DEVICES, e.g. 0 or 1; empty: the default GPU)"), section=SECTION),
        "train_tools_default_preset": shared.OptionInfo(
            "character", tr("Default preset"), gr.Dropdown, {"choices": PRESET_CHOICES}, section=SECTION),
        "train_tools_default_vram": shared.OptionInfo(
            "8", tr("Default VRAM tier (GB)"), gr.Dropdown, {"choices": VRAM_CHOICES}, section=SECTION),
        "train_tools_auto_preview": shared.OptionInfo(
            True, tr("Draw the preview grid automatically after training"), section=SECTION),
        "train_tools_api": shared.OptionInfo(
            False, tr("Serve the /train_tools/v1 API even without --api (restart to apply)"), section=SECTION),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)


class _LiveRunnerSettings:
    """The job runner's settings, read from the WebUI's settings at every use (no restart needed)."""

    stop_timeout_s = 60.0
    poll_s = 0.5
    deps_dir = None

    @property
    def python(self):
        return (_opt("train_tools_python", "") or "").strip() or None

    @property
    def gpu(self):
        return (str(_opt("train_tools_gpu", "") or "")).strip() or None


def _reachable_by_others():
    """The WebUI listens beyond this computer without a login: then "Import a folder" must not read any path."""
    cmd_opts = shared.cmd_opts
    server_name = (getattr(cmd_opts, "server_name", None) or "").strip().strip("[]").lower()
    loopback = server_name in ("localhost", "::1") or server_name.startswith("127.")
    public = any(getattr(cmd_opts, name, None) for name in ("listen", "share", "ngrok")) or (
        bool(server_name) and not loopback)
    return public and not (getattr(cmd_opts, "gradio_auth", None) or getattr(cmd_opts, "gradio_auth_path", None))


def _ui_settings(workspace_root=None):
    from lib_trainer.ui.context import UISettings

    try:
        vram = int(_opt("train_tools_default_vram", "8"))
    except (TypeError, ValueError):
        vram = 8
    roots = [str(workspace_root)] if workspace_root is not None and _reachable_by_others() else None
    return UISettings(default_preset=_opt("train_tools_default_preset", "character") or "character",
                      default_vram_gb=vram, auto_preview=bool(_opt("train_tools_auto_preview", True)),
                      import_roots=roots)


def _create_context():
    from lib_trainer.hosts.webui.host import WebUIHost
    from lib_trainer.jobs.runner import JobRunner
    from lib_trainer.preview.tasks import PreviewTasks, after_training_hook
    from lib_trainer.projects import Workspace
    from lib_trainer.ui.context import UIContext

    host = WebUIHost()
    root = (_opt("train_tools_workspace", "") or "").strip() or str(host.outputs_dir() / "train_tools")
    workspace = Workspace(root)
    previews = PreviewTasks(host)
    runner = JobRunner(workspace, host, _LiveRunnerSettings(), after_train=after_training_hook(previews))
    runner.start()
    return UIContext(workspace, host, runner, settings=lambda: _ui_settings(workspace.root), previews=previews)


def context():
    return runtime.process_singleton("webui_context", _create_context)


def on_ui_tabs():
    import gradio as gr

    from lib_trainer.ui import deps_banner
    from lib_trainer.ui.tab import build_tab

    with gr.Blocks(analytics_enabled=False) as tab:
        deps_banner.build(sys.executable)
        build_tab(context())
    return [(tab, i18n.tr("Train Tools"), "train_tools")]


def on_app_started(_demo, app):
    from lib_trainer import api

    cmd_opts = shared.cmd_opts
    if not (getattr(cmd_opts, "api", False) or _opt("train_tools_api", False)):
        return
    # Routes added here get no authentication from the WebUI: ours check --api-auth (or the page's --gradio-auth
    # and --gradio-auth-path) themselves.
    credentials = api.credentials_from(getattr(cmd_opts, "api_auth", None), getattr(cmd_opts, "gradio_auth", None),
                                       getattr(cmd_opts, "gradio_auth_path", None))
    ctx = context()
    api.mount_api(app, ctx.runner, ctx.workspace, credentials, previews=ctx.previews)


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
