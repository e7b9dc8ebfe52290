"""WebUI entry point: registers the Train Tools tab.

Until the full tab lands (projects, dataset, training, preview) the tab tells whether the trainer's private
dependencies are installed and offers to install them, which the WebUI skips under --skip-install.
"""
import sys
from pathlib import Path

import gradio as gr
from modules import script_callbacks

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.append(str(EXTENSION_ROOT))

from lib_trainer import deps  # noqa: E402  (standard library only: safe inside the WebUI process)


def _status_text() -> str:
    missing = deps.missing_requirements(sys.executable)
    if not missing:
        return "Trainer dependencies are installed."
    return "Trainer dependencies are missing: " + ", ".join(r.name for r in missing)


def _install():
    lines = []
    result = deps.install_missing(sys.executable, progress=lines.append)
    return result.message + ("\n\n" + "\n".join(lines[-20:]) if lines else "")


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        status = gr.Markdown(_status_text(), elem_id="train_tools_status")
        install = gr.Button("Install trainer dependencies", elem_id="train_tools_install")
        log = gr.Textbox(label="Install log", lines=6, interactive=False, elem_id="train_tools_install_log")
        install.click(_install, outputs=[log]).then(_status_text, outputs=[status])
    return [(tab, "Train Tools", "train_tools")]


script_callbacks.on_ui_tabs(on_ui_tabs)
