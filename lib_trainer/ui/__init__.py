"""The Train Tools tab (gradio), shared by the WebUI entry and the standalone app.

Importing this package is cheap (no gradio, torch or diffusers); ``tab.build_tab`` imports the panels.
Modules: ``context`` (what the tab works on), ``tab`` (the Blocks and its wiring), one module per panel
(``project_bar``, ``dataset_panel``, ``captions_panel``, ``train_panel``, ``progress_panel``,
``checkpoints_panel``), ``compat`` (gradio 3.41 vs 4.x), ``charts`` (Pillow charts), ``train_fields`` (the
training form), ``version_settings`` and ``messages``.
"""
