"""Checkpoints: every checkpoint with epoch, step, size, time and held-out score, the suggested one (a hint, not a
verdict), the preview grid per prompt (split into pages when there are many checkpoints), per-checkpoint
galleries, and the actions Preview / Preview this checkpoint / Use this checkpoint / Keep only this one.

``lib_trainer.preview`` draws and recommends, ``lib_trainer.checkpoints.promote`` copies and prunes; this module shows and asks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import gradio as gr

from lib_trainer.common.i18n import tr
from lib_trainer.projects import ProjectError, Version
from lib_trainer.ui import charts, compat, messages
from lib_trainer.ui.context import UIContext

SEND_JS = """
(prompt) => {
    if (window.trainTools && prompt) { window.trainTools.sendToTxt2img(prompt); }
    return [];
}
"""


@dataclass
class CheckpointsPanel:
    recommendation: Any
    table: Any
    score_chart: Any
    checkpoint: Any
    grid_prompt: Any
    grids: Any
    gallery: Any
    preview_status: Any
    message: Any
    use_name: Any
    use_prompt: Any
    settings: List[Any]

    def live_outputs(self) -> List[Any]:
        """What the progress poll refreshes when checkpoints or previews change (see :func:`live`)."""
        return [self.recommendation, self.table, self.score_chart, self.checkpoint, self.grid_prompt, self.grids,
                self.gallery, self.preview_status, self.use_name]

    def refresh_outputs(self) -> List[Any]:
        return self.live_outputs() + [self.message, self.use_prompt] + self.settings


# ---- views -----------------------------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def table_markdown(version: Optional[Version], recommendation: Any = None) -> str:
    """Every checkpoint: name, epoch, step, size, time written, score; the suggested one marked."""
    if version is None:
        return ""
    checkpoints = version.checkpoints()
    if not checkpoints:
        return tr("No checkpoints yet: they appear here as training writes them (one per epoch by default).")
    scores = {s.name: s for s in (recommendation.scores if recommendation is not None else [])}
    best = recommendation.best if recommendation is not None else None
    head = [tr("Checkpoint"), tr("Epoch"), tr("Step"), tr("Size"), tr("Written"), tr("Score")]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---|---:|"]
    for c in checkpoints:
        name = messages.md_escape(c.name)
        if c.final:
            name += " " + tr("(final)")
        if c.name == best:
            name = f"**{name}** ★ " + tr("suggested")
        score = scores.get(c.name)
        lines.append("| " + " | ".join([
            name, str(c.epoch) if c.epoch is not None else "–", str(c.step) if c.step is not None else "–",
            _size(c.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(c.mtime)),
            f"{score.eval_loss:.5g}" if score is not None else "–"]) + " |")
    return "\n".join(lines)


def recommendation_html(recommendation: Any) -> str:
    if recommendation is None:
        return ""
    return messages.info(recommendation.note)


def grid_choices(version: Optional[Version]) -> List[str]:
    from lib_trainer.preview.grid import grid_files

    if version is None:
        return []
    return [tr("Prompt {n}: {prompt}", n=g.prompt_index + 1, prompt=_short(g.prompt)) for g in grid_files(version)]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def grid_items(version: Optional[Version], choice: Optional[str]) -> List[Tuple[str, str]]:
    """The chosen prompt's grid as gallery items: its pages when it has several, else the whole grid."""
    from lib_trainer.preview.grid import grid_files

    if version is None:
        return []
    grids = grid_files(version)
    if not grids:
        return []
    labels = grid_choices(version)
    grid = grids[labels.index(choice)] if choice in labels else grids[0]
    if grid.pages:
        return [(str(p), tr("page {n} of {total}", n=i + 1, total=len(grid.pages))) for i, p in enumerate(grid.pages)]
    return [(str(grid.path), tr("Prompt {n}", n=grid.prompt_index + 1))]


def checkpoint_gallery(version: Optional[Version], name: Optional[str]) -> List[Tuple[str, str]]:
    from lib_trainer.preview.gallery import checkpoint_galleries

    if version is None or not name:
        return []
    for gallery in checkpoint_galleries(version, include_reference=False):
        if gallery.name == name:
            return [(str(item.path), item.caption) for item in gallery.items]
    return []


def _recommendation(version: Optional[Version]) -> Any:
    from lib_trainer.checkpoints.recommend import recommend

    if version is None:
        return None
    try:
        return recommend(version)
    except (ProjectError, OSError, ValueError):
        return None


def live(ctx: UIContext, project: Optional[str], version_name: Optional[str], checkpoint: Optional[str],
         grid_choice: Optional[str], use_name: Optional[str] = None) -> List[Any]:
    """The parts that change while training and previews run, in :meth:`CheckpointsPanel.live_outputs` order."""
    from lib_trainer.checkpoints import promote

    version = ctx.version(project, version_name)
    rec = _recommendation(version)
    names = [c.name for c in version.checkpoints()] if version is not None else []
    picked = ctx.picked_checkpoints.get(version.key) if version is not None else None
    if picked in names:
        wanted = picked
    else:  # the suggested one, followed as training adds checkpoints
        wanted = rec.best if rec is not None and rec.best in names else (names[-1] if names else None)
    if wanted != checkpoint:
        checkpoint = wanted
        ckpt = next((c for c in version.checkpoints() if c.name == checkpoint), None) if version else None
        use_name = promote.default_name(version, ckpt) if ckpt is not None else ""
    choices = grid_choices(version)
    if grid_choice not in choices:
        grid_choice = choices[0] if choices else None
    chart = charts.score_chart(version, recommendation=rec) if version is not None and names else None
    status = ctx.previews.describe(version) if version is not None else ""
    return [recommendation_html(rec) if names else "", table_markdown(version, rec), chart,
            compat.update(choices=names, value=checkpoint), compat.update(choices=choices, value=grid_choice),
            grid_items(version, grid_choice), checkpoint_gallery(version, checkpoint),
            messages.info(status) if status else "", use_name if use_name is not None else compat.unchanged()]


def preview_settings(ctx: UIContext, version: Optional[Version]) -> List[Any]:
    """The preview settings fields: prompts (one per line), negative prompt, weights, seed, steps, CFG, size,
    sampler, the no-LoRA column. (Whether it is drawn after training is the training form's setting.)"""
    from lib_trainer.preview.cells import weight_text
    from lib_trainer.preview.config import load_config, PreviewConfig

    if version is None:
        config = PreviewConfig()
    else:
        config = load_config(version, ctx.host)
    samplers = _samplers(ctx)
    return ["\n".join(config.prompts), config.negative_prompt, ", ".join(weight_text(w) for w in config.weights),
            config.seed, config.steps, config.cfg_scale, config.width, config.height,
            compat.update(choices=samplers, value=config.sampler if config.sampler in samplers else samplers[0]),
            config.reference]


def _samplers(ctx: UIContext) -> List[str]:
    try:
        names = list(ctx.host.samplers())
    except Exception:
        names = []
    return names or ["Euler a"]


def on_refresh(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[Any, ...]:
    version = ctx.version(project, version_name)
    return tuple(live(ctx, project, version_name, None, None) + ["", ""] + preview_settings(ctx, version))


def _config_from_fields(ctx: UIContext, version: Version, values: List[Any]):
    from lib_trainer.preview.config import load_config, PreviewConfig, save_config

    prompts, negative, weights, seed, steps, cfg_scale, width, height, sampler, reference = values
    config = load_config(version, ctx.host)
    data = config.to_dict()
    data.update(prompts=[p.strip() for p in str(prompts or "").splitlines() if p.strip()] or [""],
                negative_prompt=negative or "", weights=str(weights or ""), seed=seed, steps=steps,
                cfg_scale=cfg_scale, width=width, height=height, sampler=sampler or "Euler a",
                reference=bool(reference))
    config = PreviewConfig.from_dict(data)
    save_config(version, config)
    return config


def on_preview(ctx: UIContext, project: Optional[str], version_name: Optional[str], checkpoint: Optional[str],
               only_this: bool, *settings: Any) -> str:
    """Start drawing the preview (all checkpoints, or only the selected one) in the background, in place of one
    being drawn (the automatic one after training, or an earlier Preview). "" once started: the status line above
    the grid tells its progress and outcome, where a message would outlive it."""
    from lib_trainer.preview.cells import PreviewError

    version = ctx.version(project, version_name)
    if version is None:
        return messages.error(tr("Create or pick a project first."))
    if version.busy:
        return messages.error(tr("This version is training; preview it when training has ended."))
    if not version.checkpoints():
        return messages.error(tr("There are no checkpoints yet: train first."))
    if only_this and not checkpoint:
        return messages.error(tr("Pick a checkpoint first."))
    try:
        config = _config_from_fields(ctx, version, list(settings))
        ctx.previews.start(version, [checkpoint] if only_this else None, config, origin="tab", replace=True)
    except PreviewError as exc:
        return messages.error(str(exc))
    return ""


def on_stop_preview(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> str:
    version = ctx.version(project, version_name)
    if version is None or not ctx.previews.stop(version):
        return messages.info(tr("No preview is being drawn."))
    return ""  # the status line says "Stopping…", then where it stopped


def on_pick_checkpoint(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                       checkpoint: Optional[str]) -> Tuple[Any, Any]:
    """(per-checkpoint gallery, default LoRA name) for a checkpoint picked in the dropdown."""
    from lib_trainer.checkpoints import promote

    version = ctx.version(project, version_name)
    if version is None or not checkpoint:
        return [], ""
    ctx.picked_checkpoints[version.key] = checkpoint  # kept while the polls refresh the picker
    ckpt = next((c for c in version.checkpoints() if c.name == checkpoint), None)
    return checkpoint_gallery(version, checkpoint), (promote.default_name(version, ckpt) if ckpt else "")


def on_pick_grid(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                 choice: Optional[str]) -> List[Tuple[str, str]]:
    """The grid of the prompt picked in the dropdown (kept while the polls refresh the panel)."""
    version = ctx.version(project, version_name)
    if version is not None and choice:
        ctx.picked_grids[version.key] = choice
    return grid_items(version, choice)


def on_use(ctx: UIContext, project: Optional[str], version_name: Optional[str], checkpoint: Optional[str],
           name: str, weight: Any, send: bool, overwrite: bool) -> Tuple[str, Any, str]:
    """Copy the checkpoint into the host's Lora folder; returns (message, name box, prompt to send)."""
    from lib_trainer.checkpoints import promote

    version = ctx.version(project, version_name)
    if version is None or not checkpoint:
        return messages.error(tr("Pick a checkpoint first.")), compat.unchanged(), ""
    try:
        result = promote.use_checkpoint(version, checkpoint, ctx.host, name=(name or "").strip() or None,
                                     weight=float(weight if weight is not None else promote.DEFAULT_WEIGHT),
                                     send_prompt=bool(send), overwrite=bool(overwrite))
    except promote.NameTaken as exc:
        return messages.error(str(exc)), exc.suggestion, ""
    except (ProjectError, ValueError, OSError) as exc:
        return messages.error(str(exc)), compat.unchanged(), ""
    lines = [tr("Copied to {path}. In prompts: {prompt}", path=str(result.lora_path), prompt=result.prompt)]
    if send and not result.sent:
        if getattr(ctx.host, "name", "") == "standalone":
            lines.append(tr("This app has no txt2img: copy the prompt from the box below into your WebUI."))
        else:
            lines.append(tr("If the txt2img prompt did not change, copy the prompt from the box below."))
    lines += result.warnings
    return messages.ok("\n".join(lines)), result.name, result.prompt if send else ""


def on_keep_request(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                    checkpoint: Optional[str]) -> Tuple[Any, str]:
    """Ask before moving the other checkpoints to the trash: (confirm row, question)."""
    version = ctx.version(project, version_name)
    if version is None or not checkpoint:
        return compat.update(visible=False), messages.error(tr("Pick a checkpoint first."))
    others = [c for c in version.checkpoints() if c.name != checkpoint]
    if not others:
        return compat.update(visible=False), messages.info(tr("There is no other checkpoint."))
    return compat.update(visible=True), messages.warning(tr(
        "Move the {n} other checkpoints of \"{version}\" (and their saved states and previews) to the trash, and "
        "keep only {name}?", n=len(others), version=version.key, name=checkpoint))


def on_keep_confirm(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                    checkpoint: Optional[str]) -> Tuple[Any, str]:
    from lib_trainer.checkpoints import promote

    version = ctx.version(project, version_name)
    hidden = compat.update(visible=False)
    if version is None or not checkpoint:
        return hidden, messages.error(tr("Pick a checkpoint first."))
    try:
        entry = promote.keep_only(version, checkpoint, ctx.workspace, confirm=True)
    except (ProjectError, ValueError, OSError) as exc:
        return hidden, messages.error(str(exc))
    if entry is None:
        return hidden, messages.info(tr("There is no other checkpoint."))
    ctx.forget_previews([version.path])
    return hidden, messages.ok(tr("Kept {name}; the others are in the trash (\"Restore\" at the top brings them "
                                  "back).", name=checkpoint))


# ---- layout ----------------------------------------------------------------------------------------------------
def build(ctx: UIContext, project: Any, version: Any) -> CheckpointsPanel:
    gr.Markdown(tr("### 6. Checkpoints"))
    recommendation = gr.HTML("", elem_id="train_tools_recommendation")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Markdown("", elem_id="train_tools_checkpoints_table")
        with gr.Column(scale=2):
            score_chart = compat.image_output(label=tr("Held-out score per checkpoint (a hint, not a verdict)"),
                                              elem_id="train_tools_score_chart", height=260)
    with gr.Accordion(tr("Preview settings"), open=False, elem_id="train_tools_preview_settings"):
        prompts = gr.Textbox(label=tr("Prompts (one per line; the trigger word is added)"), lines=3,
                             elem_id="train_tools_preview_prompts")
        negative = gr.Textbox(label=tr("Negative prompt"), elem_id="train_tools_preview_negative")
        with gr.Row():
            weights = gr.Textbox(label=tr("Weights"), value="0.4, 0.6, 0.8, 1", elem_id="train_tools_preview_weights")
            seed = gr.Number(label=tr("Seed (-1: random)"), value=1234, precision=0, elem_id="train_tools_preview_seed")
            steps = gr.Number(label=tr("Steps"), value=20, precision=0, elem_id="train_tools_preview_steps")
            cfg = gr.Number(label=tr("CFG scale"), value=7.0, elem_id="train_tools_preview_cfg")
        with gr.Row():
            width = gr.Number(label=tr("Width"), value=512, precision=0, elem_id="train_tools_preview_width")
            height = gr.Number(label=tr("Height"), value=512, precision=0, elem_id="train_tools_preview_height")
            sampler = gr.Dropdown(label=tr("Sampler"), choices=_samplers(ctx), value="Euler a",
                                  elem_id="train_tools_preview_sampler")
            reference = gr.Checkbox(label=tr("Column without LoRA"), value=True, elem_id="train_tools_preview_reference")
    settings = [prompts, negative, weights, seed, steps, cfg, width, height, sampler, reference]
    with gr.Row():
        run_preview = gr.Button(tr("Preview"), variant="primary", elem_id="train_tools_preview")
        stop_preview = gr.Button(tr("Stop preview"), elem_id="train_tools_preview_stop")
    preview_status = gr.HTML("", elem_id="train_tools_preview_status")
    grid_prompt = gr.Dropdown(label=tr("Grid"), choices=[], elem_id="train_tools_grid_prompt")
    grids = compat.gallery(label=tr("Preview grid: rows are checkpoints, columns are weights"), columns=4,
                           height=640, preview=True, elem_id="train_tools_grid")
    with gr.Row():
        with gr.Column(scale=2):
            checkpoint = gr.Dropdown(label=tr("Checkpoint"), choices=[], elem_id="train_tools_checkpoint")
            gallery = compat.gallery(label=tr("This checkpoint's pictures"), columns=4, height=300,
                                     elem_id="train_tools_checkpoint_gallery")
            preview_one = gr.Button(tr("Preview this checkpoint"), elem_id="train_tools_preview_one")
        with gr.Column(scale=2):
            use_name = gr.Textbox(label=tr("LoRA name"), elem_id="train_tools_use_name")
            use_weight = gr.Slider(label=tr("Weight"), minimum=0.0, maximum=2.0, step=0.05, value=0.8,
                                   elem_id="train_tools_use_weight")
            with gr.Row():
                use_send = gr.Checkbox(label=tr("Put it into the txt2img prompt"), value=True,
                                       elem_id="train_tools_use_send")
                use_overwrite = gr.Checkbox(label=tr("Replace a LoRA of this name"), value=False,
                                            elem_id="train_tools_use_overwrite")
            use = gr.Button(tr("Use this checkpoint"), variant="primary", elem_id="train_tools_use")
            use_prompt = gr.Textbox(label=tr("Prompt"), interactive=False, elem_id="train_tools_use_prompt")
            keep = gr.Button(tr("Keep only this one"), variant="stop", elem_id="train_tools_keep_only")
            with gr.Row(visible=False, elem_id="train_tools_keep_confirm_row") as keep_row:
                keep_question = gr.HTML("", elem_id="train_tools_keep_question")
                keep_yes = gr.Button(tr("Yes, move the others to the trash"), variant="stop",
                                     elem_id="train_tools_keep_confirm")
                keep_no = gr.Button(tr("Cancel"), elem_id="train_tools_keep_cancel")
    message = gr.HTML("", elem_id="train_tools_checkpoints_message")

    panel = CheckpointsPanel(recommendation, table, score_chart, checkpoint, grid_prompt, grids, gallery,
                             preview_status, message, use_name, use_prompt, settings)
    sel = [project, version]
    run_preview.click(lambda p, v, c, *s: on_preview(ctx, p, v, c, False, *s), sel + [checkpoint] + settings,
                      [message])
    preview_one.click(lambda p, v, c, *s: on_preview(ctx, p, v, c, True, *s), sel + [checkpoint] + settings,
                      [message])
    stop_preview.click(lambda p, v: on_stop_preview(ctx, p, v), sel, [message], queue=False)
    grid_prompt.input(lambda p, v, g: on_pick_grid(ctx, p, v, g), sel + [grid_prompt], [grids], queue=False)
    checkpoint.input(lambda p, v, c: on_pick_checkpoint(ctx, p, v, c), sel + [checkpoint], [gallery, use_name],
                     queue=False)
    used = use.click(lambda p, v, c, n, w, s, o: on_use(ctx, p, v, c, n, w, s, o),
                     sel + [checkpoint, use_name, use_weight, use_send, use_overwrite], [message, use_name, use_prompt])
    used.then(None, [use_prompt], None, **compat.js(SEND_JS))
    keep.click(lambda p, v, c: on_keep_request(ctx, p, v, c), sel + [checkpoint], [keep_row, keep_question],
               queue=False)
    keep_no.click(lambda: (compat.update(visible=False), ""), None, [keep_row, keep_question], queue=False)
    keep_yes.click(lambda p, v, c: on_keep_confirm(ctx, p, v, c), sel + [checkpoint], [keep_row, message]).then(
        lambda p, v: live(ctx, p, v, None, None), sel, panel.live_outputs())
    return panel


__all__ = ["CheckpointsPanel", "build", "live", "on_refresh", "on_preview", "on_stop_preview", "on_use",
           "on_pick_grid", "on_keep_request", "on_keep_confirm", "on_pick_checkpoint", "table_markdown", "grid_items",
           "checkpoint_gallery", "preview_settings", "SEND_JS"]
