"""Captions: the gallery of training pictures with per-picture caption editing, the host's taggers, the bulk tag
tools (trigger word, add / remove / replace, duplicates, sort, frequencies, tags to remove so the LoRA learns
them) and their undo. The captions are the ``.txt`` files beside ``dataset/train/<repeats>_<concept>/`` pictures;
``lib_trainer.dataset.captions`` and ``.tagging`` do the work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import gradio as gr

from lib_trainer.common.i18n import tr
from lib_trainer.projects import Version
from lib_trainer.ui import compat, messages, version_settings
from lib_trainer.ui.context import UIContext

SCOPE_CHOICES = compat.Choices(("all", "selected"), lambda v: {
    "all": tr("All pictures"), "selected": tr("Only the selected picture")}[v])
EXISTING_CHOICES = compat.Choices(("ignore", "keep", "prepend", "append"), lambda v: {
    "ignore": tr("Replace existing captions"), "keep": tr("Keep existing captions"),
    "prepend": tr("New tags before existing ones"), "append": tr("New tags after existing ones")}[v])
SORT_CHOICES = compat.Choices(("alphabetical", "frequency"), lambda v: {
    "alphabetical": tr("alphabetically"), "frequency": tr("by frequency")}[v])
MAX_LABEL = 80
MAX_FREQUENCY_ROWS = 60


@dataclass
class CaptionsPanel:
    gallery: Any
    names: Any
    selected: Any
    selected_label: Any
    caption: Any
    message: Any
    frequency: Any
    suggestions: Any
    suggestions_text: Any
    undo: Any
    trigger: Any
    tagger: Any
    tagger_note: Any
    trigger_set: Any = None  # the "Set trigger word" event (the train form shows the trigger word too)
    threshold: Any = None
    existing: Any = None
    run_tagger: Any = None
    edited: List[Any] = field(default_factory=list)  # the events that change captions (the report counts them)

    def edit_outputs(self) -> List[Any]:
        """What an edit changes (panel_updates)."""
        return [self.gallery, self.names, self.selected, self.selected_label, self.caption, self.frequency,
                self.suggestions, self.suggestions_text, self.undo, self.trigger, self.message]

    def refresh_outputs(self) -> List[Any]:
        """Everything on_refresh sets: what an edit changes, and the tagger box."""
        return self.edit_outputs() + [self.tagger, self.tagger_note, self.threshold, self.existing, self.run_tagger]


# ---- logic -----------------------------------------------------------------------------------------------------
def caption_set(version: Version):
    from lib_trainer.dataset.captions.caption_set import CaptionSet

    return CaptionSet(version.train_dir, trigger_word=version_settings.trigger_word(version) or None)


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def gallery_items(version: Optional[Version]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(gallery value: (picture path, "name: caption") pairs, the pictures' names relative to dataset/train)."""
    if version is None or not version.train_dir.is_dir():
        return [], []
    captions = caption_set(version)
    items, names = [], []
    for picture, tags in captions.captions().items():
        rel = captions.relative_name(picture)
        text = ", ".join(tags) if tags else tr("(no caption)")
        items.append((str(picture), _short(f"{picture.name}: {text}")))
        names.append(rel)
    return items, names


def frequency_markdown(version: Optional[Version]) -> str:
    if version is None or not version.train_dir.is_dir():
        return ""
    captions = caption_set(version)
    total = len(captions.pictures())
    if total == 0:
        return tr("No training pictures yet: import pictures and press \"Preprocess\".")
    counts = captions.frequency()
    uncaptioned = len(captions.uncaptioned())
    lines = [tr("**{total}** training pictures, {uncaptioned} without a caption, {tags} different tags.",
                total=total, uncaptioned=uncaptioned, tags=len(counts)), ""]
    if counts:
        lines += [f"| {tr('Tag')} | {tr('Pictures')} |", "|---|---:|"]
        lines += [f"| {messages.md_escape(c.tag)} | {c.count} |" for c in counts[:MAX_FREQUENCY_ROWS]]
        if len(counts) > MAX_FREQUENCY_ROWS:
            lines.append("")
            lines.append(tr("…and {n} rarer tags.", n=len(counts) - MAX_FREQUENCY_ROWS))
    return "\n".join(lines)


def suggestions(version: Optional[Version], preset: Optional[str]) -> Tuple[Any, str]:
    """(checkbox choices update, explanation) of the tags to remove so the LoRA learns them."""
    if version is None or not version.train_dir.is_dir():
        return compat.update(choices=[], value=[]), ""
    found = caption_set(version).suggest_tags_to_remove(preset or "character")
    if not found:
        return compat.update(choices=[], value=[]), tr("No tag stands out as a constant trait to remove.")
    text = "\n".join(f"- **{messages.md_escape(s.tag)}**: {s.reason}" for s in found)
    return compat.update(choices=[s.tag for s in found], value=[]), text


def undo_label(version: Optional[Version]) -> Any:
    info = caption_set(version).last_edit() if version is not None else None
    if info is None:
        return compat.update(value=tr("Undo"), interactive=False)
    return compat.update(value=tr("Undo \"{label}\"", label=_short(info.label, 40)), interactive=True)


def _preset(version: Optional[Version], ctx: UIContext) -> str:
    train = version_settings.get(version, "train", {}) or {}
    return str(train.get("preset") or ctx.settings.default_preset)


def on_refresh(ctx: UIContext, project: Optional[str], version_name: Optional[str],
               message: str = "") -> Tuple[Any, ...]:
    """Everything the panel shows for the version (CaptionsPanel.refresh_outputs), the host's taggers included."""
    return panel_updates(ctx, project, version_name, message) + tagger_updates(ctx)


def panel_updates(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                  message: str = "") -> Tuple[Any, ...]:
    """The pictures, their captions and the tools' state with ``message`` (CaptionsPanel.edit_outputs)."""
    version = ctx.version(project, version_name)
    items, names = gallery_items(version)
    sugg, sugg_text = suggestions(version, _preset(version, ctx))
    return (items, names, None, "", compat.update(value="", interactive=False), frequency_markdown(version), sugg,
            sugg_text, undo_label(version), version_settings.trigger_word(version), message)


def on_select(names: Sequence[str], index: Optional[int], ctx: UIContext, project: Optional[str],
              version_name: Optional[str]) -> Tuple[Any, str, Any]:
    """(selected picture, its label, caption box) for a click on the gallery."""
    version = ctx.version(project, version_name)
    if version is None or index is None or not names or not 0 <= index < len(names):
        return None, "", compat.update(value="", interactive=False)
    name = names[index]
    try:
        text = caption_set(version).caption_text(name)
    except Exception as exc:
        return None, messages.error(str(exc)), compat.update(value="", interactive=False)
    return name, messages.info(tr("Editing {name}", name=name)), compat.update(value=text, interactive=True)


def on_save_caption(ctx: UIContext, project: Optional[str], version_name: Optional[str], selected: Optional[str],
                    text: str) -> Tuple[Any, ...]:
    version = ctx.version(project, version_name)
    if version is None or not selected:
        return panel_updates(ctx, project, version_name, messages.error(tr("Click a picture first.")))
    from lib_trainer.dataset.captions.sidecar import CaptionError

    try:
        result = caption_set(version).edit_caption(selected, text or "")
    except (CaptionError, OSError) as exc:
        return _keep_selection(panel_updates(ctx, project, version_name, messages.error(str(exc))), selected, text)
    return _keep_selection(panel_updates(ctx, project, version_name, messages.ok(result.message)), selected,
                           caption_set(version).caption_text(selected))


def _keep_selection(updates: Tuple[Any, ...], selected: Optional[str], text: str) -> Tuple[Any, ...]:
    values = list(updates)
    values[2] = selected
    values[3] = messages.info(tr("Editing {name}", name=selected)) if selected else ""
    values[4] = compat.update(value=text, interactive=bool(selected))
    return tuple(values)


def _scope(scope_label: Any, selected: Optional[str]) -> Optional[List[str]]:
    """The pictures a tool changes: None (all) or the selected one."""
    if SCOPE_CHOICES.value(scope_label, "all") == "selected":
        if not selected:
            raise ValueError(tr("Click a picture first, or apply the tool to all pictures."))
        return [selected]
    return None


def on_tool(ctx: UIContext, tool: str, project: Optional[str], version_name: Optional[str], scope_label: Any,
            selected: Optional[str], *args: Any) -> Tuple[Any, ...]:
    """Run one bulk tag tool; returns the refreshed panel with the tool's message."""
    from lib_trainer.dataset.captions.sidecar import CaptionError
    from lib_trainer.dataset.captions.tags import parse_tags

    version = ctx.version(project, version_name)
    if version is None:
        return panel_updates(ctx, project, version_name, messages.error(tr("Create or pick a project first.")))
    captions = caption_set(version)
    try:
        if not captions.pictures():
            raise CaptionError(tr("No training pictures yet: import pictures and press \"Preprocess\"."))
        pictures = _scope(scope_label, selected)
        if tool == "trigger":
            word = str(args[0] or "").strip()
            previous = version_settings.trigger_word(version) or None
            result = captions.set_trigger_word(word, pictures, previous=previous,
                                               keep_tokens_now=_keep_tokens_in_use(ctx, version))
            train = version_settings.get(version, "train", {}) or {}
            train.setdefault("fields", {})["keep_tokens"] = result.keep_tokens
            version_settings.put(version, trigger=", ".join(parse_tags(word)), train=train)
        elif tool == "add":
            result = captions.add_tags(str(args[0] or ""), pictures, at_start=bool(args[1]) if len(args) > 1 else False)
        elif tool == "remove":
            result = captions.remove_tags(compat.as_list(args[0]) if isinstance(args[0], (list, tuple))
                                          else str(args[0] or ""), pictures)
        elif tool == "replace":
            old, new = str(args[0] or "").strip(), str(args[1] or "")
            if not old:
                raise CaptionError(tr("Type the tag to replace."))
            result = captions.replace_tags({t: new for t in parse_tags(old)}, pictures)
        elif tool == "dedupe":
            result = captions.remove_duplicates(pictures)
        elif tool == "sort":
            result = captions.sort_tags(SORT_CHOICES.value(args[0], "alphabetical"), pictures)
        elif tool == "undo":
            undone = captions.undo()
            return _after_tool(ctx, project, version_name, selected, messages.ok(undone.message))
        else:
            raise ValueError(f"unknown tag tool {tool!r}")
    except (CaptionError, ValueError, OSError) as exc:
        return _after_tool(ctx, project, version_name, selected, messages.error(str(exc)))
    return _after_tool(ctx, project, version_name, selected, messages.ok(result.message.strip()))


def _keep_tokens_in_use(ctx: UIContext, version: Version) -> Optional[int]:
    """The keep_tokens the Train step's form holds for the version (saved, else its preset's); None if unknown."""
    from lib_trainer.ui.train_panel import load_form

    try:
        return int(load_form(ctx, version)[3].get("keep_tokens") or 0)
    except Exception:
        return None


def _after_tool(ctx: UIContext, project: Optional[str], version_name: Optional[str], selected: Optional[str],
                message: str) -> Tuple[Any, ...]:
    updates = panel_updates(ctx, project, version_name, message)
    version = ctx.version(project, version_name)
    if selected and version is not None:
        try:
            return _keep_selection(updates, selected, caption_set(version).caption_text(selected))
        except Exception:
            pass
    return updates


def tagger_state(ctx: UIContext) -> Tuple[List[str], str]:
    """(tagger titles, a note as HTML): the note says why each tagger the host left out is missing and what to
    do (a warning when there is no tagger at all)."""
    from lib_trainer.dataset.tagging import available_taggers, no_tagger_message, unavailable_note

    taggers = available_taggers(ctx.host)
    if not taggers:
        return [], messages.warning(no_tagger_message(ctx.host))
    return [t.title for t in taggers], messages.info(unavailable_note(ctx.host))


def tagger_updates(ctx: UIContext) -> Tuple[Any, ...]:
    """The tagger box as the host has it now (a model put on disk since shows at the next refresh): the
    dropdown, the note, and whether the threshold, the mode and the button can be used."""
    titles, note = tagger_state(ctx)
    usable = compat.update(interactive=bool(titles))
    return (compat.update(choices=titles, value=titles[0] if titles else None, interactive=bool(titles)), note,
            usable, usable, usable)


def on_caption(ctx: UIContext, project: Optional[str], version_name: Optional[str], tagger_title: Optional[str],
               threshold: Any, existing_label: Any, progress: Any = None) -> Tuple[Any, ...]:
    """Caption every training picture with the chosen tagger."""
    from lib_trainer.dataset.captions.sidecar import CaptionError
    from lib_trainer.dataset.tagging import available_taggers, caption_pictures, no_tagger_message

    version = ctx.version(project, version_name)
    if version is None:
        return panel_updates(ctx, project, version_name, messages.error(tr("Create or pick a project first.")))
    taggers = available_taggers(ctx.host)
    if not taggers:
        return panel_updates(ctx, project, version_name, messages.warning(no_tagger_message(ctx.host)))
    info = next((t for t in taggers if t.title == tagger_title), taggers[0])
    captions = caption_set(version)
    if not captions.pictures():
        return panel_updates(ctx, project, version_name, messages.error(
            tr("No training pictures yet: import pictures and press \"Preprocess\".")))

    def step(done: int, total: int, picture: Any) -> None:
        if progress is not None:
            progress((done, total), desc=tr("Captioning {name}", name=getattr(picture, "name", picture)))

    try:
        report = caption_pictures(ctx.host, info.id, captions,
                                  threshold=float(threshold) if info.uses_threshold and threshold is not None else None,
                                  existing=EXISTING_CHOICES.value(existing_label, "ignore"),
                                  trigger_word=version_settings.trigger_word(version) or None, progress=step)
    except (CaptionError, ValueError) as exc:
        return panel_updates(ctx, project, version_name, messages.error(str(exc)))
    except Exception as exc:  # the host's tagger failing as a whole (HostError and friends)
        return panel_updates(ctx, project, version_name, messages.error(str(exc)))
    kind = "warning" if report.failed or report.no_tags else "ok"
    return panel_updates(ctx, project, version_name, messages.message(report.summary(), kind))


# ---- layout ----------------------------------------------------------------------------------------------------
def build(ctx: UIContext, project: Any, version: Any) -> CaptionsPanel:
    gr.Markdown(tr("### 3. Captions"))
    names = gr.State([])
    selected = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            gallery = compat.gallery(label=tr("Training pictures (click one to edit its caption)"), columns=6,
                                     height=420, allow_preview=False, elem_id="train_tools_gallery")
        with gr.Column(scale=2):
            selected_label = gr.HTML("", elem_id="train_tools_selected_picture")
            caption = gr.Textbox(label=tr("Caption (tags separated by commas)"), lines=4, interactive=False,
                                 elem_id="train_tools_caption")
            save = gr.Button(tr("Save caption"), variant="primary", elem_id="train_tools_save_caption")
            titles, note = tagger_state(ctx)
            with gr.Accordion(tr("Caption with a tagger"), open=bool(titles), elem_id="train_tools_tagger_box"):
                tagger_note = gr.HTML(note, elem_id="train_tools_tagger_note")
                tagger = gr.Dropdown(label=tr("Tagger"), choices=titles, value=titles[0] if titles else None,
                                     interactive=bool(titles), elem_id="train_tools_tagger")
                threshold = gr.Slider(label=tr("Threshold"), minimum=0.05, maximum=0.95, step=0.05, value=0.35,
                                      interactive=bool(titles), elem_id="train_tools_tag_threshold")
                existing = gr.Radio(label=tr("Pictures that already have a caption"), choices=EXISTING_CHOICES.labels(),
                                    value=EXISTING_CHOICES.label("ignore"), interactive=bool(titles),
                                    elem_id="train_tools_tag_existing")
                run_tagger = gr.Button(tr("Caption all pictures"), interactive=bool(titles),
                                       elem_id="train_tools_run_tagger")
    message = gr.HTML("", elem_id="train_tools_captions_message")
    with gr.Accordion(tr("Tag tools"), open=True, elem_id="train_tools_tag_tools"):
        scope = gr.Radio(label=tr("Apply to"), choices=SCOPE_CHOICES.labels(), value=SCOPE_CHOICES.label("all"),
                         elem_id="train_tools_tag_scope")
        with gr.Row():
            trigger = gr.Textbox(label=tr("Trigger word (first tag of every caption)"),
                                 placeholder=tr("a word nobody uses, e.g. sks_dog"), elem_id="train_tools_trigger_word")
            set_trigger = gr.Button(tr("Set trigger word"), elem_id="train_tools_set_trigger", scale=0, min_width=140)
        with gr.Row():
            tags = gr.Textbox(label=tr("Tags"), placeholder=tr("tag one, tag two"), elem_id="train_tools_tags")
            add = gr.Button(tr("Add"), elem_id="train_tools_add_tags", scale=0, min_width=80)
            add_front = gr.Button(tr("Add at the start"), elem_id="train_tools_add_tags_front", scale=0,
                                  min_width=120)
            remove = gr.Button(tr("Remove"), elem_id="train_tools_remove_tags", scale=0, min_width=80)
        with gr.Row():
            old = gr.Textbox(label=tr("Replace tag"), elem_id="train_tools_replace_old")
            new = gr.Textbox(label=tr("with (empty: remove it)"), elem_id="train_tools_replace_new")
            replace = gr.Button(tr("Replace"), elem_id="train_tools_replace_tags", scale=0, min_width=90)
        with gr.Row():
            dedupe = gr.Button(tr("Remove duplicate tags"), elem_id="train_tools_dedupe_tags")
            sort_order = gr.Dropdown(label=tr("Sort tags"), choices=SORT_CHOICES.labels(),
                                     value=SORT_CHOICES.label("alphabetical"), elem_id="train_tools_sort_order")
            sort = gr.Button(tr("Sort"), elem_id="train_tools_sort_tags")
            undo = gr.Button(tr("Undo"), interactive=False, elem_id="train_tools_undo")
        with gr.Row():
            with gr.Column():
                gr.Markdown(tr("**Remove these so the LoRA learns them** (constant traits the trigger word should "
                               "carry):"))
                suggestions_text = gr.Markdown("", elem_id="train_tools_suggestions_text")
                suggestion_box = gr.CheckboxGroup(label=tr("Suggested tags"), choices=[],
                                                  elem_id="train_tools_suggested_tags")
                remove_suggested = gr.Button(tr("Remove the checked tags"), elem_id="train_tools_remove_suggested")
            with gr.Column():
                frequency = gr.Markdown("", elem_id="train_tools_tag_frequency")

    panel = CaptionsPanel(gallery, names, selected, selected_label, caption, message, frequency, suggestion_box,
                          suggestions_text, undo, trigger, tagger, tagger_note, threshold=threshold,
                          existing=existing, run_tagger=run_tagger)
    outputs = panel.edit_outputs()
    base = [project, version, scope, selected]

    def select(names_value, p, v, evt: gr.SelectData):
        return on_select(names_value, compat.selected_index(evt), ctx, p, v)

    def caption_all(p, v, t, th, ex, progress=gr.Progress()):
        return on_caption(ctx, p, v, t, th, ex, progress)

    gallery.select(select, [names, project, version], [selected, selected_label, caption], queue=False)
    panel.edited = [save.click(lambda p, v, s, t: on_save_caption(ctx, p, v, s, t), [project, version, selected,
                                                                                    caption], outputs)]
    panel.edited.append(run_tagger.click(caption_all, [project, version, tagger, threshold, existing], outputs))
    panel.trigger_set = set_trigger.click(lambda p, v, sc, s, w: on_tool(ctx, "trigger", p, v, sc, s, w),
                                          base + [trigger], outputs)
    panel.edited += [
        panel.trigger_set,
        add.click(lambda p, v, sc, s, t: on_tool(ctx, "add", p, v, sc, s, t, False), base + [tags], outputs),
        add_front.click(lambda p, v, sc, s, t: on_tool(ctx, "add", p, v, sc, s, t, True), base + [tags], outputs),
        remove.click(lambda p, v, sc, s, t: on_tool(ctx, "remove", p, v, sc, s, t), base + [tags], outputs),
        replace.click(lambda p, v, sc, s, a, b: on_tool(ctx, "replace", p, v, sc, s, a, b), base + [old, new],
                      outputs),
        dedupe.click(lambda p, v, sc, s: on_tool(ctx, "dedupe", p, v, sc, s), base, outputs),
        sort.click(lambda p, v, sc, s, o: on_tool(ctx, "sort", p, v, sc, s, o), base + [sort_order], outputs),
        undo.click(lambda p, v, sc, s: on_tool(ctx, "undo", p, v, sc, s), base, outputs),
        remove_suggested.click(lambda p, v, sc, s, chosen: on_tool(ctx, "remove", p, v, sc, s, list(chosen or [])),
                               base + [suggestion_box], outputs)]
    return panel


__all__ = ["CaptionsPanel", "build", "on_refresh", "panel_updates", "tagger_updates", "on_select", "on_save_caption",
           "on_tool", "on_caption",
           "gallery_items", "frequency_markdown", "suggestions", "tagger_state", "SCOPE_CHOICES",
           "EXISTING_CHOICES", "SORT_CHOICES"]
