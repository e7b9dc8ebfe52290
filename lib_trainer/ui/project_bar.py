"""The project / version bar: pick, create, clone, rename, delete (to the trash) and restore.

The callbacks are plain functions of the context and the selected names; they return gradio updates, so the
tests call them directly. Every action that can change the selection is handed to tab.py as a
:class:`SelectionAction`, which runs it and refreshes every panel in the same event: a new project's "v1" fires no
change of the version dropdown, and a separate refresh could answer after an upload sent right away and wipe its
message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import gradio as gr

from lib_trainer.common.i18n import tr
from lib_trainer.projects import ProjectError
from lib_trainer.ui import compat, messages
from lib_trainer.ui.context import UIContext

Updates = Tuple[Any, ...]


Selected = Optional[Tuple[Optional[str], Optional[str]]]


def selection_after(inputs: Tuple[Any, ...], updates: Updates) -> Selected:
    """The (project, version) that updates of (project, version, …) select; None when they select nothing (the
    updates carry no value, e.g. after an error)."""
    if not any(isinstance(u, dict) and "value" in u for u in updates[:2]):
        return None
    return tuple(u.get("value") if isinstance(u, dict) else u for u in updates[:2])  # type: ignore[return-value]


@dataclass
class SelectionAction:
    """An event of the bar after which the selection may be new: ``fn(*inputs)`` returns updates for ``outputs``;
    ``selected(inputs, updates)`` says what they select (by default the values of the first two outputs, the
    project and the version dropdowns). ``force``: refresh the panels even when that selection is already shown."""
    listener: Callable[..., Any]
    fn: Callable[..., Updates]
    inputs: List[Any]
    outputs: List[Any]
    force: bool = True
    selected: Callable[[Tuple[Any, ...], Updates], Selected] = selection_after


@dataclass
class ProjectBar:
    project: Any
    version: Any
    refresh: Any
    message: Any
    new_project: Any
    new_version: Any
    rename_to: Any
    confirm_row: Any
    confirm_text: Any
    pending: Any
    trash: Any
    #: What can change the selection; tab.py wires each with the refresh of every panel.
    actions: List[SelectionAction] = field(default_factory=list)
    #: gr.State: what the message tells of (message_about), so that it goes when that changes.
    about: Any = None

    def follow_pictures(self, ctx: UIContext, events: List[Any]) -> None:
        """After each of ``events`` (the dataset's imports), a message about an empty version goes once the
        version has pictures."""
        for event in events:
            event.then(lambda p, v, a: on_pictures_changed(ctx, p, v, a), [self.project, self.version, self.about],
                       [self.message, self.about], queue=False, show_progress=compat.HIDDEN)


def next_version_name(existing: List[str]) -> str:
    """``v<N+1>`` after the highest ``v<N>`` in use (``v1`` for none)."""
    numbers = [int(m.group(1)) for name in existing if (m := re.fullmatch(r"[vV](\d+)", name))]
    n = max(numbers, default=len(existing)) + 1
    while f"v{n}" in existing:
        n += 1
    return f"v{n}"


def _selection(ctx: UIContext, project: Optional[str], version: Optional[str], message: str) -> Updates:
    """Updates of (project dropdown, version dropdown, message) for a selection."""
    projects = ctx.project_names()
    if project not in projects:
        project = projects[0] if projects else None
    versions = ctx.version_names(project)
    if version not in versions:
        version = versions[-1] if versions else None
    return (compat.update(choices=projects, value=project), compat.update(choices=versions, value=version),
            message)


def message_about(updates: Updates, until_pictures: bool = False) -> Any:
    """What the message among an action's updates (project, version, message, …) tells of: the selection it leaves
    (None when it selects nothing, e.g. after an error: such a message goes at the next change of the selection),
    and whether it holds only until the version has pictures ("Next: add pictures"); None for no message."""
    if not isinstance(updates[2], str):
        return compat.unchanged()
    if not updates[2]:
        return None
    return {"selection": list(selection_after((), updates) or ()), "until_pictures": until_pictures}


def on_selection_shown(project: Optional[str], version: Optional[str], about: Any) -> Updates:
    """(message, about) when the selection is (project, version): the message goes when it told of another."""
    if not about or about.get("selection") == [project, version]:
        return compat.unchanged(), compat.unchanged()
    return "", None


def on_pictures_changed(ctx: UIContext, project: Optional[str], version: Optional[str], about: Any) -> Updates:
    """(message, about) after an import: a message that holds until the version has pictures goes once it has."""
    selected = ctx.version(project, version)
    if not about or not about.get("until_pictures") or selected is None or not selected.source_dir.is_dir() or \
            not any(selected.source_dir.iterdir()):
        return compat.unchanged(), compat.unchanged()
    return "", None


def trash_kind(kind: str) -> str:
    """A trash entry's kind as shown (the entry is found again by its id, the label's first part)."""
    return {"project": tr("Project"), "version": tr("Version"), "files": tr("Files"),
            "reg": tr("Regularization pictures")}.get(kind, kind)


def trash_choices(ctx: UIContext) -> List[str]:
    return [f"{e.id} · {trash_kind(e.kind)} · {e.label}" for e in ctx.workspace.trash()]


def on_refresh(ctx: UIContext, project: Optional[str], version: Optional[str]) -> Updates:
    return _selection(ctx, project, version, "") + (compat.update(choices=trash_choices(ctx), value=None),)


def on_project_change(ctx: UIContext, project: Optional[str], version: Optional[str]) -> Any:
    """The version dropdown for a newly picked project (keeps the version name when that project has it)."""
    versions = ctx.version_names(project)
    if version not in versions:
        version = versions[-1] if versions else None
    return compat.update(choices=versions, value=version)


def on_create_project(ctx: UIContext, name: str) -> Updates:
    try:
        project = ctx.workspace.create_project(name or "")
    except (ProjectError, ValueError) as exc:
        return compat.unchanged(), compat.unchanged(), messages.error(str(exc)), compat.unchanged()
    version = project.versions()[0].name
    ctx.remember(project.name, version)
    return _selection(ctx, project.name, version, messages.ok(
        tr("Created project \"{project}\" with version \"{version}\". Next: add pictures below.",
           project=project.name, version=version))) + ("",)


def on_create_version(ctx: UIContext, project: Optional[str], version: Optional[str], name: str,
                      clone: bool) -> Updates:
    if not project:
        return compat.unchanged(), compat.unchanged(), messages.error(tr("Create or pick a project first.")), \
            compat.unchanged()
    try:
        p = ctx.workspace.project(project)
        name = (name or "").strip() or next_version_name([v.name for v in p.versions()])
        if clone:
            if not version:
                raise ProjectError(tr("Pick the version to copy first."))
            created = p.create_version(name, from_version=version)
            text = tr("Created version \"{version}\" from \"{source}\" (pictures, captions and settings copied; no "
                      "checkpoints).", version=created.name, source=version)
        else:
            created = p.create_version(name)
            text = tr("Created an empty version \"{version}\".", version=created.name)
    except (ProjectError, ValueError) as exc:
        return compat.unchanged(), compat.unchanged(), messages.error(str(exc)), compat.unchanged()
    ctx.remember(project, created.name)
    return _selection(ctx, project, created.name, messages.ok(text)) + ("",)


def on_rename(ctx: UIContext, kind: str, project: Optional[str], version: Optional[str], new_name: str) -> Updates:
    try:
        if not project or (kind == "version" and not version):
            raise ProjectError(tr("Pick what to rename first."))
        before = _version_dirs(ctx, project, version if kind == "version" else None)
        if kind == "project":
            renamed = ctx.workspace.rename_project(project, new_name or "")
            project, text = renamed.name, tr("Renamed the project to \"{name}\".", name=renamed.name)
        else:
            renamed_v = ctx.workspace.project(project).rename_version(version, new_name or "")
            version, text = renamed_v.name, tr("Renamed the version to \"{name}\".", name=renamed_v.name)
    except (ProjectError, ValueError) as exc:
        return compat.unchanged(), compat.unchanged(), messages.error(str(exc)), compat.unchanged()
    ctx.forget_previews(before)  # staged under the old path's name
    ctx.remember(project, version)
    return _selection(ctx, project, version, messages.ok(text)) + ("",)


def _version_dirs(ctx: UIContext, project: str, version: Optional[str] = None) -> List[Any]:
    """The folder of one version, or of every version of the project."""
    try:
        p = ctx.workspace.project(project)
        return [v.path for v in p.versions() if version is None or v.name == version]
    except (ProjectError, ValueError):
        return []


def on_delete_request(kind: str, project: Optional[str], version: Optional[str]) -> Updates:
    """Ask before deleting: (confirm row, its question, the pending action, message)."""
    if not project or (kind == "version" and not version):
        return compat.update(visible=False), "", None, messages.error(tr("Pick what to delete first."))
    if kind == "project":
        question = tr("Move project \"{project}\" with all its versions to the trash?", project=project)
    else:
        question = tr("Move version \"{version}\" of \"{project}\" to the trash?", version=version, project=project)
    return compat.update(visible=True), messages.warning(question), [kind, project, version], ""


def on_delete_confirm(ctx: UIContext, pending: Any) -> Updates:
    """Do the pending delete: (project, version, message, confirm row, pending, trash choices)."""
    hidden = compat.update(visible=False)
    if not pending:
        return compat.unchanged(), compat.unchanged(), "", hidden, None, compat.unchanged()
    kind, project, version = pending
    try:
        gone = _version_dirs(ctx, project, version if kind == "version" else None)
        if kind == "project":
            entry = ctx.workspace.delete_project(project)
            project, version = None, None
        else:
            entry = ctx.workspace.project(project).delete_version(version)
            version = None
        text = tr("Moved \"{label}\" to the trash; \"Restore\" below brings it back.", label=entry.label)
        msg = messages.ok(text)
        ctx.forget_previews(gone)
    except (ProjectError, ValueError) as exc:
        msg = messages.error(str(exc))
    p_upd, v_upd, msg = _selection(ctx, project, version, msg)
    return p_upd, v_upd, msg, hidden, None, compat.update(choices=trash_choices(ctx), value=None)


def on_delete_cancel() -> Updates:
    return compat.update(visible=False), None, ""


def on_restore(ctx: UIContext, choice: Optional[str], project: Optional[str], version: Optional[str]) -> Updates:
    if not choice:
        return compat.unchanged(), compat.unchanged(), messages.error(tr("Pick a trash entry to restore.")), \
            compat.unchanged()
    entry_id = choice.split(" · ", 1)[0]
    try:
        restored = ctx.workspace.restore(entry_id)
    except (ProjectError, ValueError) as exc:
        return compat.unchanged(), compat.unchanged(), messages.error(str(exc)), compat.unchanged()
    # A restored project or version becomes the selection.
    path = restored[0] if restored else None
    if path is not None and path.parent.name == "versions":
        project, version = path.parent.parent.name, path.name
    elif path is not None and path.parent == ctx.workspace.projects_dir:
        project, version = path.name, None
    msg = messages.ok(tr("Restored from the trash."))
    return _selection(ctx, project, version, msg) + (compat.update(choices=trash_choices(ctx), value=None),)


def build(ctx: UIContext) -> ProjectBar:
    with gr.Row(elem_id="train_tools_project_bar"):
        project = gr.Dropdown(label=tr("Project"), choices=ctx.project_names(), value=None,
                              elem_id="train_tools_project", interactive=True, scale=3)
        version = gr.Dropdown(label=tr("Version"), choices=[], value=None, elem_id="train_tools_version",
                              interactive=True, scale=2)
        refresh = gr.Button(tr("Refresh"), elem_id="train_tools_refresh_projects", scale=0, min_width=90)
    with gr.Accordion(tr("Create, copy, rename or delete"), open=not ctx.project_names(),
                      elem_id="train_tools_manage"):
        with gr.Row():
            new_project = gr.Textbox(label=tr("New project name"), placeholder=tr("any name, e.g. 可爱的狗 or cute dog"),
                                     elem_id="train_tools_new_project_name", scale=3)
            create_project = gr.Button(tr("Create project"), variant="primary", elem_id="train_tools_create_project",
                                       scale=1)
        with gr.Row():
            new_version = gr.Textbox(label=tr("New version name"), placeholder=tr("empty: the next free v1, v2, …"),
                                     elem_id="train_tools_new_version_name", scale=3)
            create_version = gr.Button(tr("New empty version"), elem_id="train_tools_create_version", scale=1)
            clone_version = gr.Button(tr("New version from this one"), elem_id="train_tools_clone_version", scale=1)
        with gr.Row():
            rename_to = gr.Textbox(label=tr("New name"), elem_id="train_tools_rename_to", scale=3)
            rename_project = gr.Button(tr("Rename project"), elem_id="train_tools_rename_project", scale=1)
            rename_version = gr.Button(tr("Rename version"), elem_id="train_tools_rename_version", scale=1)
        with gr.Row():
            delete_project = gr.Button(tr("Delete project"), variant="stop", elem_id="train_tools_delete_project")
            delete_version = gr.Button(tr("Delete version"), variant="stop", elem_id="train_tools_delete_version")
        with gr.Row(visible=False, elem_id="train_tools_delete_confirm_row") as confirm_row:
            confirm_text = gr.HTML("", elem_id="train_tools_delete_question")
            confirm = gr.Button(tr("Yes, move to the trash"), variant="stop", elem_id="train_tools_delete_confirm")
            cancel = gr.Button(tr("Cancel"), elem_id="train_tools_delete_cancel")
        with gr.Row():
            trash = gr.Dropdown(label=tr("Trash"), choices=trash_choices(ctx), value=None,
                                elem_id="train_tools_trash", scale=3)
            restore = gr.Button(tr("Restore"), elem_id="train_tools_restore", scale=1)
    message = gr.HTML("", elem_id="train_tools_project_message")
    pending = gr.State(None)
    about = gr.State(None)  # message_about of the message

    bar = ProjectBar(project, version, refresh, message, new_project, new_version, rename_to, confirm_row,
                     confirm_text, pending, trash, about=about)
    selection = [project, version, message]

    def action(listener, fn, inputs, outputs, until_pictures=False):
        def told(*args):
            updates = tuple(fn(*args))
            return updates + (message_about(updates, until_pictures),)

        bar.actions.append(SelectionAction(listener, told, inputs, outputs + [about]))

    # Picking a project; also fired by the actions below that set it, whose panels are then shown already.
    bar.actions.append(SelectionAction(project.change, lambda p, v: (on_project_change(ctx, p, v),),
                                       [project, version], [version], force=False,
                                       selected=lambda args, updates: (args[0], updates[0].get("value"))))
    action(refresh.click, lambda p, v: on_refresh(ctx, p, v), [project, version], selection + [trash])
    action(create_project.click, lambda n: on_create_project(ctx, n), [new_project], selection + [new_project],
           until_pictures=True)
    action(create_version.click, lambda p, v, n: on_create_version(ctx, p, v, n, False),
           [project, version, new_version], selection + [new_version], until_pictures=True)
    action(clone_version.click, lambda p, v, n: on_create_version(ctx, p, v, n, True),
           [project, version, new_version], selection + [new_version])
    action(rename_project.click, lambda p, v, n: on_rename(ctx, "project", p, v, n),
           [project, version, rename_to], selection + [rename_to])
    action(rename_version.click, lambda p, v, n: on_rename(ctx, "version", p, v, n),
           [project, version, rename_to], selection + [rename_to])
    action(confirm.click, lambda pend: on_delete_confirm(ctx, pend), [pending],
           selection + [confirm_row, pending, trash])
    action(restore.click, lambda t, p, v: on_restore(ctx, t, p, v), [trash, project, version], selection + [trash])

    delete_project.click(lambda p, v: on_delete_request("project", p, v), [project, version],
                         [confirm_row, confirm_text, pending, message], queue=False)
    delete_version.click(lambda p, v: on_delete_request("version", p, v), [project, version],
                         [confirm_row, confirm_text, pending, message], queue=False)
    cancel.click(on_delete_cancel, None, [confirm_row, pending, message], queue=False)
    # A message about another selection goes when the person picks one (the actions' own selections come with
    # their own message; "input" is the person's pick only, "change" also echoes what an action set).
    for picked in (project, version):
        picked.input(on_selection_shown, [project, version, about], [message, about], queue=False,
                     show_progress=compat.HIDDEN)
    return bar


__all__ = ["ProjectBar", "SelectionAction", "selection_after", "build", "next_version_name", "on_create_project",
           "on_create_version", "on_rename", "on_delete_request", "on_delete_confirm", "on_restore",
           "on_project_change", "on_refresh", "trash_choices", "message_about", "on_selection_shown",
           "on_pictures_changed"]
