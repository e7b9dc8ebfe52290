"""The Train Tools tab (gradio), shared by the WebUI entry and the standalone app.

Importing this package is cheap (no gradio, torch or diffusers); :func:`build_tab` imports the panels.
Modules: ``context`` (what the tab works on), ``tab`` (the Blocks and its wiring), one module per panel
(``project_bar``, ``dataset_panel``, ``captions_panel``, ``train_panel``, ``progress_panel``,
``checkpoints_panel``), ``compat`` (gradio 3.41 vs 4.x), ``charts`` (Pillow charts), ``train_fields`` (the
training form), ``version_settings``, ``preview_tasks`` and ``messages``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lib_trainer.ui.context import UIContext


def build_tab(ctx: "UIContext") -> Any:
    """The tab as a ``gr.Blocks`` (see lib_trainer.ui.tab.build_tab)."""
    from lib_trainer.ui.tab import build_tab as build

    return build(ctx)


__all__ = ["build_tab"]
