"""Train: base model, preset × VRAM tier, the form (common fields in view, the rest under "Advanced"), the
estimate, and Train / Stop / Resume.

The preset and tier fill the form (``presets.preset_values``); the person's edits are the overrides of
``presets.build_config``; ``presets.check`` runs before a job is queued and each problem is shown beside its field.
The form is saved in the version's settings, so a reload shows it again.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gradio as gr

from lib_trainer import presets
from lib_trainer.common.cuda import cuda_available
from lib_trainer.common.i18n import tr
from lib_trainer.projects import ProjectError, Version
from lib_trainer.ui import compat, messages, train_fields, version_settings
from lib_trainer.ui.context import UIContext

PRESET_CHOICES = compat.Choices(presets.PRESETS, presets.preset_label)
VRAM_CHOICES = compat.Choices(presets.VRAM_TIERS, lambda n: tr("{n} GB VRAM", n=n))
COMMON_KEYS = tuple(f.key for f in train_fields.FIELDS if not f.advanced)
ADVANCED_KEYS = tuple(f.key for f in train_fields.FIELDS if f.advanced)
#: Every field shows its own problems beside it; the dataset's and the rest ("config") are shown by the buttons.
ERROR_KEYS = ("pretrained_model_name_or_path",) + train_fields.KEYS + ("dataset", "config")


@dataclass
class TrainPanel:
    base_model: Any
    preset: Any
    vram: Any
    fields: List[Any]
    errors: Dict[str, Any]
    estimate: Any
    message: Any
    train: Any
    stop: Any
    resume: Any
    advanced: Any = None
    started: List[Any] = field(default_factory=list)  # events after which the progress panel refreshes

    def error_outputs(self) -> List[Any]:
        return [self.errors[k] for k in ERROR_KEYS]

    def train_outputs(self) -> List[Any]:
        """What Train answers: its message, every field's problems, and "Advanced" opened when one is there."""
        return [self.message] + self.error_outputs() + [self.advanced]

    def refresh_outputs(self) -> List[Any]:
        return [self.base_model, self.preset, self.vram] + self.fields + [self.estimate, self.message] + \
            self.error_outputs()


# ---- logic -----------------------------------------------------------------------------------------------------
def checkpoint_titles(ctx: UIContext, refresh: bool = False) -> List[str]:
    try:
        return [c.title for c in ctx.host.checkpoints(refresh=refresh)]
    except Exception:
        return []


def resolve_checkpoint(ctx: UIContext, title: Optional[str]):
    """The host's CheckpointInfo for a dropdown title (or a path), None when it is not listed."""
    if not title:
        return None
    try:
        listing = ctx.host.checkpoints()
    except Exception:
        return None
    return next((c for c in listing if title in (c.title, c.path)), None)


def _arch(info: Any) -> str:
    arch = getattr(info, "arch", None)
    return arch if arch in presets.ARCHES else "sd1"


def _native(info: Any) -> Optional[int]:
    """The base model's own resolution when the host knows it (a small demo model), else None."""
    value = getattr(info, "resolution", None)
    return int(value) if value else None


def preset_form(preset: str, vram: int, arch: str, keep: Optional[Dict[str, Any]] = None,
                native_resolution: Optional[int] = None) -> Dict[str, Any]:
    """The form a preset and tier fill in on this machine for this base model, keeping the tab's own fields from
    ``keep``."""
    form = train_fields.form_from_values(presets.preset_values(preset, vram, arch, cuda=cuda_available(),
                                                               native_resolution=native_resolution))
    keep = keep or {}
    for key in ("trigger", "sample_prompt", "auto_preview", "sample_every_n_epochs", "eval_holdout_images"):
        if key in keep and keep[key] is not None:
            form[key] = keep[key]
    if keep.get("keep_tokens"):
        form["keep_tokens"] = max(int(form.get("keep_tokens") or 0), int(keep["keep_tokens"]))
    return form


def stored_train(version: Optional[Version]) -> Dict[str, Any]:
    return version_settings.get(version, "train", {}) or {}


def load_form(ctx: UIContext, version: Optional[Version]) -> Tuple[Optional[str], str, int, Dict[str, Any]]:
    """(base model title, preset, VRAM tier, form) of a version: what was saved, else the defaults."""
    stored = stored_train(version)
    preset = stored.get("preset") if stored.get("preset") in presets.PRESETS else ctx.settings.default_preset
    if preset not in presets.PRESETS:
        preset = presets.PRESETS[0]
    vram = stored.get("vram") if stored.get("vram") in presets.VRAM_TIERS else ctx.settings.default_vram_gb
    if vram not in presets.VRAM_TIERS:
        vram = 8
    titles = checkpoint_titles(ctx)
    base = None
    for wanted in (stored.get("base_model"), stored.get("base_title")):
        info = resolve_checkpoint(ctx, wanted)
        if info is not None:
            base = info.title
            break
    if base is None and titles:
        base = titles[0]
    info = resolve_checkpoint(ctx, base)
    saved = dict(stored.get("fields") or {})
    form = preset_form(preset, vram, _arch(info), native_resolution=_native(info))
    form.update({k: v for k, v in saved.items() if k in train_fields.KEYS and v is not None})
    form["trigger"] = version_settings.trigger_word(version)
    auto = version_settings.get(version, "auto_preview", None)
    form["auto_preview"] = ctx.settings.auto_preview if auto is None else bool(auto)
    return base, preset, vram, form


def _field_updates(form: Dict[str, Any]) -> List[Any]:
    values = []
    for f in train_fields.FIELDS:
        value = form.get(f.key)
        if f.kind == "choice" and value is not None:
            value = train_fields.choice_label(f.key, value)
        values.append(value)
    return values


def _no_errors() -> List[str]:
    return ["" for _ in ERROR_KEYS]


def on_refresh(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[Any, ...]:
    version = ctx.version(project, version_name)
    base, preset, vram, form = load_form(ctx, version)
    titles = checkpoint_titles(ctx)
    estimate = estimate_text(ctx, version, base, preset, vram, form)
    return tuple([compat.update(choices=titles, value=base), PRESET_CHOICES.label(preset), VRAM_CHOICES.label(vram)]
                 + _field_updates(form) + [estimate, ""] + _no_errors())


def _form(values: Sequence[Any]) -> Dict[str, Any]:
    form = train_fields.form_to_dict(values)
    for f in train_fields.FIELDS:
        if f.kind == "choice" and f.key in form:
            form[f.key] = train_fields.choice_value(f.key, form[f.key])
    if form.get("max_token_length") not in (None, ""):
        form["max_token_length"] = int(form["max_token_length"])
    return form


def first_caption(version: Version) -> str:
    from lib_trainer.dataset.captions.caption_set import CaptionSet
    from lib_trainer.dataset.captions.tags import join_tags

    captions = CaptionSet(version.train_dir)
    for tags in captions.captions().values():
        if tags:
            return join_tags(tags)
    return version_settings.trigger_word(version)


def make_config(ctx: UIContext, version: Version, base_title: Optional[str], preset: str, vram: int,
                form: Dict[str, Any]):
    """The version's full TrainConfig from the form, and the base model's architecture."""
    info = resolve_checkpoint(ctx, base_title)
    arch = _arch(info)
    overrides = train_fields.overrides_from_form(form)
    prompt = (form.get("sample_prompt") or "").strip()
    if not prompt and overrides.get("sample_every_n_epochs"):
        prompt = first_caption(version)
    if not overrides.get("sample_every_n_epochs"):
        prompt = ""
    cfg = presets.build_config(presets.VersionPaths.of(version), info.path if info else "", arch, preset,
                               vram, overrides, sample_prompt=prompt or None, native_resolution=_native(info))
    return cfg, arch


def estimate_text(ctx: UIContext, version: Optional[Version], base_title: Optional[str], preset: str, vram: int,
                  form: Dict[str, Any]) -> str:
    if version is None:
        return ""
    try:
        cfg, arch = make_config(ctx, version, base_title, preset, vram, form)
        speed, batch = presets.last_speed(version.read_events())
        est = presets.estimate(cfg, arch, speed, batch)
    except Exception as exc:  # a half-typed form: say what is wrong instead of an estimate
        return messages.md_escape(tr("No estimate yet: {error}", error=str(exc)))
    if not est.uses_per_epoch:
        return tr("No estimate yet: preprocess the pictures first.")
    return tr("**Estimate:** {text}", text=presets.describe_estimate(est))


def save_form(ctx: UIContext, version: Version, base_title: Optional[str], preset: str, vram: int,
              form: Dict[str, Any]) -> None:
    info = resolve_checkpoint(ctx, base_title)
    fields = {k: v for k, v in form.items() if k not in ("trigger", "auto_preview")}
    train = stored_train(version)
    train.update(preset=preset, vram=vram, base_model=info.path if info else None,
                 base_title=info.title if info else base_title, fields=fields)
    version_settings.put(version, train=train, auto_preview=bool(form.get("auto_preview")))


def _choices(preset_label: Any, vram_label: Any) -> Tuple[str, int]:
    preset = PRESET_CHOICES.value(preset_label, presets.PRESETS[0])
    vram = VRAM_CHOICES.value(vram_label, 8)
    return preset, int(vram)


def on_preset(ctx: UIContext, project: Optional[str], version_name: Optional[str], base_title: Optional[str],
              preset_label: Any, vram_label: Any, *values: Any) -> Tuple[Any, ...]:
    """Fill the form from the chosen preset, tier and base model; returns the fields and the estimate."""
    version = ctx.version(project, version_name)
    preset, vram = _choices(preset_label, vram_label)
    current = _form(values)
    info = resolve_checkpoint(ctx, base_title)
    form = preset_form(preset, vram, _arch(info), keep=current, native_resolution=_native(info))
    if version is not None:
        save_form(ctx, version, base_title, preset, vram, form)
    return tuple(_field_updates(form) + [estimate_text(ctx, version, base_title, preset, vram, form)])


def on_change(ctx: UIContext, project: Optional[str], version_name: Optional[str], base_title: Optional[str],
              preset_label: Any, vram_label: Any, *values: Any) -> str:
    """A field changed: save the form and show the new estimate."""
    version = ctx.version(project, version_name)
    if version is None:
        return ""
    preset, vram = _choices(preset_label, vram_label)
    form = _form(values)
    try:
        save_form(ctx, version, base_title, preset, vram, form)
    except ProjectError:
        return ""
    return estimate_text(ctx, version, base_title, preset, vram, form)


def field_label(key: str) -> str:
    if key == "pretrained_model_name_or_path":
        return tr("Base model")
    f = train_fields.BY_KEY.get(key)
    return f.label() if f else key


def problems_for(ctx: UIContext, version: Version, base_title: Optional[str], preset: str, vram: int,
                 form: Dict[str, Any]):
    """(config or None, [Problem]) — everything that would stop the run, before it is queued."""
    try:
        cfg, _arch_name = make_config(ctx, version, base_title, preset, vram, form)
    except Exception as exc:
        return None, [presets.Problem("config", str(exc))]
    problems = list(presets.check(cfg))
    if not base_title or resolve_checkpoint(ctx, base_title) is None:
        problems = [p for p in problems if p.field != "pretrained_model_name_or_path"]
        problems.insert(0, presets.Problem("pretrained_model_name_or_path", tr("Choose a base model.")))
    if cfg.optimizer_type.lower() == "adamw8bit" and not cuda_available():
        problems.append(presets.Problem("optimizer_type", tr(
            "AdamW8bit needs an NVIDIA GPU; this machine has none. Choose AdamW.")))
    return cfg, problems


def in_words(message: str) -> str:
    """A message with the config keys it names replaced by the labels of their fields ("min_bucket_reso" →
    "Smallest bucket side …"): the person sees labels, never keys."""
    for f in sorted(train_fields.FIELDS, key=lambda f: -len(f.key)):
        message = re.sub(rf"(?<![\w\"]){re.escape(f.key)}(?![\w])", f"\"{f.label()}\"", message)
    return message


def error_updates(problems: Sequence[Any]) -> List[str]:
    by_key: Dict[str, List[str]] = {k: [] for k in ERROR_KEYS}
    for p in problems:
        if p.field in by_key:
            by_key[p.field].append(in_words(p.message))
        else:
            by_key["config"].append(f"{field_label(p.field)}: {in_words(p.message)}")
    return [messages.error("\n".join(by_key[k])) if by_key[k] else "" for k in ERROR_KEYS]


def problem_summary(problems: Sequence[Any]) -> str:
    """The line beside Train: which fields to fix, by their labels (the details are beside each field)."""
    named = [field_label(p.field) for p in problems
             if p.field in train_fields.BY_KEY or p.field == "pretrained_model_name_or_path"]
    named = list(dict.fromkeys(named))
    if not named:
        return tr("Fix the problems shown below first.")
    return tr("Fix these fields first: {fields}.", fields=", ".join(named))


def advanced_update(problems: Sequence[Any]) -> Any:
    """Open "Advanced" when a problem is about one of its fields (else leave it as the person left it)."""
    if any(p.field in ADVANCED_KEYS for p in problems):
        return compat.update(open=True)
    return compat.unchanged()


def on_train(ctx: UIContext, project: Optional[str], version_name: Optional[str], base_title: Optional[str],
             preset_label: Any, vram_label: Any, *values: Any) -> Tuple[Any, ...]:
    """Check the form, write config.toml and queue the run; returns (message, *field errors, Advanced)."""
    from lib_trainer.trainer.schema import save_config

    version = ctx.version(project, version_name)
    if version is None:
        return tuple([messages.error(tr("Create or pick a project first."))] + _no_errors() + [compat.unchanged()])
    if version.busy:
        return tuple([messages.warning(tr("This version is already training or queued."))] + _no_errors() +
                     [compat.unchanged()])
    preset, vram = _choices(preset_label, vram_label)
    form = _form(values)
    save_form(ctx, version, base_title, preset, vram, form)
    notes = []
    trigger = (form.get("trigger") or "").strip()
    if trigger != version_settings.trigger_word(version):
        notes.append(_apply_trigger(version, trigger))
    cfg, problems = problems_for(ctx, version, base_title, preset, vram, form)
    if problems or cfg is None:
        return tuple([messages.error(problem_summary(problems))] + error_updates(problems) +
                     [advanced_update(problems)])
    question = restart_question(ctx, version)
    if question:
        return tuple([messages.many([(question, "warning")] + [(n, "info") for n in notes if n])] + _no_errors() +
                     [compat.unchanged()])
    save_config(cfg, version.config_path)
    try:
        job = ctx.runner.submit(version.project.name, version.name)
    except (ProjectError, ValueError) as exc:
        return tuple([messages.error(str(exc))] + _no_errors() + [compat.unchanged()])
    ctx.picked_checkpoints.pop(version.key, None)
    if job.position and job.position > 1:
        text = tr("Queued: {n} run(s) before this one.", n=job.position - 1)
    else:
        text = tr("Training starts now; progress shows below.")
    return tuple([messages.many([(text, "ok")] + [(n, "info") for n in notes if n])] + _no_errors() +
                 [compat.unchanged()])


RESTART_CONFIRM_S = 120.0  # a second Train within this long after the question starts over


def restart_question(ctx: UIContext, version: Version) -> str:
    """The question to ask before a fresh run moves the last run's checkpoints to the trash ("" when there are
    none, or when Train was pressed again for the same checkpoints within RESTART_CONFIRM_S of the question)."""
    outputs = version.checkpoints()
    if not outputs:
        return ""
    asked = ctx.restart_asked.get(version.key)
    count = len(outputs)
    now = time.monotonic()
    if asked is not None and asked[0] == count and now - asked[1] <= RESTART_CONFIRM_S:
        del ctx.restart_asked[version.key]
        return ""
    ctx.restart_asked[version.key] = (count, now)
    if version.state().get("resumable"):
        return tr("\"{version}\" has {n} checkpoint(s) and a saved state from its last run. Resume continues that "
                  "run. Press Train again to start over: the {n} checkpoint(s) then move to the trash (Restore at "
                  "the top brings them back). To keep both runs, make a new version instead.",
                  version=version.key, n=count)
    return tr("\"{version}\" has {n} checkpoint(s) from its last run. Press Train again to start over: they then "
              "move to the trash (Restore at the top brings them back). To keep both runs, make a new version "
              "instead.", version=version.key, n=count)


def _apply_trigger(version: Version, trigger: str) -> str:
    """Make the form's trigger word the captions' first tag (one undoable edit); returns what happened."""
    from lib_trainer.dataset.captions.caption_set import CaptionSet
    from lib_trainer.dataset.captions.sidecar import CaptionError
    from lib_trainer.dataset.captions.tags import parse_tags

    previous = version_settings.trigger_word(version) or None
    words = ", ".join(parse_tags(trigger))
    train = stored_train(version)
    if not words:
        version_settings.put(version, trigger="")
        return ""
    captions = CaptionSet(version.train_dir, trigger_word=previous)
    try:
        result = captions.set_trigger_word(words, previous=previous) if captions.pictures() else None
    except CaptionError as exc:
        return str(exc)
    if result is not None:
        train.setdefault("fields", {})["keep_tokens"] = result.keep_tokens
    version_settings.put(version, trigger=words, train=train)
    return result.message.strip() if result is not None else ""


def on_stop(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> str:
    version = ctx.version(project, version_name)
    if version is None:
        return ""
    try:
        outcome = ctx.runner.stop(version.project.name, version.name)
    except (ProjectError, ValueError, OSError) as exc:  # OSError: a full disk (DiskFull says so)
        return messages.error(str(exc))
    return {
        "stopping": messages.info(tr("Stopping: the trainer ends the step it is in, saves a checkpoint and its "
                                     "state, then ends.")),
        "dequeued": messages.ok(tr("Taken out of the queue.")),
    }.get(outcome, messages.info(tr("Nothing to stop.")))


def on_resume(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> str:
    version = ctx.version(project, version_name)
    if version is None:
        return ""
    try:
        job = ctx.runner.resume(version.project.name, version.name)
    except (ProjectError, ValueError) as exc:
        return messages.error(str(exc))
    if job.position and job.position > 1:
        return messages.ok(tr("Queued to resume: {n} run(s) before this one.", n=job.position - 1))
    return messages.ok(tr("Resuming from the saved state."))


# ---- layout ----------------------------------------------------------------------------------------------------
def _component(f: train_fields.Field, value: Any = None) -> Any:
    elem_id = f"train_tools_field_{f.key}"
    label = f.label()
    if f.kind == "bool":
        return gr.Checkbox(label=label, value=bool(value), elem_id=elem_id)
    if f.kind == "int":
        return gr.Number(label=label, value=value, precision=0, elem_id=elem_id, min_width=120)
    if f.kind == "float":
        return gr.Number(label=label, value=value, elem_id=elem_id, min_width=120)
    if f.kind == "choice":
        choices = [train_fields.choice_label(f.key, v) for v in f.choices]
        return gr.Dropdown(label=label, choices=choices, value=None, elem_id=elem_id)
    return gr.Textbox(label=label, value=value or "", elem_id=elem_id)


def build(ctx: UIContext, project: Any, version: Any) -> TrainPanel:
    gr.Markdown(tr("### 4. Train"))
    errors: Dict[str, Any] = {}
    components: Dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                base_model = gr.Dropdown(label=tr("Base model"), choices=checkpoint_titles(ctx), value=None,
                                         elem_id="train_tools_base_model", scale=4)
                refresh_models = gr.Button(tr("Refresh list"), elem_id="train_tools_refresh_models", scale=0,
                                           min_width=110)
            errors["pretrained_model_name_or_path"] = gr.HTML("", elem_id="train_tools_error_base_model")
        preset = gr.Dropdown(label=tr("Preset"), choices=PRESET_CHOICES.labels(),
                             value=PRESET_CHOICES.label(ctx.settings.default_preset), elem_id="train_tools_preset",
                             scale=2)
        vram = gr.Dropdown(label=tr("GPU memory"), choices=VRAM_CHOICES.labels(),
                           value=VRAM_CHOICES.label(ctx.settings.default_vram_gb), elem_id="train_tools_vram",
                           scale=1)
    common = [f for f in train_fields.FIELDS if not f.advanced]
    for row in (common[:4], common[4:]):
        with gr.Row():
            for f in row:
                with gr.Column(min_width=120):
                    components[f.key] = _component(f)
                    errors[f.key] = gr.HTML("", elem_id=f"train_tools_error_{f.key}")
    with gr.Accordion(tr("Advanced"), open=False, elem_id="train_tools_advanced") as advanced_section:
        advanced = [f for f in train_fields.FIELDS if f.advanced]
        for start in range(0, len(advanced), 4):
            with gr.Row():
                for f in advanced[start:start + 4]:
                    with gr.Column(min_width=120):
                        components[f.key] = _component(f)
                        errors[f.key] = gr.HTML("", elem_id=f"train_tools_error_{f.key}")
    # Nothing that a field's edit updates may sit above the buttons: leaving a field (blur, as the mouse goes down
    # on Train) re-renders the estimate, and gradio 3.41 shifts everything below it for a few frames while it is
    # pending, so the mouse went up beside the moved button and the first click after typing was lost.
    with gr.Row():
        train = gr.Button(tr("Train"), variant="primary", elem_id="train_tools_train")
        stop = gr.Button(tr("Stop"), variant="stop", elem_id="train_tools_stop")
        resume = gr.Button(tr("Resume"), elem_id="train_tools_resume")
    estimate = gr.Markdown("", elem_id="train_tools_estimate")
    message = gr.HTML("", elem_id="train_tools_train_message")
    errors["dataset"] = gr.HTML("", elem_id="train_tools_error_dataset")
    errors["config"] = gr.HTML("", elem_id="train_tools_error_config")

    fields = [components[k] for k in train_fields.KEYS]
    panel = TrainPanel(base_model, preset, vram, fields, errors, estimate, message, train, stop, resume,
                       advanced=advanced_section)
    head = [project, version, base_model, preset, vram]

    refresh_models.click(lambda: compat.update(choices=checkpoint_titles(ctx, refresh=True)), None, [base_model])
    # A person's own edits (never a version's form being loaded into the fields) save the form and re-estimate.
    for chooser in (preset, vram, base_model):
        chooser.input(lambda *args: on_preset(ctx, *args), head + fields, fields + [estimate])
    for key in train_fields.KEYS:
        event = compat.edited(components[key], typed=train_fields.BY_KEY[key].kind in ("int", "float", "text"))
        event(lambda *args: on_change(ctx, *args), head + fields, [estimate], queue=False,
              show_progress=compat.HIDDEN)
    started = train.click(lambda *args: on_train(ctx, *args), head + fields, panel.train_outputs())
    stopped = stop.click(lambda p, v: on_stop(ctx, p, v), [project, version], [message])
    resumed = resume.click(lambda p, v: on_resume(ctx, p, v), [project, version], [message])
    panel.started = [started, stopped, resumed]
    return panel


__all__ = ["TrainPanel", "build", "on_refresh", "on_preset", "on_change", "on_train", "on_stop", "on_resume",
           "load_form", "preset_form", "make_config", "estimate_text", "problems_for", "error_updates",
           "checkpoint_titles", "resolve_checkpoint", "PRESET_CHOICES", "VRAM_CHOICES", "ERROR_KEYS"]
