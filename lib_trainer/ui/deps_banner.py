"""The banner above the tab when the trainer's private dependencies are missing.

The WebUI skips install.py under --skip-install, and an install can fail at start-up (no network, a proxy):
the tab then says what is missing and offers to install it, with the pip output as progress.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import gradio as gr

from lib_trainer import deps
from lib_trainer.common.i18n import tr
from lib_trainer.ui import compat


def status_text(python: str) -> Tuple[str, bool]:
    """(markdown, everything installed?) for the trainer's Python."""
    missing = deps.missing_requirements(python)
    if not missing:
        return "", True
    names = ", ".join(r.name for r in missing)
    return tr("**The trainer's dependencies are missing:** {names}. Training cannot start until they are installed "
              "into the extension's private folder (the WebUI's own packages are never changed).", names=names), False


def install(python: str) -> Iterator[Tuple[str, dict, dict]]:
    lines = []
    yield tr("Installing… this can take a few minutes."), compat.update(), compat.update(interactive=False)
    result = deps.install_missing(python, progress=lines.append)
    text, ok = status_text(python)
    log = result.message + ("\n\n" + "\n".join(lines[-30:]) if lines else "")
    yield log, compat.update(value=text, visible=not ok), compat.update(visible=not ok, interactive=True)


def build(python: str) -> None:
    text, ok = status_text(python)
    with gr.Column(visible=not ok, elem_id="train_tools_deps") as column:
        message = gr.Markdown(text, elem_id="train_tools_deps_status")
        button = gr.Button(tr("Install trainer dependencies"), variant="primary", elem_id="train_tools_deps_install")
        log = gr.Textbox(label=tr("Install log"), lines=6, interactive=False, elem_id="train_tools_deps_log")

    def on_install():
        yield from install(python)

    button.click(on_install, None, [log, message, button])
    del column
