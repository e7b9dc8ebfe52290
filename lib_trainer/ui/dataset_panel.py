"""Dataset: import pictures (drag and drop, zips, a server folder), the dataset report, preprocessing and repeats.

Imported originals go to ``dataset/source/`` untouched; "Preprocess" makes ``dataset/train/<repeats>_<concept>/``,
which the captions panel edits and the trainer reads. All work is done by ``lib_trainer.dataset``; this module only
collects the options, calls it and shows what it says.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from lib_trainer import presets
from lib_trainer.common.i18n import current_language, tr
from lib_trainer.projects import Version
from lib_trainer.ui import compat, messages, version_settings
from lib_trainer.ui.context import UIContext

CROP_CHOICES = compat.Choices(("center", "focal", "none"), lambda v: {
    "center": tr("Center crop"), "focal": tr("Focal crop (faces, then the busiest part)"),
    "none": tr("No crop (keep the shape, train with buckets)")}[v])
BUILT_IN_UPSCALER = "Lanczos"
UPLOAD_TYPES = ["image", ".zip", ".txt", ".caption", ".webp", ".tif", ".tiff", ".bmp"]

_reports: Dict[tuple, Any] = {}  # the surveys of _source_survey
_reports_lock = threading.Lock()

PREPROCESS_DEFAULTS: Dict[str, Any] = {"width": 512, "height": 512, "crop": "center", "flip": False,
                                       "face_crops": False, "upscaler": "", "concept": "", "repeats": 10}


@dataclass
class DatasetPanel:
    upload: Any
    folder: Any
    import_message: Any
    report: Any
    width: Any
    height: Any
    crop: Any
    flip: Any
    face_crops: Any
    upscaler: Any
    concept: Any
    repeats: Any
    repeats_hint: Any
    preprocess_message: Any
    preprocess_button: Any
    import_done: List[Any]  # the events after which other panels refresh
    import_about: Any = None  # gr.State: the imported pictures the import message tells of

    def follow_captions(self, ctx: UIContext, project: Any, version: Any, events: List[Any]) -> None:
        """After each of ``events`` (caption edits), the report counts the captions again."""
        for event in events:
            event.then(lambda p, v, w, h, c: host_report(ctx, ctx.version(p, v), w, h, c),
                       [project, version, self.width, self.height, self.crop], [self.report], queue=False,
                       show_progress=compat.HIDDEN)

    def refresh_outputs(self) -> List[Any]:
        return [self.report, self.width, self.height, self.crop, self.flip, self.face_crops, self.upscaler,
                self.concept, self.repeats, self.repeats_hint, self.import_message, self.preprocess_message,
                self.import_about]


# ---- logic -----------------------------------------------------------------------------------------------------
def preprocess_settings(version: Optional[Version]) -> Dict[str, Any]:
    stored = version_settings.get(version, "preprocess", {}) or {}
    values = dict(PREPROCESS_DEFAULTS)
    values.update({k: v for k, v in stored.items() if k in values})
    if not values["concept"] and version is not None:
        values["concept"] = version_settings.trigger_word(version) or version.project.name
    return values


def source_count(version: Optional[Version]) -> int:
    if version is None or not version.source_dir.is_dir():
        return 0
    from lib_trainer.dataset.images import iter_images

    return sum(1 for _ in iter_images(version.source_dir))


def report_markdown(version: Optional[Version], width: Any = 512, height: Any = 512, crop: Any = "center",
                    host_upscalers: bool = True) -> str:
    """The dataset doctor's report: the version's imported pictures as the preprocessing options would make them
    (cropped to width × height, or in buckets with crop "none"), and the captions of the training pictures, which
    are what the trainer reads (those of the imported ones until there are training pictures)."""
    if version is None:
        return tr("Pick or create a project to start.")
    if source_count(version) == 0:
        return tr("No pictures yet: drop pictures or a .zip above, or import a folder on the server.")
    from lib_trainer.dataset.report import recount_captions

    try:
        w, h = int(width or 512), int(height or 512)
    except (TypeError, ValueError):
        w = h = 512
    crop = CROP_CHOICES.value(crop, "center")
    return recount_captions(_source_survey(version, w, h, crop), version.train_dir,
                            host_upscalers=host_upscalers).to_markdown()


def host_report(ctx: UIContext, version: Optional[Version], width: Any = 512, height: Any = 512,
                crop: Any = "center") -> str:
    """report_markdown with the advice on small pictures as this host can follow it (its upscalers)."""
    return report_markdown(version, width, height, crop, host_upscalers=len(upscaler_choices(ctx)) > 1)


def _source_survey(version: Version, w: int, h: int, crop: str) -> Any:
    """The report on the imported pictures. Reading every picture (sizes, perceptual hashes) takes seconds for a
    large dataset, so it is only made again when the pictures, the size or the crop change; the captions are
    counted afresh each time (recount_captions)."""
    from lib_trainer.dataset.report import build_report

    key = (str(version.source_dir), w, h, crop, source_stamp(version), current_language())
    with _reports_lock:
        cached = _reports.get(key)
    if cached is None:
        buckets = bucket_limits(w, h)
        cached = build_report(version.source_dir, (w, h), bucketing=crop == "none", min_bucket_reso=buckets[0],
                              max_bucket_reso=buckets[1])
        with _reports_lock:
            if len(_reports) > 32:
                _reports.clear()
            _reports[key] = cached
    return cached


def bucket_limits(w: int, h: int) -> Tuple[int, int]:
    """The bucket sizes preprocessing uses for crop "none" (and the report shows): half the short side to twice
    the long side."""
    return max(64, min(w, h) // 2), max(w, h) * 2


def upscaler_choices(ctx: UIContext) -> List[str]:
    try:
        names = list(ctx.host.upscalers())
    except Exception:
        names = []
    return [BUILT_IN_UPSCALER] + [n for n in names if n != BUILT_IN_UPSCALER]


def repeats_hint(ctx: UIContext, version: Optional[Version], preset: Optional[str] = None) -> Tuple[int, str]:
    """The suggested repeats for the version's pictures and preset, why, and what the training pictures use now."""
    from lib_trainer.dataset.concepts import repeats_in_use, suggest_repeats

    train = version_settings.get(version, "train", {}) or {}
    preset = preset or train.get("preset") or ctx.settings.default_preset
    preset = next((p for p in presets.PRESETS if preset in (p, presets.preset_label(p))), preset)  # a label too
    fields = dict(train.get("fields") or {})  # the Train form as last saved, for the preset saved with it
    epochs = _whole(fields.get("max_train_epochs")) if preset == train.get("preset") else None  # None: the preset's
    batch = _whole(fields.get("train_batch_size", train.get("train_batch_size"))) or 1
    suggested, why = suggest_repeats(source_count(version), preset, batch, epochs)
    if version is None:
        return suggested, why
    return suggested, why + "\n\n" + repeats_in_use(suggested, training_concept(version))


def _whole(value: Any) -> Optional[int]:
    """``value`` as a whole number of 1 or more, else None."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def training_concept(version: Version, name: Optional[str] = None) -> Any:
    """The concept folder of the training pictures: the one named ``name`` (default: the one preprocessing makes),
    else the only one; None when there is none."""
    from lib_trainer.dataset.concepts import list_concepts

    concepts = list_concepts(version.dataset_dir)
    wanted = ((name or preprocess_settings(version)["concept"]) or "").strip().casefold()
    found = next((c for c in concepts if c.name.casefold() == wanted), None)
    return found if found is not None or len(concepts) != 1 else concepts[0]


def on_refresh(ctx: UIContext, project: Optional[str], version_name: Optional[str]) -> Tuple[Any, ...]:
    """Everything the dataset panel shows for the selected version."""
    version = ctx.version(project, version_name)
    values = preprocess_settings(version)
    _, why = repeats_hint(ctx, version) if version is not None else (0, "")
    choices = upscaler_choices(ctx)
    upscaler = values["upscaler"] if values["upscaler"] in choices else BUILT_IN_UPSCALER
    return (host_report(ctx, version, values["width"], values["height"], values["crop"]), values["width"],
            values["height"], CROP_CHOICES.label(values["crop"]), bool(values["flip"]), bool(values["face_crops"]),
            compat.update(choices=choices, value=upscaler), values["concept"], values["repeats"], why, "", "", None)


def import_inputs(files: Any, folder: Optional[str]) -> List[Any]:
    """The uploaded files and the server folder typed, to import; ValueError saying what to do when there are
    none or the folder does not exist."""
    inputs: List[Any] = list(compat.uploaded_files(files))
    folder = (folder or "").strip()
    if folder:
        path = Path(folder).expanduser()
        if not path.exists():
            raise ValueError(tr("The folder {folder} does not exist on the server.", folder=folder))
        inputs.append(path)
    if not inputs:
        raise ValueError(tr("Drop pictures or a .zip, or type a folder on the server."))
    return inputs


def import_into(ctx: UIContext, inputs: List[Any], target: Path, folder_typed: bool, progress: Any = None) -> str:
    """Import ``inputs`` into ``target`` (a typed server folder only where the settings allow); the message."""
    from lib_trainer.dataset.importer import import_pictures

    def step(done: int, total: int, name: str) -> None:
        if progress is not None:
            progress((done, total), desc=tr("Importing {name}", name=name))

    roots = ctx.settings.import_roots
    report = import_pictures(inputs, target, allowed_roots=roots if folder_typed else None, progress=step)
    kind = "ok" if report.imported and not report.skipped else ("warning" if report.imported else "error")
    return markdown_message(report.to_markdown(), kind)


def on_import(ctx: UIContext, project: Optional[str], version_name: Optional[str], files: Any, folder: str,
              width: Any = 512, height: Any = 512, progress: Any = None, crop: Any = "center") -> Tuple[str, str]:
    """Import uploaded files and/or a server folder; returns (import message, dataset report)."""
    version = ctx.version(project, version_name)
    if version is None:
        return messages.error(tr("Create or pick a project first.")), report_markdown(None)
    try:
        inputs = import_inputs(files, folder)
    except ValueError as exc:
        return messages.error(str(exc)), host_report(ctx, version, width, height, crop)
    before = source_stamp(version)
    message = import_into(ctx, inputs, version.source_dir, bool((folder or "").strip()), progress)
    if source_stamp(version) != before and training_concept(version) is not None:
        message += messages.info(tr("The training pictures were made before these: press \"Preprocess\" again to "
                                    "add them."))
    return message, host_report(ctx, version, width, height, crop)


def source_stamp(version: Optional[Version]) -> Tuple:
    """What the imported pictures are now (their names, sizes and times): an import message describes one."""
    if version is None:
        return ()
    try:
        return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(version.source_dir)))
    except OSError:
        return ()


def on_check_again(ctx: UIContext, project: Optional[str], version_name: Optional[str], width: Any, height: Any,
                   crop: Any, import_about: Any) -> Tuple[str, Any, Any]:
    """"Check again": the report, and the import message gone when the imported pictures are no longer those it
    told of (removed or changed since)."""
    version = ctx.version(project, version_name)
    stale = import_about is not None and tuple(import_about) != source_stamp(version)
    return (host_report(ctx, version, width, height, crop), "" if stale else compat.unchanged(),
            None if stale else compat.unchanged())


def markdown_message(text: str, kind: str) -> str:
    """A multi-line report (Markdown lists with `names`) shown in an HTML message box."""
    lines = [line[2:] if line.startswith("- ") else line for line in text.splitlines()]
    lines = [line.replace("`", "") for line in lines if line.strip()]
    return messages.message("\n".join(lines), kind)


def on_preprocess(ctx: UIContext, project: Optional[str], version_name: Optional[str], width: Any, height: Any,
                  crop_label: Any, flip: bool, face_crops: bool, upscaler: Optional[str], concept: str,
                  repeats: Any, progress: Any = None) -> str:
    """Make the training pictures; returns the message."""
    from lib_trainer.dataset.preprocess import PreprocessError, PreprocessOptions, preprocess

    version = ctx.version(project, version_name)
    if version is None:
        return messages.error(tr("Create or pick a project first."))
    if source_count(version) == 0:
        return messages.error(tr("No pictures yet: drop pictures or a .zip above, or import a folder on the server."))
    crop = CROP_CHOICES.value(crop_label, "center")
    try:
        w, h, n = int(width), int(height), int(repeats)
    except (TypeError, ValueError):
        return messages.error(tr("Width, height and repeats must be whole numbers."))
    concept = (concept or "").strip() or version.project.name
    low, high = bucket_limits(w, h)
    options = PreprocessOptions(width=w, height=h, crop=crop, flip=bool(flip), face_crops=1 if face_crops else 0,
                                min_bucket_reso=low, max_bucket_reso=high)
    upscale = None
    if upscaler and upscaler != BUILT_IN_UPSCALER:
        options.upscaler_name = upscaler

        def upscale(image, scale):  # noqa: E306 - the host's upscaler, for pictures smaller than the target
            return ctx.host.upscale(image, upscaler, scale)

    def step(done: int, total: int, name: str) -> None:
        if progress is not None:
            progress((done, total), desc=tr("Preprocessing {name}", name=name))

    version_settings.put(version, preprocess={"width": w, "height": h, "crop": crop, "flip": bool(flip),
                                              "face_crops": bool(face_crops), "upscaler": upscaler or "",
                                              "concept": concept, "repeats": n})
    try:
        result = preprocess(version.source_dir, version.train_dir, repeats=n, concept=concept, options=options,
                            upscale=upscale, progress=step)
    except (PreprocessError, ValueError) as exc:
        return messages.error(str(exc))
    lines = [result.summary()]
    lines += [f"{s['name']}: {s['reason']}" for s in result.skipped]
    lines += result.messages
    if result.captions_kept:
        lines.append(tr("{n} captions edited here were kept.", n=len(result.captions_kept)))
    lines.append(tr("Next: check the captions below."))
    return messages.message("\n".join(lines), "warning" if result.skipped else "ok")


def on_suggest_repeats(ctx: UIContext, project: Optional[str], version_name: Optional[str],
                       preset: Optional[str]) -> Tuple[Any, str]:
    version = ctx.version(project, version_name)
    if version is None:
        return compat.unchanged(), ""
    repeats, why = repeats_hint(ctx, version, preset)
    return repeats, why


def on_apply_repeats(ctx: UIContext, project: Optional[str], version_name: Optional[str], concept: str,
                     repeats: Any) -> str:
    """Change the repeats of the existing concept folder (no preprocessing needed)."""
    from lib_trainer.dataset.concepts import ConceptError, list_concepts, set_repeats

    version = ctx.version(project, version_name)
    if version is None:
        return messages.error(tr("Create or pick a project first."))
    concepts = list_concepts(version.dataset_dir)
    if not concepts:
        return messages.error(tr("There are no training pictures yet: press \"Preprocess\" first."))
    name = (concept or "").strip()
    target = training_concept(version, name)
    if target is None:
        return messages.error(tr("There is no concept \"{name}\"; the concepts are: {names}.", name=name,
                                 names=", ".join(c.name for c in concepts)))
    before = target.repeats
    try:
        changed = set_repeats(version.dataset_dir, target.name, repeats)
    except (ConceptError, ValueError, OSError) as exc:
        return messages.error(str(exc))
    settings = version_settings.get(version, "preprocess", {}) or {}
    settings.update(repeats=changed.repeats, concept=changed.name)
    version_settings.put(version, preprocess=settings)
    if changed.repeats == before:
        return messages.info(tr("\"{name}\" already has {repeats} repeats ({folder}); nothing changed.",
                                name=changed.name, repeats=changed.repeats, folder=changed.folder_name))
    return messages.ok(tr("\"{name}\" now has {repeats} repeats ({folder}).", name=changed.name,
                          repeats=changed.repeats, folder=changed.folder_name))


# ---- layout ----------------------------------------------------------------------------------------------------
def build(ctx: UIContext, project: Any, version: Any, preset: Any = None) -> DatasetPanel:
    gr.Markdown(tr("### 1. Pictures"))
    with gr.Row():
        # An upload button inside a drop zone (javascript/train_tools.js hands dropped files to its file input),
        # not gr.File: gradio 3.41's File drops an upload without a word when any event's answer reaches the page
        # while the files are still being sent (the progress poll answers every few seconds).
        with gr.Column(scale=3, elem_id="train_tools_drop_zone"):
            upload = gr.UploadButton(tr("Drop pictures or .zip files here, or click to choose them (many at once)"),
                                     file_count="multiple", file_types=UPLOAD_TYPES, elem_id="train_tools_upload")
        with gr.Column(scale=2):
            folder = gr.Textbox(label=tr("…or a folder on the server"), placeholder="/path/to/pictures",
                                elem_id="train_tools_import_folder")
            import_folder = gr.Button(tr("Import folder"), elem_id="train_tools_import_folder_button")
    import_message = gr.HTML("", elem_id="train_tools_import_message")
    with gr.Accordion(tr("Dataset report"), open=True, elem_id="train_tools_report_accordion"):
        report = gr.Markdown(tr("Pick or create a project to start."), elem_id="train_tools_dataset_report")
        refresh_report = gr.Button(tr("Check again"), size="sm", elem_id="train_tools_refresh_report")

    gr.Markdown(tr("### 2. Preprocess"))
    with gr.Row():
        width = gr.Number(label=tr("Width"), value=512, precision=0, elem_id="train_tools_pp_width", min_width=90)
        height = gr.Number(label=tr("Height"), value=512, precision=0, elem_id="train_tools_pp_height", min_width=90)
        crop = gr.Radio(label=tr("Crop"), choices=CROP_CHOICES.labels(), value=CROP_CHOICES.label("center"),
                        elem_id="train_tools_pp_crop")
    with gr.Row():
        flip = gr.Checkbox(label=tr("Add mirrored copies"), value=False, elem_id="train_tools_pp_flip")
        face_crops = gr.Checkbox(label=tr("Add a close-up of each face"), value=False,
                                 elem_id="train_tools_pp_faces")
        upscaler = gr.Dropdown(label=tr("Enlarge small pictures with"), choices=upscaler_choices(ctx),
                               value=BUILT_IN_UPSCALER, elem_id="train_tools_pp_upscaler")
    with gr.Row():
        concept = gr.Textbox(label=tr("Concept (folder name)"), elem_id="train_tools_concept")
        repeats = gr.Number(label=tr("Repeats"), value=10, precision=0, elem_id="train_tools_repeats", min_width=90)
        suggest = gr.Button(tr("Suggest repeats"), elem_id="train_tools_suggest_repeats", scale=0, min_width=120)
        apply_repeats = gr.Button(tr("Apply repeats"), elem_id="train_tools_apply_repeats", scale=0, min_width=120)
    hint = gr.Markdown("", elem_id="train_tools_repeats_hint")
    preprocess_button = gr.Button(tr("Preprocess"), variant="primary", elem_id="train_tools_preprocess")
    preprocess_message = gr.HTML("", elem_id="train_tools_preprocess_message")

    import_about = gr.State(None)  # the imported pictures (source_stamp) the import message tells of

    panel = DatasetPanel(upload, folder, import_message, report, width, height, crop, flip, face_crops, upscaler,
                         concept, repeats, hint, preprocess_message, preprocess_button, [], import_about)

    def imported_outputs(p, v, msg, rep):
        """The import's message and report; the preprocessing message went with the pictures it told of."""
        return msg, rep, source_stamp(ctx.version(p, v)), ""

    def do_upload(p, v, files, w, h, c, progress=gr.Progress()):
        msg, rep = on_import(ctx, p, v, files, "", w, h, progress, crop=c)
        return imported_outputs(p, v, msg, rep) + (None,)

    def do_folder(p, v, path, w, h, c, progress=gr.Progress()):
        return imported_outputs(p, v, *on_import(ctx, p, v, None, path, w, h, progress, crop=c))

    def do_preprocess(p, v, w, h, c, f, fc, up, con, n, progress=gr.Progress()):
        msg = on_preprocess(ctx, p, v, w, h, c, f, fc, up, con, n, progress)
        version = ctx.version(p, v)
        return msg, host_report(ctx, version, w, h, c), repeats_hint(ctx, version)[1] if version else ""

    def do_apply_repeats(p, v, c, n):
        version = ctx.version(p, v)
        return on_apply_repeats(ctx, p, v, c, n), repeats_hint(ctx, version)[1] if version else ""

    after_import = [import_message, report, import_about, preprocess_message]
    uploaded = upload.upload(do_upload, [project, version, upload, width, height, crop], after_import + [upload])
    imported = import_folder.click(do_folder, [project, version, folder, width, height, crop], after_import)
    refresh_report.click(lambda p, v, w, h, c, about: on_check_again(ctx, p, v, w, h, c, about),
                         [project, version, width, height, crop, import_about], [report, import_message, import_about])
    preset_inputs = [project, version] + ([preset] if preset is not None else [])
    suggest.click(lambda p, v, *rest: on_suggest_repeats(ctx, p, v, rest[0] if rest else None), preset_inputs,
                  [repeats, hint], queue=False)
    apply_repeats.click(do_apply_repeats, [project, version, concept, repeats], [preprocess_message, hint])
    processed = preprocess_button.click(do_preprocess, [project, version, width, height, crop, flip, face_crops,
                                                        upscaler, concept, repeats],
                                        [preprocess_message, report, hint])
    for event in (uploaded, imported):  # the suggestion depends on how many pictures there are
        event.then(lambda p, v: repeats_hint(ctx, ctx.version(p, v))[1] if ctx.version(p, v) else "",
                   [project, version], [hint], queue=False)
    panel.import_done = [uploaded, imported, processed]
    return panel


__all__ = ["DatasetPanel", "build", "on_refresh", "on_import", "import_inputs", "import_into", "on_preprocess",
           "on_suggest_repeats", "on_apply_repeats", "report_markdown", "preprocess_settings", "CROP_CHOICES", "BUILT_IN_UPSCALER"]
