"""Progress: status, step / epoch / loss / it/s / ETA, queue position, the loss chart, the latest samples, the log
tail and, on failure, the trainer's own message in red.

Everything shown is read from the version's files (``version.json`` as the job runner mirrors it, the events
file, the trainer's log, the samples folder), so a reloaded page, a second browser or a restarted WebUI shows the
same. The tab asks every few seconds with a short request (see tab.py); :func:`poll` answers "unchanged" for the
parts whose files did not change, so an idle tab costs a few ``stat`` calls.
"""
from __future__ import annotations

import html
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from lib_trainer.presets import format_duration
from lib_trainer.common.i18n import tr
from lib_trainer.projects import ProjectError, Version
from lib_trainer.ui import charts, compat, messages
from lib_trainer.ui.context import UIContext

SAMPLES_SHOWN = 8
LOG_LINES = 30
BUSY = ("queued", "running")


def status_label(status: str) -> str:
    return {
        "draft": tr("Not trained yet"), "queued": tr("Queued"), "running": tr("Training"),
        "finished": tr("Finished"), "failed": tr("Failed"), "cancelled": tr("Stopped"),
        "interrupted": tr("Interrupted"),
    }.get(status, status)


# ---- the loss series, read incrementally from the events file ------------------------------------------------
@dataclass
class _Series:
    tail: Any
    points: List[Tuple[int, float]] = field(default_factory=list)
    epochs: List[Tuple[int, int]] = field(default_factory=list)
    total_steps: Optional[int] = None
    size: int = 0
    checkpoints: int = 0  # checkpoint events read (their scores feed the checkpoints panel)


_series: Dict[str, _Series] = {}
_series_lock = threading.Lock()


def loss_series(version: Version) -> _Series:
    """The (step, loss) points of the version's latest run, reading only what was appended since last time.

    A step that does not come after the last one starts over from it (a fresh run, or a resume from an earlier
    state), so the chart shows the run that is going on.
    """
    from lib_trainer.jobs.events import EventTail

    path = version.events_path
    key = str(path)
    with _series_lock:
        series = _series.get(key)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if series is None or size < series.size:
            series = _series[key] = _Series(EventTail(path))
        series.size = size
        for event in series.tail.read():
            kind = event.get("event")
            if kind == "checkpoint":
                series.checkpoints += 1
            elif kind == "start" and isinstance(event.get("total_steps"), int):
                series.total_steps = event["total_steps"]
            elif kind == "step" and isinstance(event.get("step"), int):
                step = event["step"]
                if series.points and step <= series.points[-1][0]:
                    series.points = [p for p in series.points if p[0] < step]
                    series.epochs = [e for e in series.epochs if e[0] < step]
                loss = event.get("loss")
                if isinstance(loss, (int, float)):
                    series.points.append((step, float(loss)))
                epoch = event.get("epoch")
                if isinstance(epoch, int) and (not series.epochs or series.epochs[-1][1] != epoch):
                    series.epochs.append((step, epoch))
        return series


# ---- views -----------------------------------------------------------------------------------------------------
def _state(ctx: UIContext, version: Version) -> Dict[str, Any]:
    try:
        if ctx.runner is not None:
            return ctx.runner.status(version.project.name, version.name, events=0)
        return version.to_dict()
    except ProjectError:
        return {}


def status_html(state: Dict[str, Any]) -> str:
    """The status line with a progress bar."""
    status = str(state.get("status") or "draft")
    parts = [f"<b>{html.escape(status_label(status))}</b>"]
    if status == "queued" and state.get("position"):
        parts.append(html.escape(tr("position {n} in the queue", n=state["position"])))
    step, total = state.get("step"), state.get("total_steps")
    if isinstance(step, int) and isinstance(total, int) and total:
        parts.append(html.escape(tr("step {step} of {total}", step=step, total=total)))
    if isinstance(state.get("epoch"), int) and isinstance(state.get("epochs"), int):
        parts.append(html.escape(tr("epoch {epoch} of {epochs}", epoch=state["epoch"], epochs=state["epochs"])))
    if isinstance(state.get("loss"), (int, float)):
        parts.append(html.escape(tr("loss {loss:.4f}", loss=state["loss"])))
    if isinstance(state.get("it_per_s"), (int, float)) and status == "running":
        parts.append(html.escape(tr("{speed:.2f} it/s", speed=state["it_per_s"])))
    if isinstance(state.get("eta_s"), (int, float)) and status == "running":
        parts.append(html.escape(tr("about {time} left", time=format_duration(state["eta_s"]))))
    if status in ("cancelled", "interrupted") and state.get("resumable"):
        parts.append(html.escape(tr("can be resumed")))
    fraction = (step / total) if isinstance(step, int) and isinstance(total, int) and total else 0.0
    if status == "finished":
        fraction = 1.0
    bar = (f'<div class="train_tools_bar" style="background:#e5e7eb;border-radius:4px;height:8px;margin-top:6px">'
           f'<div style="background:#2563eb;width:{max(0.0, min(1.0, fraction)) * 100:.1f}%;height:8px;'
           f'border-radius:4px"></div></div>')
    return (f'<div class="train_tools_status" data-status="{html.escape(status)}">' + " · ".join(parts) + bar +
            "</div>")


def error_html(state: Dict[str, Any]) -> str:
    """The trainer's own message in red when the run failed (with the end of its traceback)."""
    if state.get("status") != "failed":
        warnings = state.get("warnings") or []
        return messages.warning("\n".join(str(w) for w in warnings[-3:])) if warnings else ""
    error = state.get("error") or {}
    text = str(error.get("message") or state.get("message") or tr("The trainer failed."))
    out = messages.error(text)
    tail = str(error.get("traceback_tail") or "").strip()
    if tail:
        out += (f'<details><summary>{html.escape(tr("Details"))}</summary><pre class="train_tools_traceback">'
                f"{html.escape(tail)}</pre></details>")
    return out


def samples(version: Version) -> List[Tuple[str, str]]:
    """The newest sample images (newest first), with their file names as captions."""
    folder = version.samples_dir
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and p.is_file()]
    except OSError:
        return []
    files.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    return [(str(p), p.stem) for p in files[:SAMPLES_SHOWN]]


def log_text(ctx: UIContext, version: Version, state: Dict[str, Any]) -> str:
    from lib_trainer.jobs.events import log_tail

    job = state.get("job") or {}
    offset = int(job.get("log_offset") or 0) if isinstance(job, dict) else 0
    return log_tail(version.log_path, offset, LOG_LINES)


def _stamp(path: Path) -> Tuple[int, int]:
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0


def _dir_stamp(folder: Path) -> Tuple:
    try:
        return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder)))
    except OSError:
        return ()


def button_updates(state: Dict[str, Any]) -> List[Any]:
    """(Train, Stop, Resume) interactivity for a version's state."""
    status = state.get("status") or "draft"
    busy = status in BUSY
    resumable = bool(state.get("resumable")) and status in ("cancelled", "interrupted", "failed")
    return [compat.update(interactive=not busy), compat.update(interactive=busy),
            compat.update(interactive=resumable and not busy)]


N_OUTPUTS = 8  # status, error, chart, samples, log, train, stop, resume


def poll(ctx: UIContext, project: Optional[str], version_name: Optional[str],
         seen: Optional[Dict[str, Any]]) -> Tuple[List[Any], Dict[str, Any]]:
    """Updates of the progress outputs whose sources changed since ``seen``; and the new ``seen``."""
    seen = dict(seen or {})
    version = ctx.version(project, version_name)
    key = version.key if version is not None else None
    if seen.get("key") != key:
        seen = {"key": key}
    if version is None:
        empty = [messages.info(tr("Pick or create a project to start.")), "", None, [], ""]
        return empty + button_updates({}), seen
    out: List[Any] = [compat.unchanged()] * N_OUTPUTS

    state_stamp = (_stamp(version.state_path), _stamp(ctx.workspace.root / "jobs.json"),
                   getattr(ctx.runner, "unsaved_revision", 0))  # what a full disk kept in the runner's memory
    if seen.get("state") != state_stamp:
        state = _state(ctx, version)
        seen["state"] = state_stamp
        seen["status"] = state.get("status")
        out[0] = status_html(state)
        out[1] = error_html(state)
        out[5:8] = button_updates(state)
        log_stamp = _stamp(version.log_path)
        if seen.get("log") != log_stamp:
            seen["log"] = log_stamp
            out[4] = log_text(ctx, version, state)
    elif seen.get("status") in BUSY:
        log_stamp = _stamp(version.log_path)
        if seen.get("log") != log_stamp:
            seen["log"] = log_stamp
            out[4] = log_text(ctx, version, _state(ctx, version))
    events_stamp = _stamp(version.events_path)
    if seen.get("events") != events_stamp:
        seen["events"] = events_stamp
        series = loss_series(version)
        out[2] = charts.loss_chart(series.points, epochs=series.epochs, total_steps=series.total_steps)
    samples_stamp = _dir_stamp(version.samples_dir)
    if seen.get("samples") != samples_stamp:
        seen["samples"] = samples_stamp
        out[3] = samples(version)
    return out, seen


def build(ctx: UIContext) -> Dict[str, Any]:
    """The progress outputs, in :func:`poll`'s order (the buttons come from the train panel)."""
    gr.Markdown(tr("### 5. Progress"))
    with gr.Row():
        status = gr.HTML(messages.info(tr("Pick or create a project to start.")), elem_id="train_tools_progress_status")
        poll_button = gr.Button(tr("Refresh progress"), elem_id="train_tools_poll", scale=0, min_width=140)
    error = gr.HTML("", elem_id="train_tools_progress_error")
    with gr.Row():
        chart = compat.image_output(label=tr("Loss"), elem_id="train_tools_loss_chart", height=280)
        sample_gallery = compat.gallery(label=tr("Latest samples"), columns=4, height=280,
                                        elem_id="train_tools_samples")
    with gr.Accordion(tr("Trainer log"), open=False, elem_id="train_tools_log_box"):
        log = gr.Textbox(label=tr("Last lines of the trainer's log"), lines=10, max_lines=30, interactive=False,
                         elem_id="train_tools_log")
    return {"status": status, "error": error, "chart": chart, "samples": sample_gallery, "log": log,
            "poll": poll_button}


__all__ = ["build", "poll", "status_html", "error_html", "samples", "loss_series", "button_updates",
           "status_label", "N_OUTPUTS"]
