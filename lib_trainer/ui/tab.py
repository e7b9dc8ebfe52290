"""The Train Tools tab: the project bar above three sections (Dataset, Train, Checkpoints), wired together.

``build_tab(ctx)`` returns a ``gr.Blocks`` that the WebUI's ``on_ui_tabs`` and the standalone app render. How the
parts talk:

* picking a project or a version, and every action of the project bar, refreshes every panel from the selected
  version's files in the same event (``shown`` remembers which version that is, so the change events that echo an
  action do not do it twice);
* on page load the tab selects the version that is training (else the one last picked) — so a reload finds a
  running training again — and installs the progress poller (javascript/train_tools.js);
* the poller presses the hidden-in-plain-sight "Refresh progress" button every few seconds; :func:`poll` answers
  with only what changed (status, chart, samples, log, buttons, checkpoints, previews).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from lib_trainer.common.i18n import tr
from lib_trainer.ui import (captions_panel, checkpoints_panel, compat, dataset_panel, messages, progress_panel,
                            project_bar, reg_panel, train_panel)
from lib_trainer.ui.context import UIContext

JS_FILE = Path(__file__).resolve().parents[2] / "javascript" / "train_tools.js"
CSS_FILE = Path(__file__).resolve().parents[2] / "style.css"


def install_js(poll_seconds: float) -> str:
    """The load event's JavaScript: define window.trainTools (the WebUI may have loaded it already), start the
    poller and hand it the translated words it shows."""
    try:
        source = JS_FILE.read_text(encoding="utf-8")
    except OSError:
        source = ""
    strings = json.dumps({"uploading": tr("Uploading {n} files…")}, ensure_ascii=False)
    return ("() => {\n" + source + "\nif (window.trainTools) { window.trainTools.install(" +
            str(int(max(0.5, poll_seconds) * 1000)) + ", " + strings + "); }\nreturn [];\n}")


def css() -> str:
    """The extension's style.css (the WebUI loads it by itself; the standalone app passes it to gr.Blocks)."""
    try:
        return CSS_FILE.read_text(encoding="utf-8")
    except OSError:
        return ""


def checkpoints_stamps(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[Tuple, Tuple]:
    """(what the whole checkpoints panel depends on: the checkpoint files, their score events, the grid files;
    what only the preview's progress and the per-checkpoint gallery depend on: the manifest, the preview task)."""
    version = ctx.version(project, version_name)
    if version is None:
        return (), ()

    def stamp(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return 0

    files = tuple(sorted((p.name, stamp(p)) for p in version.checkpoints_dir.glob("*.safetensors")))
    grids = tuple(sorted((p.name, stamp(p)) for p in version.previews_dir.glob("grid-*.png")))
    series = progress_panel.loss_series(version)
    return ((files, grids, series.checkpoints),
            (stamp(version.previews_dir / "manifest.json"), ctx.previews.describe(version)))


def poll(ctx: UIContext, project: Optional[str], version_name: Optional[str], seen: Optional[Dict[str, Any]],
         checkpoint: Optional[str], grid: Optional[str]) -> List[Any]:
    """Progress outputs, then the checkpoints panel's live outputs, then the new ``seen`` state."""
    progress, seen = progress_panel.poll(ctx, project, version_name, seen)
    heavy, light = checkpoints_stamps(ctx, project, version_name)
    live = [compat.unchanged()] * 9
    if seen.get("checkpoints") != heavy:
        seen["checkpoints"], seen["previews"] = heavy, light
        live = checkpoints_panel.live(ctx, project, version_name, checkpoint, grid)
    elif seen.get("previews") != light:  # a preview is drawing: its status and this checkpoint's pictures
        seen["previews"] = light
        version = ctx.version(project, version_name)
        if version is not None:
            live[6] = checkpoints_panel.checkpoint_gallery(version, checkpoint) if checkpoint else live[6]
            status = ctx.previews.describe(version)
            live[7] = messages.info(status) if status else ""
    return progress + live + [seen]


class PageStates:
    """What each open page last sent with a poll (project, version, picked checkpoint and grid, ``seen``), by gradio
    session, so that the periodic poll takes no inputs.

    Gradio 4.40's page (Forge) logs "Too many arguments provided for the endpoint." for every event with inputs: it
    looks the event's parameters up among the unnamed endpoints, which that version never lists. Events the person
    starts are few; the poll runs every two seconds (265 warnings in 9 minutes). So the poll that follows an action
    sends the page's values as before and records them here, and the periodic one reads them."""

    LIMIT = 64  # pages remembered (the oldest goes first)

    def __init__(self) -> None:
        self._pages: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, **values: Any) -> None:
        with self._lock:
            page = self._pages.pop(session, {})
            page.update(values)
            self._pages[session] = page
            while len(self._pages) > self.LIMIT:
                self._pages.popitem(last=False)

    def get(self, session: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            page = self._pages.get(session)
            return dict(page) if page is not None else None


def session_of(request: Any) -> str:
    return str(getattr(request, "session_hash", None) or "")


def poll_recorded(ctx: UIContext, pages: PageStates, session: str) -> List[Any]:
    """The periodic poll: :func:`poll` for the page's recorded values (without the ``seen`` output, kept here);
    nothing changes for a page that has sent none yet. The checkpoint and grid picked since are the person's."""
    page = pages.get(session)
    if page is None or "project" not in page:
        return [compat.unchanged()] * (8 + 9)
    project, version = page["project"], page["version"]
    key = f"{project}/{version}"
    checkpoint = ctx.picked_checkpoints.get(key, page.get("checkpoint"))
    grid = ctx.picked_grids.get(key, page.get("grid"))
    out = poll(ctx, project, version, page.get("seen"), checkpoint, grid)
    pages.put(session, seen=out[-1])
    return out[:-1]


def on_load(ctx: UIContext) -> Tuple[Any, Any]:
    project, version = ctx.initial_selection()
    return (compat.update(choices=ctx.project_names(), value=project),
            compat.update(choices=ctx.version_names(project), value=version))


def build_tab(ctx: UIContext) -> gr.Blocks:
    """The whole tab as a Blocks (render it inside the WebUI's tabs, or launch it as the standalone app)."""
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Column(elem_id="train_tools_root"):
            bar = project_bar.build(ctx)
            project, version = bar.project, bar.version
            with gr.Tabs(elem_id="train_tools_sections"):
                with gr.Tab(tr("Dataset"), id="train_tools_dataset_tab", elem_id="train_tools_dataset_tab"):
                    dataset = dataset_panel.build(ctx, project, version)
                    reg = reg_panel.build(ctx, project, version, bar.trash)
                    captions = captions_panel.build(ctx, project, version)
                with gr.Tab(tr("Train"), id="train_tools_train_tab", elem_id="train_tools_train_tab"):
                    train = train_panel.build(ctx, project, version)
                    progress = progress_panel.build(ctx)
                with gr.Tab(tr("Checkpoints"), id="train_tools_checkpoints_tab",
                            elem_id="train_tools_checkpoints_tab"):
                    checkpoints = checkpoints_panel.build(ctx, project, version)
        seen = gr.State({})
        shown = gr.State(None)  # the [project, version] whose files the panels show

        panel_outputs = (dataset.refresh_outputs() + reg.refresh_outputs() + captions.refresh_outputs() +
                         train.refresh_outputs() + checkpoints.refresh_outputs())
        all_outputs = panel_outputs + [seen, shown]
        poll_inputs = [project, version, seen, checkpoints.checkpoint, checkpoints.grid_prompt]
        poll_outputs = ([progress["status"], progress["error"], progress["chart"], progress["samples"],
                         progress["log"], train.train, train.stop, train.resume] + checkpoints.live_outputs() + [seen])

        def refresh_all(p, v, s, now, force: bool = True) -> List[Any]:
            """Every panel from the version's files (and a fresh ``seen``, so the next poll sends everything), or
            nothing when they show that version already and ``force`` is off."""
            if not force and now == [p, v]:
                return [compat.unchanged()] * len(panel_outputs) + [s, now]
            ctx.remember(p, v)
            return (list(dataset_panel.on_refresh(ctx, p, v)) + list(reg_panel.on_refresh(ctx, p, v)) +
                    list(captions_panel.on_refresh(ctx, p, v)) + list(train_panel.on_refresh(ctx, p, v)) +
                    list(checkpoints_panel.on_refresh(ctx, p, v)) + [{}, [p, v]])

        pages = PageStates()

        def do_poll(p, v, s, c, g, request: gr.Request = None):
            """The poll that follows an action: the page's own values (recorded for the periodic poll)."""
            session = session_of(request)
            pages.put(session, project=p, version=v, checkpoint=c, grid=g)
            out = poll(ctx, p, v, s, c, g)
            pages.put(session, seen=out[-1])
            return out

        def periodic_poll(request: gr.Request = None):
            return poll_recorded(ctx, pages, session_of(request))

        # What changes the selection refreshes every panel in the same event: a separate refresh event could
        # answer after an upload sent meanwhile and put back the report of before it.
        for action in bar.actions:
            def run(*args, _action=action):
                n = len(_action.inputs)
                updates = list(_action.fn(*args[:n]))
                s, now = args[n:]
                selected = _action.selected(args[:n], tuple(updates))
                if selected is None:
                    return updates + [compat.unchanged()] * len(panel_outputs) + [s, now]
                return updates + refresh_all(selected[0], selected[1], s, now, _action.force)

            hidden = {} if action.force else {"show_progress": compat.HIDDEN}  # a change event: mostly an echo
            action.listener(run, action.inputs + [seen, shown], action.outputs + all_outputs, **hidden).then(
                do_poll, poll_inputs, poll_outputs, show_progress=compat.HIDDEN)
        version.change(lambda p, v, s, now: refresh_all(p, v, s, now, force=False), [project, version, seen, shown],
                       all_outputs, show_progress=compat.HIDDEN).then(do_poll, poll_inputs, poll_outputs,
                                                                      show_progress=compat.HIDDEN)
        progress["poll"].click(periodic_poll, None, poll_outputs[:-1], queue=False, show_progress=compat.HIDDEN)

        # What one panel changes, the others show.
        for event in dataset.import_done:
            event.then(lambda p, v: captions_panel.on_refresh(ctx, p, v), [project, version],
                       captions.refresh_outputs()).then(
                lambda p, v: train_panel.on_refresh(ctx, p, v), [project, version], train.refresh_outputs())
        bar.follow_pictures(ctx, dataset.import_done)  # "Next: add pictures" goes once there are pictures
        dataset.follow_captions(ctx, project, version, captions.edited)  # the report counts the captions
        for event in train.started:
            event.then(do_poll, poll_inputs, poll_outputs, show_progress=compat.HIDDEN)
        captions.trigger_set.then(lambda p, v: train_panel.on_refresh(ctx, p, v), [project, version],
                                  train.refresh_outputs())

        tab.load(lambda: on_load(ctx), None, [project, version])
        tab.load(None, None, None, **compat.js(install_js(ctx.settings.poll_seconds)))
    return tab


__all__ = ["build_tab", "poll", "poll_recorded", "PageStates", "session_of", "on_load", "install_js", "css", "checkpoints_stamps"]
