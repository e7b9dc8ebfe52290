"""The ``import`` (with preprocessing) and ``caption`` commands."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict

from lib_trainer.cli.arg_values import parse_pairs
from lib_trainer.cli.common import find_version, make_host, open_workspace, update_settings, version_settings
from lib_trainer.cli.hints import command
from lib_trainer.cli.errors import CliError, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lib_trainer.cli.output import Output
from lib_trainer.common.i18n import tr


def cmd_import(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.dataset import importer

    ws = open_workspace(args)
    version = find_version(ws, args.target, args)
    if version.busy:
        raise CliError(tr("Version \"{version}\" is training or queued; wait for it to finish.", version=version.key))
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise CliError(tr("Not found: {paths}", paths=", ".join(missing)))

    def progress(done: int, total: int, name: str) -> None:
        out.progress(tr("importing {done}/{total}: {name}", done=done, total=total, name=name))
        out.emit({"event": "import", "done": done, "total": total, "name": name})

    target = version.source_dir
    if args.reg is not None:
        from lib_trainer.dataset.concepts import ConceptError, regularization_folder

        try:
            target = regularization_folder(version.dataset_dir, args.reg, args.repeats or 1).path
        except ConceptError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    report = importer.import_pictures([Path(p).resolve() for p in args.paths], target,
                                      progress=progress if (out.tty or out.json) else None)
    out.end_progress()
    out.say(report.to_text())
    document: Dict[str, Any] = {"ok": True, "command": "import", "version": version.key, "report": report.to_dict()}
    usable = len(report.imported) + len(report.duplicates)
    code = EXIT_OK
    if not usable:
        code = EXIT_FAILED
        document["ok"] = False
        document["error"] = (tr("No picture could be imported (the reasons are above).") if report.items else
                             tr("No picture files found in {paths}.", paths=", ".join(args.paths)))
        out.warn(document["error"])
    elif args.reg is not None:
        document["regularization_dir"] = str(target)
        out.say(tr("Regularization pictures are in {folder}; the next training run uses them.", folder=target))
    elif not args.no_preprocess:
        document.update(_preprocess(args, out, version))
        _say_if_uncaptioned(args, out, version)
        if (version_settings(version).get("train") or {}).get("base_model"):
            out.say(tr("Next: train it again with the same choices:\n  {command}",
                       command=command(args, "train", version.key)))
        else:
            out.say(tr("Next: train it (MODEL: a checkpoint file, the name of one in --ckpt-dir, or \"embedded\" for "
                       "the small model that comes with Train Tools):\n  {command}",
                       command=command(args, "train", version.key, "--base", "MODEL")))
    out.emit(document)
    return code


def _preprocess(args: argparse.Namespace, out: Output, version) -> Dict[str, Any]:
    """Make dataset/train/<repeats>_<concept>/ from dataset/source/ (the concept and options are remembered)."""
    from lib_trainer.dataset import concepts, preprocess
    from lib_trainer.dataset.images import iter_images

    saved = dict(version_settings(version).get("dataset") or {})
    existing = concepts.list_concepts(version.dataset_dir)
    concept = args.concept or saved.get("concept") or (existing[0].name if len(existing) == 1 else
                                                        version.project.name)
    previous = next((c for c in existing if c.name == concept), None)
    pictures = sum(1 for _ in iter_images(version.source_dir))
    preset = (version_settings(version).get("train") or {}).get("preset")
    if args.repeats:
        repeats, why = concepts.validate_repeats(args.repeats), ""
    elif previous is not None:
        repeats, why = previous.repeats, ""
    else:
        repeats, why = concepts.suggest_repeats(pictures, preset, epochs=(
            (version_settings(version).get("train") or {}).get("overrides") or {}).get("max_train_epochs"))
    width, height = args.size or tuple(saved.get("size") or (512, 512))
    options = preprocess.PreprocessOptions(width=width, height=height, crop=args.crop or saved.get("crop", "center"),
                                           flip=bool(args.flip if args.flip is not None else saved.get("flip", False)),
                                           face_crops=args.face_crops if args.face_crops is not None
                                           else int(saved.get("face_crops", 0)))

    def progress(done: int, total: int, name: str) -> None:
        out.progress(tr("preprocessing {done}/{total}: {name}", done=done, total=total, name=name))
        out.emit({"event": "preprocess", "done": done, "total": total, "name": name})

    result = preprocess.preprocess(version.source_dir, version.train_dir, repeats=repeats, concept=concept,
                                   options=options, progress=progress if (out.tty or out.json) else None)
    out.end_progress()
    update_settings(version, dataset={"concept": concept, "repeats": repeats, "size": [width, height],
                                       "crop": options.crop, "flip": options.flip, "face_crops": options.face_crops})
    out.say(result.summary())
    for skipped in result.skipped:
        out.say("  " + tr("{name}: {reason}", name=skipped["name"], reason=skipped["reason"]))
    if why:
        out.say(why)
        out.say(tr("The training folder uses these {repeats} repeats ({folder}); \"--repeats N\" on the next "
                   "import sets others.", repeats=repeats, folder=Path(result.folder).name))
    others = [c.folder_name for c in concepts.list_concepts(version.dataset_dir) if c.name != concept]
    if others:  # made from the same source pictures, so those would be trained twice
        out.warn(tr("Other concept folders are trained too: {folders}. Delete them from {path} if they hold the "
                    "same pictures.", folders=", ".join(others), path=str(version.train_dir)))
    return {"preprocess": result.to_dict(), "concept": {"name": concept, "repeats": repeats, "folder": result.folder},
            "other_concepts": others}


def _say_if_uncaptioned(args: argparse.Namespace, out: Output, version) -> None:
    from lib_trainer.dataset.captions.caption_set import CaptionSet

    captions = CaptionSet(version.train_dir).captions()
    if captions and not any(captions.values()):
        out.say(tr("No picture has a caption yet (a .txt file beside it). Training works without, but then the LoRA "
                   "is tied to no word; give it a trigger word (or write captions with --set FILE=CAPTION):\n  "
                   "{command}", command=command(args, "caption", version.key, "--trigger", "WORD")))


# ---------------------------------------------------------------------------------------------- caption

def cmd_caption(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.dataset.captions.caption_set import CaptionSet
    from lib_trainer.dataset.captions.tags import parse_tags

    ws = open_workspace(args)
    version = find_version(ws, args.target, args)
    edits_asked = bool(args.set or args.trigger or args.add or args.remove or args.replace)
    if args.undo and (edits_asked or args.tagger):
        raise CliError(tr("--undo cannot be combined with other caption changes."), code=EXIT_USAGE)
    if version.busy:
        raise CliError(tr("Version \"{version}\" is training or queued; wait for it to finish.", version=version.key))
    cs = CaptionSet(version.train_dir, trigger_word=version_settings(version).get("trigger") or None)
    if not cs.pictures():
        raise CliError(tr("Version \"{key}\" has no training pictures yet; import and preprocess some first:\n  "
                          "{command}", key=version.key, command=command(args, "import", version.key, "FOLDER")))
    document: Dict[str, Any] = {"ok": True, "command": "caption", "version": version.key, "edits": []}

    if args.undo:
        result = cs.undo()
        out.say(result.message)
        document["undo"] = {"label": result.label, "restored": [cs.relative_name(p) for p in result.restored],
                            "skipped": [{"file": str(p), "why": why} for p, why in result.skipped],
                            "message": result.message}
    elif args.tagger is not None or not (edits_asked or args.list):
        _run_tagger(args, out, ws, version, cs, document)
    for name, text in parse_pairs(args.set, "--set"):
        result = cs.edit_caption(_find_picture(cs, name), text)
        _record_edit(out, cs, document, result)
    if args.replace:
        mapping = dict(parse_pairs(args.replace, "--replace"))
        _record_edit(out, cs, document, cs.replace_tags(mapping))
    if args.remove:
        _record_edit(out, cs, document, cs.remove_tags(args.remove))
    if args.add:
        _record_edit(out, cs, document, cs.add_tags(args.add, at_start=args.add_front))
    if args.trigger:
        previous = version_settings(version).get("trigger") or None
        result = cs.set_trigger_word(args.trigger, previous=previous)
        trigger = ", ".join(parse_tags(args.trigger))
        update_settings(version, trigger=trigger, keep_tokens=result.keep_tokens)
        _record_edit(out, cs, document, result)
        document["trigger"] = trigger
    if args.list:
        _list_captions(out, cs)
    document["captions"] = {cs.relative_name(p): ", ".join(tags) for p, tags in cs.captions().items()}
    last = cs.last_edit()
    document["can_undo"] = last.label if last else None
    if document["edits"] and len(document["edits"]) > 1:
        out.say(tr("Undo (--undo) puts back the last of these changes only."))
    out.emit(document)
    return EXIT_OK


def _run_tagger(args: argparse.Namespace, out: Output, ws, version, cs, document: Dict[str, Any]) -> None:
    from lib_trainer.dataset import tagging

    host = make_host(args, ws)
    taggers = tagging.available_taggers(host)
    tagger_id = args.tagger or (taggers[0].id if taggers else "")

    def progress(done: int, total: int, picture) -> None:
        out.progress(tr("captioning {done}/{total}", done=done, total=total))
        out.emit({"event": "caption", "done": done, "total": total, "picture": str(picture)})

    report = tagging.caption_pictures(host, tagger_id, cs, threshold=args.threshold, existing=args.existing,
                                      trigger_word=version_settings(version).get("trigger") or None, progress=progress)
    out.end_progress()
    out.say(report.summary())
    document["tagging"] = {"tagger": tagger_id, "captioned": len(report.captioned), "failed":
                           [{"file": str(p), "why": why} for p, why in report.failed], "summary": report.summary()}


def _find_picture(cs, name: str) -> Path:
    """A training picture by its path under dataset/train, its file name or its stem."""
    pictures = cs.pictures()
    wanted = name.strip()
    for p in pictures:
        if cs.relative_name(p) == wanted or str(p) == os.path.abspath(wanted):
            return p
    matches = [p for p in pictures if p.name == wanted] or [p for p in pictures if p.stem == wanted]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(tr("There is no training picture \"{name}\" (see them with --list).", name=name))
    raise CliError(tr("\"{name}\" matches several pictures: {names}; give the folder too, e.g. \"{example}\".",
                      name=name, names=", ".join(cs.relative_name(p) for p in matches[:5]),
                      example=cs.relative_name(matches[0])))


def _record_edit(out: Output, cs, document: Dict[str, Any], result) -> None:
    out.say(result.message)
    document["edits"].append({"action": result.action, "label": result.label, "message": result.message,
                              "changed": [cs.relative_name(p) for p in result.changed]})


def _list_captions(out: Output, cs) -> None:
    captions = cs.captions()
    for picture, tags in captions.items():
        out.say(tr("{name}: {caption}", name=cs.relative_name(picture), caption=", ".join(tags) or tr("(no caption)")))
    frequency = cs.frequency()
    if frequency:
        out.say(tr("Most frequent tags: {tags}", tags=", ".join(f"{t.tag} ({t.count})" for t in frequency[:20])))
