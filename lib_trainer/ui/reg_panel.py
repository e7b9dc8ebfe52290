"""Regularization pictures (optional): pictures of the class in general, in ``dataset/reg/<repeats>_<class>/``.

They keep a LoRA of one person or dog from turning every person or dog into it. The trainer reads the folder when
it has pictures (config.py sets ``reg_data_dir``); a picture without a caption file is captioned with the class.
One class per version, which is how people use them; its name and repeats are the folder's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import gradio as gr

from lib_trainer.dataset.concepts import Concept, ConceptError, list_concepts, regularization_folder
from lib_trainer.common.i18n import tr
from lib_trainer.projects import ProjectError, Version
from lib_trainer.ui import compat, messages
from lib_trainer.ui.context import UIContext
from lib_trainer.ui.dataset_panel import UPLOAD_TYPES, import_into, import_inputs
from lib_trainer.ui.project_bar import trash_choices

DEFAULT_REPEATS = 1


@dataclass
class RegPanel:
    class_name: Any
    repeats: Any
    upload: Any
    folder: Any
    status: Any
    message: Any

    def refresh_outputs(self) -> List[Any]:
        return [self.class_name, self.repeats, self.status, self.message]


def current(version: Optional[Version]) -> Optional[Concept]:
    if version is None:
        return None
    concepts = list_concepts(version.dataset_dir, reg=True)
    return concepts[0] if concepts else None


def status_text(version: Optional[Version]) -> str:
    return _status(current(version))


def _status(concept: Optional[Concept]) -> str:
    if concept is None or concept.pictures == 0:
        return tr("No regularization pictures: the LoRA trains on your pictures alone (the usual choice).")
    return tr("{n} regularization pictures of \"{name}\" (repeats: {repeats}, folder {folder}); a picture without "
              "a caption file is captioned \"{name}\".", n=concept.pictures, name=concept.name,
              repeats=concept.repeats, folder=concept.folder_name)


def on_refresh(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[Any, ...]:
    concept = current(ctx.version(project, version_name))
    name = concept.name if concept else ""
    repeats = concept.repeats if concept else DEFAULT_REPEATS
    return name, repeats, _status(concept), ""


def _editable(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Version:
    version = ctx.version(project, version_name)
    if version is None:
        raise ProjectError(tr("Create or pick a project first."))
    if version.busy:
        raise ProjectError(tr("This version is training; change its regularization pictures after the run."))
    return version


def on_apply(ctx: UIContext, project: Optional[str], version_name: Optional[str], class_name: str,
             repeats: Any) -> Tuple[str, str]:
    """Rename the class or change its repeats: (status, message)."""
    try:
        version = _editable(ctx, project, version_name)
        if current(version) is None:
            raise ConceptError(tr("There are no regularization pictures yet: add some first."))
        concept = regularization_folder(version.dataset_dir, class_name, repeats)
    except (ConceptError, ProjectError, OSError) as exc:
        return compat.unchanged(), messages.error(str(exc))
    return status_text(version), messages.ok(tr("Saved: folder {folder}.", folder=concept.folder_name))


def on_import(ctx: UIContext, project: Optional[str], version_name: Optional[str], class_name: str, repeats: Any,
              files: Any, folder: str, progress: Any = None) -> Tuple[str, str]:
    """Import uploaded files and/or a server folder into the reg folder: (status, message)."""
    try:
        inputs = import_inputs(files, folder)
        version = _editable(ctx, project, version_name)
        concept = regularization_folder(version.dataset_dir, class_name, repeats)
    except (ConceptError, ProjectError, OSError, ValueError) as exc:
        return compat.unchanged(), messages.error(str(exc))
    message = import_into(ctx, inputs, concept.path, bool((folder or "").strip()), progress)
    return status_text(version), message


def on_remove(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[str, str]:
    """Move the reg pictures to the workspace's trash (restorable from the project bar): (status, message)."""
    try:
        version = _editable(ctx, project, version_name)
    except ProjectError as exc:
        return compat.unchanged(), messages.error(str(exc))
    if not version.reg_dir.is_dir() or not any(version.reg_dir.iterdir()):
        return status_text(version), messages.info(tr("There are no regularization pictures to remove."))
    label = tr("regularization pictures of {project} / {version}", project=version.project.name,
               version=version.name)
    ctx.workspace.move_to_trash([version.reg_dir], "reg", label)
    return status_text(version), messages.ok(tr("Moved to the trash; \"Restore\" under \"Create, copy, rename or "
                                                "delete\" at the top brings them back."))


def build(ctx: UIContext, project: Any, version: Any, trash: Any) -> RegPanel:
    """``trash``: the project bar's trash list, which "Move … to the trash" updates."""
    with gr.Accordion(tr("Regularization pictures (optional)"), open=False, elem_id="train_tools_reg"):
        gr.Markdown(tr("Pictures of the class in general (other women for a LoRA of one woman, other dogs for your "
                       "dog) keep the LoRA from turning every woman or dog into yours. Most LoRAs train well "
                       "without them; they make training slower."))
        with gr.Row():
            class_name = gr.Textbox(label=tr("Class"), placeholder=tr("e.g. woman, man, dog, 1girl"),
                                    elem_id="train_tools_reg_class", scale=3)
            repeats = gr.Number(label=tr("Repeats"), value=DEFAULT_REPEATS, precision=0,
                                elem_id="train_tools_reg_repeats", min_width=90, scale=1)
            apply = gr.Button(tr("Apply"), elem_id="train_tools_reg_apply", scale=0, min_width=90)
        with gr.Row():
            with gr.Column(scale=3, elem_id="train_tools_reg_drop_zone"):  # see dataset_panel.build
                upload = gr.UploadButton(tr("Drop regularization pictures or .zip files here, or click to choose "
                                            "them"), file_count="multiple", file_types=UPLOAD_TYPES,
                                         elem_id="train_tools_reg_upload")
            with gr.Column(scale=2):
                folder = gr.Textbox(label=tr("…or a folder on the server"), placeholder="/path/to/class/pictures",
                                    elem_id="train_tools_reg_folder")
                import_folder = gr.Button(tr("Import folder"), elem_id="train_tools_reg_import_folder")
        status = gr.Markdown(tr("Pick or create a project to start."), elem_id="train_tools_reg_status")
        message = gr.HTML("", elem_id="train_tools_reg_import_message")
        remove = gr.Button(tr("Move the regularization pictures to the trash"), variant="stop", size="sm",
                           elem_id="train_tools_reg_remove")

    def do_upload(p, v, c, n, files, progress=gr.Progress()):
        return on_import(ctx, p, v, c, n, files, "", progress) + (None,)

    def do_folder(p, v, c, n, path, progress=gr.Progress()):
        return on_import(ctx, p, v, c, n, None, path, progress)

    upload.upload(do_upload, [project, version, class_name, repeats, upload], [status, message, upload])
    import_folder.click(do_folder, [project, version, class_name, repeats, folder], [status, message])
    apply.click(lambda p, v, c, n: on_apply(ctx, p, v, c, n), [project, version, class_name, repeats],
                [status, message])
    remove.click(lambda p, v: on_remove(ctx, p, v) + (compat.update(choices=trash_choices(ctx), value=None),),
                 [project, version], [status, message, trash])
    return RegPanel(class_name, repeats, upload, folder, status, message)


__all__ = ["RegPanel", "build", "on_refresh", "on_import", "on_apply", "on_remove", "status_text"]
