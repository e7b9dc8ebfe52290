"""``python -m lib_trainer.cli``: Train Tools headless — the same core as the tab, without a WebUI.

    python -m lib_trainer.cli new 可爱的狗                     # project + version v1
    python -m lib_trainer.cli import 可爱的狗 ~/pictures/dog    # files, folders, .zip → dataset (+ preprocessing)
    python -m lib_trainer.cli caption 可爱的狗 --trigger sks_dog --remove "blue eyes"
    python -m lib_trainer.cli train 可爱的狗 --base model.safetensors --preset person --vram 12
    python -m lib_trainer.cli preview 可爱的狗 && python -m lib_trainer.cli pick 可爱的狗 --lora-dir models/Lora
    python -m lib_trainer.cli status 可爱的狗 · list

A version is named ``PROJECT/VERSION`` (``PROJECT`` alone: its newest version). Every command takes
``--workspace DIR`` (default ``$TRAIN_TOOLS_WORKSPACE`` or ``./outputs/train_tools``) and ``--json`` (one JSON
document on stdout; commands with progress print JSON lines first, the result last). Exit codes: 0 done, 1 failed,
2 usage error, 130 stopped with Ctrl-C.

The host is the standalone one (``lib_trainer.hosts.standalone``): no tagger, txt2img on diffusers. Training runs
through ``lib_trainer.jobs.JobRunner`` in a background ``worker`` process (the trainer outlives a closed terminal;
``train --detach`` returns at once and ``status --follow`` shows the run again). Heavy modules are imported inside
the commands, so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lib_trainer.i18n import set_language, tr

WORKSPACE_ENV = "TRAIN_TOOLS_WORKSPACE"
CKPT_DIR_ENV = "TRAIN_TOOLS_CKPT_DIR"
LORA_DIR_ENV = "TRAIN_TOOLS_LORA_DIR"
LANG_ENV = "TRAIN_TOOLS_LANG"
DEFAULT_WORKSPACE = Path("outputs") / "train_tools"
EXTENSION_ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m lib_trainer.cli"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130
POLL_S = 0.25
QUEUE_NOTICE_S = 2.0  # say that a job waits in the queue once it has waited this long
PLAIN_PROGRESS_EVERY_S = 10.0  # without a terminal, a progress line at most this often (and at each new epoch)
DEFAULT_VRAM_GB = 8

# Library exceptions whose message is written for the person (exit 1, no traceback). Matched by class name so
# that main() never has to import the modules that define them.
_USER_ERRORS = {"ProjectError", "InvalidName", "ConfigError", "CaptionError", "ConceptError", "PreprocessError",
                "PreviewError", "HostError", "JobError", "ImageProblem"}


class CliError(Exception):
    """A failure to report plainly: ``code`` 1 (failed) or 2 (usage), optional per-field ``problems``."""

    def __init__(self, message: str, code: int = EXIT_FAILED, problems: Optional[List[Dict[str, str]]] = None,
                 data: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.problems = problems or []
        self.data = data or {}


def _is_user_error(exc: BaseException) -> bool:
    return any(cls.__name__ in _USER_ERRORS and cls.__module__.startswith("lib_trainer")
               for cls in type(exc).__mro__)


# ---------------------------------------------------------------------------------------------- output

class Output:
    """Text for people (progress on one updating line when stdout is a terminal) or JSON for machines."""

    def __init__(self, as_json: bool, stream=None, errors=None):
        self.json = as_json
        self.stream = stream or sys.stdout
        self.errors = errors or sys.stderr
        self.tty = not as_json and _isatty(self.stream)
        self._line = 0  # length of the updating line on screen

    def say(self, text: str = "") -> None:
        if not self.json:
            self._clear()
            print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        self._clear()
        print(text, file=self.errors, flush=True)

    def progress(self, text: str) -> None:
        """One progress line: rewritten in place on a terminal, a plain line otherwise (callers limit the rate)."""
        if self.json:
            return
        if self.tty:
            text = text[:max(20, shutil.get_terminal_size().columns - 1)]  # a wrapped line cannot be rewritten
            self.stream.write("\r" + text + " " * max(0, self._line - len(text)))
            self.stream.flush()
            self._line = len(text)
        else:
            print(text, file=self.stream, flush=True)

    def emit(self, document: Dict[str, Any]) -> None:
        """One JSON line (progress events and the final document), only with --json."""
        if self.json:
            print(json.dumps(document, ensure_ascii=False, default=str), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._line:
            self.stream.write("\r" + " " * self._line + "\r")
            self.stream.flush()
            self._line = 0

    def end_progress(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = 0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- helpers

def _workspace(args: argparse.Namespace):
    from lib_trainer.projects import Workspace

    return Workspace(Path(args.workspace).expanduser())


def _split_target(target: str) -> Tuple[str, Optional[str]]:
    """``PROJECT/VERSION`` → (project, version); ``PROJECT`` → (project, None). Names cannot hold "/"."""
    text = target.strip()
    if "/" in text:
        project, version = text.split("/", 1)
        return project, version or None
    return text, None


def _version(ws, target: str):
    """The version a target names; a project alone means its newest version."""
    from lib_trainer.projects import NotFound

    project_name, version_name = _split_target(target)
    project = ws.project(project_name)
    if version_name:
        return project.version(version_name)
    versions = project.versions()
    if not versions:
        raise NotFound(tr("Project \"{project}\" has no version yet: create one with \"new {project}/v1\".",
                          project=project.name))
    return versions[-1]


def _ckpt_dirs(args: argparse.Namespace) -> List[Path]:
    dirs = list(getattr(args, "ckpt_dir", None) or [])
    if not dirs and os.environ.get(CKPT_DIR_ENV):
        dirs = [d for d in os.environ[CKPT_DIR_ENV].split(os.pathsep) if d]
    if not dirs:
        dirs = [str(Path("models") / "Stable-diffusion")]
    return [Path(d).expanduser().resolve() for d in dirs]


def _lora_dir(args: argparse.Namespace, required: bool) -> Optional[Path]:
    wanted = getattr(args, "lora_dir", None) or os.environ.get(LORA_DIR_ENV)
    if wanted:
        return Path(wanted).expanduser().resolve()
    default = Path("models") / "Lora"
    if default.is_dir():
        return default.resolve()
    if required:
        raise CliError(tr("Say where the Lora folder is: --lora-dir DIR (for a WebUI: its models/Lora)."),
                       code=EXIT_USAGE)
    return None


def _use_trainer_deps() -> None:
    """Put the trainer's private dependencies on this process's path (the CLI is not the WebUI process)."""
    from lib_trainer import deps

    folder = str(deps.default_deps_dir())
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)


def _host(args: argparse.Namespace, ws):
    """The standalone host: checkpoints from --ckpt-dir, LoRAs into --lora-dir."""
    _use_trainer_deps()
    from lib_trainer.hosts.standalone import StandaloneHost

    lora_dir = _lora_dir(args, required=False) or ws.root / "models" / "Lora"
    return StandaloneHost(ws.root, _ckpt_dirs(args), lora_dir=lora_dir, outputs_dir=ws.root)


def _settings(version) -> Dict[str, Any]:
    return dict(version.state().get("settings") or {})


def _update_settings(version, **changes: Any) -> Dict[str, Any]:
    settings = _settings(version)
    settings.update(changes)
    version.update(settings=settings)
    return settings


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it reads as JSON (numbers, true/false, null, lists, quoted text), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_pairs(items: Optional[Sequence[str]], option: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in items or []:
        if "=" not in item:
            raise CliError(tr("{option} needs KEY=VALUE, got \"{item}\".", option=option, item=item), code=EXIT_USAGE)
        key, value = item.split("=", 1)
        if not key.strip():
            raise CliError(tr("{option} needs KEY=VALUE, got \"{item}\".", option=option, item=item), code=EXIT_USAGE)
        pairs.append((key.strip(), value))
    return pairs


def _size(text: str) -> Tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(tr("expected WIDTHxHEIGHT or one number, got \"{text}\"", text=text))
    return parts[0], parts[1]


def _weights(text: str) -> List[float]:
    try:
        return [float(w) for w in text.replace(" ", ",").split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(tr("expected numbers separated by commas, got \"{text}\"", text=text))


def _duration(seconds: Optional[float]) -> str:
    from lib_trainer.config import format_duration

    return format_duration(seconds)


def _epoch(iso: Optional[str]) -> float:
    """Unix time of a projects.now_iso() stamp (0 when there is none), to tell this run's events from older ones."""
    from datetime import datetime

    try:
        return datetime.strptime(str(iso), "%Y-%m-%dT%H:%M:%S%z").timestamp() - 1.0
    except ValueError:
        return 0.0


def _status_label(status: str) -> str:
    labels = {"draft": tr("draft"), "queued": tr("queued"), "running": tr("training"), "finished": tr("finished"),
              "failed": tr("failed"), "cancelled": tr("stopped"), "interrupted": tr("interrupted"),
              "done": tr("done"), "removed": tr("removed from the queue")}
    return labels.get(status, status)


def _checkpoint_dicts(version) -> List[Dict[str, Any]]:
    return [c.to_dict() for c in version.checkpoints()]


def _say_checkpoints(out: Output, version) -> None:
    checkpoints = version.checkpoints()
    if not checkpoints:
        out.say(tr("No checkpoints yet."))
        return
    out.say(tr("Checkpoints ({count}):", count=len(checkpoints)))
    for c in checkpoints:
        out.say("  " + tr("{path}  (epoch {epoch}, step {step}, {size} MB)", path=str(c.path),
                          epoch=c.epoch if c.epoch is not None else "?", step=c.step if c.step is not None else "?",
                          size=f"{c.size / 2**20:.1f}"))


# ---------------------------------------------------------------------------------------------- new, list

def cmd_new(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.names import validate_name
    from lib_trainer.projects import DEFAULT_VERSION, AlreadyExists, NotFound

    ws = _workspace(args)
    project_name, version_name = _split_target(args.target)
    project_name = validate_name(project_name, tr("project name"))
    if version_name:  # checked before anything is created
        version_name = validate_name(version_name, tr("version name"))
    try:
        project = ws.project(project_name)
    except NotFound:
        project = None
    if project is None:
        if args.from_version:
            raise NotFound(tr("Project \"{project}\" does not exist.", project=project_name))
        project = ws.create_project(project_name, first_version=version_name or DEFAULT_VERSION)
        version = project.version(version_name or DEFAULT_VERSION)
        out.say(tr("Created project \"{project}\" with version \"{version}\": {path}", project=project.name,
                   version=version.name, path=str(version.path)))
    else:
        if not version_name:
            raise AlreadyExists(tr("A project named \"{project}\" already exists; name a new version: "
                                   "\"{project}/v2\".", project=project.name))
        source = None
        if args.from_version:  # "v1" or "PROJECT/v1" (a version of this project)
            source = _split_target(args.from_version)[1] or args.from_version
        version = project.create_version(version_name, from_version=source)
        if source:
            out.say(tr("Created version \"{version}\" of \"{project}\" from \"{source}\" (dataset, captions and "
                       "settings copied): {path}", version=version.name, project=project.name, source=source,
                       path=str(version.path)))
        else:
            out.say(tr("Created version \"{version}\" of \"{project}\": {path}", version=version.name,
                       project=project.name, path=str(version.path)))
    out.say(tr("Next: import pictures with \"{prog} import {target} FOLDER\".", prog=PROG, target=version.key))
    out.emit({"ok": True, "command": "new", "project": project.name, "version": version.to_dict()})
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    ws = _workspace(args)
    projects = [ws.project(args.project)] if args.project else ws.projects()
    data = []
    for project in projects:
        versions = []
        for v in project.versions():
            state = v.state()
            versions.append({"name": v.name, "key": v.key, "status": state.get("status", "draft"),
                             "created": state.get("created"), "output_name": state.get("output_name"),
                             "checkpoints": len(v.checkpoints()), "path": str(v.path)})
        data.append({"name": project.name, "path": str(project.path), "versions": versions})
    if not data:
        out.say(tr("No projects in {workspace} yet: create one with \"{prog} new NAME\".", workspace=str(ws.root),
                   prog=PROG))
    for project in data:
        out.say(project["name"])
        for v in project["versions"]:
            out.say("  " + tr("{version}  {status}  {count} checkpoint(s)  created {created}", version=v["name"],
                              status=_status_label(v["status"]), count=v["checkpoints"], created=v["created"] or "?"))
    out.emit({"ok": True, "command": "list", "workspace": str(ws.root), "projects": data})
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- import

def cmd_import(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.dataset import importer

    ws = _workspace(args)
    version = _version(ws, args.target)
    if version.busy:
        raise CliError(tr("Version \"{version}\" is training or queued; wait for it to finish.", version=version.key))
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise CliError(tr("Not found: {paths}", paths=", ".join(missing)))

    def progress(done: int, total: int, name: str) -> None:
        out.progress(tr("importing {done}/{total}: {name}", done=done, total=total, name=name))
        out.emit({"event": "import", "done": done, "total": total, "name": name})

    report = importer.import_pictures([Path(p).resolve() for p in args.paths], version.source_dir,
                                      progress=progress if (out.tty or out.json) else None)
    out.end_progress()
    out.say(report.to_markdown())
    document: Dict[str, Any] = {"ok": True, "command": "import", "version": version.key, "report": report.to_dict()}
    usable = len(report.imported) + len(report.duplicates)
    code = EXIT_OK
    if not usable:
        code = EXIT_FAILED
        document["ok"] = False
        document["error"] = tr("No picture could be imported.")
        out.warn(document["error"])
    elif not args.no_preprocess:
        document.update(_preprocess(args, out, version))
    out.emit(document)
    return code


def _preprocess(args: argparse.Namespace, out: Output, version) -> Dict[str, Any]:
    """Make dataset/train/<repeats>_<concept>/ from dataset/source/ (the concept and options are remembered)."""
    from lib_trainer.dataset import concepts, preprocess
    from lib_trainer.dataset.images import iter_images

    saved = dict(_settings(version).get("dataset") or {})
    existing = concepts.list_concepts(version.dataset_dir)
    concept = args.concept or saved.get("concept") or (existing[0].name if len(existing) == 1 else
                                                        version.project.name)
    previous = next((c for c in existing if c.name == concept), None)
    pictures = sum(1 for _ in iter_images(version.source_dir))
    preset = (_settings(version).get("train") or {}).get("preset")
    if args.repeats:
        repeats, why = concepts.validate_repeats(args.repeats), ""
    elif previous is not None:
        repeats, why = previous.repeats, ""
    else:
        repeats, why = concepts.suggest_repeats(pictures, preset)
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
    _update_settings(version, dataset={"concept": concept, "repeats": repeats, "size": [width, height],
                                       "crop": options.crop, "flip": options.flip, "face_crops": options.face_crops})
    out.say(result.summary())
    for skipped in result.skipped:
        out.say("  " + tr("{name}: {reason}", name=skipped["name"], reason=skipped["reason"]))
    if why:
        out.say(why)
    others = [c.folder_name for c in concepts.list_concepts(version.dataset_dir) if c.name != concept]
    if others:  # made from the same source pictures, so those would be trained twice
        out.warn(tr("Other concept folders are trained too: {folders}. Delete them from {path} if they hold the "
                    "same pictures.", folders=", ".join(others), path=str(version.train_dir)))
    return {"preprocess": result.to_dict(), "concept": {"name": concept, "repeats": repeats, "folder": result.folder},
            "other_concepts": others}


# ---------------------------------------------------------------------------------------------- caption

def cmd_caption(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.dataset.captions import CaptionSet, split_tags

    ws = _workspace(args)
    version = _version(ws, args.target)
    edits_asked = bool(args.set or args.trigger or args.add or args.remove or args.replace)
    if args.undo and (edits_asked or args.tagger):
        raise CliError(tr("--undo cannot be combined with other caption changes."), code=EXIT_USAGE)
    if version.busy:
        raise CliError(tr("Version \"{version}\" is training or queued; wait for it to finish.", version=version.key))
    cs = CaptionSet(version.train_dir, trigger_word=_settings(version).get("trigger") or None)
    if not cs.pictures():
        raise CliError(tr("Version \"{version}\" has no training pictures yet: run \"{prog} import {version} "
                          "FOLDER\" first.", version=version.key, prog=PROG))
    document: Dict[str, Any] = {"ok": True, "command": "caption", "version": version.key, "edits": []}

    if args.undo:
        result = cs.undo()
        out.say(result.message)
        document["undo"] = {"label": result.label, "restored": [cs.relative_name(p) for p in result.restored],
                            "skipped": [{"file": str(p), "why": why} for p, why in result.skipped],
                            "message": result.message}
    elif args.tagger is not None or not (edits_asked or args.list):
        _run_tagger(args, out, ws, version, cs, document)
    for name, text in _parse_pairs(args.set, "--set"):
        result = cs.edit_caption(_find_picture(cs, name), text)
        _record_edit(out, cs, document, result)
    if args.replace:
        mapping = dict(_parse_pairs(args.replace, "--replace"))
        _record_edit(out, cs, document, cs.replace_tags(mapping))
    if args.remove:
        _record_edit(out, cs, document, cs.remove_tags(args.remove))
    if args.add:
        _record_edit(out, cs, document, cs.add_tags(args.add, at_start=args.add_front))
    if args.trigger:
        previous = _settings(version).get("trigger") or None
        result = cs.set_trigger_word(args.trigger, previous=previous)
        trigger = ", ".join(split_tags(args.trigger))
        _update_settings(version, trigger=trigger, keep_tokens=result.keep_tokens)
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

    host = _host(args, ws)
    taggers = tagging.available_taggers(host)
    tagger_id = args.tagger or (taggers[0].id if taggers else "")

    def progress(done: int, total: int, picture) -> None:
        out.progress(tr("captioning {done}/{total}", done=done, total=total))
        out.emit({"event": "caption", "done": done, "total": total, "picture": str(picture)})

    report = tagging.caption_pictures(host, tagger_id, cs, threshold=args.threshold, existing=args.existing,
                                      trigger_word=_settings(version).get("trigger") or None, progress=progress)
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


# ---------------------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer import config
    from lib_trainer.jobs import JobRunner
    from lib_trainer.trainer import schema

    ws = _workspace(args)
    version = _version(ws, args.target)
    if version.busy:
        raise CliError(tr("\"{key}\" is already queued or training; see \"{prog} status {key}\".", key=version.key,
                          prog=PROG))
    runner = JobRunner(ws, host=None)
    if args.resume:
        _remember_preview_choice(args, version)
        job = runner.resume(version.project.name, version.name)
        out.say(tr("Resuming \"{key}\" from {state}.", key=version.key, state=job.resume))
    else:
        cfg, arch = _build_config(args, out, version)
        est = config.estimate(cfg, arch, *config.last_speed(version.read_events()))
        out.say(config.describe_estimate(est))
        schema.save_config(cfg, version.config_path)
        earlier = version.checkpoints()
        if earlier:
            out.warn(tr("{count} checkpoint(s) of an earlier run stay in {folder} (files of the same name are "
                        "replaced); to keep runs apart, train a new version: \"{prog} new {project}/NEW --from "
                        "{version}\".", count=len(earlier), folder=str(version.checkpoints_dir), prog=PROG,
                        project=version.project.name, version=version.name))
        _remember_preview_choice(args, version)
        job = runner.submit(version.project.name, version.name)
    submitted = time.time()
    worker = _spawn_worker(args, ws)
    if args.detach:
        out.say(tr("Queued \"{key}\" as job {job} (position {position}); it trains in the background. Follow it "
                   "with \"{prog} status {key} --follow\".", key=version.key, job=job.id,
                   position=job.position or 1, prog=PROG))
        out.emit({"ok": True, "command": "train", "detached": True, "version": version.key, "job": job.to_dict(),
                  "worker_pid": worker.pid})
        return EXIT_OK
    code, document = _follow(out, runner, version, job.id, since=submitted - 1.0, worker=worker, command="train")
    if code == EXIT_OK and _auto_preview(version):
        _wait_for_preview(out, version, worker, document)
    out.emit(document)
    return code


def _remember_preview_choice(args: argparse.Namespace, version) -> None:
    if args.preview is not None:  # read by the job runner's after-train hook (settings "auto_preview")
        _update_settings(version, auto_preview=bool(args.preview))


def _build_config(args: argparse.Namespace, out: Output, version):
    """The version's trainer config from --base/--preset/--vram/--set and what the version used last time."""
    from lib_trainer import config
    from lib_trainer.trainer import schema

    saved = dict(_settings(version).get("train") or {})
    overrides: Dict[str, Any] = dict(saved.get("overrides") or {})
    for key, value in _parse_pairs(args.set, "--set"):
        if key not in schema.FIELDS:
            raise CliError(tr("Unknown config key \"{key}\" in --set; keys follow sd-scripts' names (e.g. "
                              "max_train_epochs, network_dim).", key=key), code=EXIT_USAGE)
        overrides[key] = _parse_value(value)
    if args.epochs is not None:
        overrides["max_train_epochs"] = args.epochs
    if args.resolution is not None:
        res = args.resolution
        overrides.update(resolution=f"{res[0]},{res[1]}", min_bucket_reso=max(64, min(res) // 2 // 64 * 64),
                         max_bucket_reso=max(res) * 2)
    effective = dict(overrides)
    keep_tokens = _settings(version).get("keep_tokens")  # protects the trigger word set with "caption --trigger"
    if "keep_tokens" not in effective and keep_tokens:
        effective["keep_tokens"] = int(keep_tokens)
    preset = args.preset or saved.get("preset") or config.PRESETS[0]
    vram = args.vram or saved.get("vram_gb") or DEFAULT_VRAM_GB
    wanted = args.base or saved.get("base_model") or ""
    sample_prompt = args.sample_prompt if args.sample_prompt is not None else saved.get("sample_prompt", "")
    base, arch, problems = _resolve_base(args, version, wanted)
    try:
        cfg = config.build_config(config.VersionPaths.of(version), base, arch, preset, vram, effective,
                                  sample_prompt=sample_prompt or None)
    except schema.ConfigError as exc:
        raise CliError(str(exc), problems=[{"field": "config", "message": str(exc)}]) from None
    problems += [{"field": p.field, "message": p.message} for p in config.check(cfg)]
    if problems:
        for p in problems:
            out.warn(tr("{field}: {message}", field=p["field"], message=p["message"]))
        raise CliError(tr("The training cannot start: {count} problem(s) to fix first.", count=len(problems)),
                       problems=problems)
    # Remembered only once they make a valid config: the next "train" without options runs the same again.
    _update_settings(version, train={"base_model": wanted, "arch": arch, "base_stamp": _base_stamp(base),
                                     "preset": preset, "vram_gb": vram, "overrides": overrides,
                                     "sample_prompt": sample_prompt})
    out.say(tr("Base model {model} ({arch}), preset {preset}, {vram} GB VRAM tier.", model=base, arch=arch,
               preset=config.preset_label(preset), vram=vram))
    return cfg, arch


def _resolve_base(args: argparse.Namespace, version, wanted: str) -> Tuple[str, str, List[Dict[str, str]]]:
    """(path, architecture, problems) of a base model given as a file or as a title in --ckpt-dir."""
    if not wanted:
        return "", "sd1", []  # config.check says "Choose a base model."
    path = Path(wanted).expanduser()
    if not path.is_file():
        host = _host(args, version.project.workspace)
        for info in host.checkpoints():
            if wanted in (info.title, info.path, Path(info.path).name, Path(info.path).stem):
                return info.path, info.arch if info.arch != "unknown" else "sd1", _arch_problems(info.arch, info.path)
        return str(path.absolute()), "sd1", []  # config.check says it does not exist
    resolved = path.resolve()
    st = resolved.stat()
    stamp = [str(resolved), st.st_size, st.st_mtime_ns]
    saved = (_settings(version).get("train") or {})
    if saved.get("base_stamp") == stamp and saved.get("arch") in ("sd1", "sd2", "sd2-v", "sdxl"):
        return str(resolved), saved["arch"], []  # the same file as last time: no need to open it (and torch) again
    _use_trainer_deps()
    from lib_trainer.hosts.standalone import detect_checkpoint_arch

    arch = detect_checkpoint_arch(resolved)
    return str(resolved), arch if arch != "unknown" else "sd1", _arch_problems(arch, str(path))


def _base_stamp(path: str) -> Optional[List[Any]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_size, st.st_mtime_ns]


def _arch_problems(arch: str, path: str) -> List[Dict[str, str]]:
    if arch != "unknown":
        return []
    return [{"field": "pretrained_model_name_or_path",
             "message": tr("{path} is not a Stable Diffusion 1, 2 or XL checkpoint this trainer can read.",
                           path=path)}]


def _spawn_worker(args: argparse.Namespace, ws):
    """A background ``worker`` that runs the workspace's queue until it is empty (own session, so Ctrl-C in this
    terminal does not reach it; this command stops the job through the queue instead)."""
    import subprocess

    command = [sys.executable, "-m", "lib_trainer.cli", "worker", "--workspace", str(ws.root)]
    for folder in _ckpt_dirs(args):
        command += ["--ckpt-dir", str(folder)]
    lora_dir = _lora_dir(args, required=False)
    if lora_dir is not None:
        command += ["--lora-dir", str(lora_dir)]
    if getattr(args, "python", None):
        command += ["--python", args.python]
    if getattr(args, "gpu", None):
        command += ["--gpu", args.gpu]
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(EXTENSION_ROOT)] + paths)
    env["PYTHONUNBUFFERED"] = "1"
    log_dir = ws.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    kwargs: Dict[str, Any] = {}
    if os.name == "nt":  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    with open(log_dir / "worker.log", "ab") as log:
        return subprocess.Popen(command, cwd=str(EXTENSION_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, close_fds=True, **kwargs)


class _Progress:
    """Trainer events → one updating line (terminal), plain lines (pipe) or JSON lines (--json)."""

    def __init__(self, out: Output):
        self.out = out
        self.total: Optional[int] = None
        self.epochs: Optional[int] = None
        self.last_plain = 0.0
        self.last_epoch: Optional[int] = None

    def event(self, event: Dict[str, Any]) -> None:
        out = self.out
        out.emit(event)
        kind = event.get("event")
        if kind == "start":
            self.total, self.epochs = event.get("total_steps"), event.get("epochs")
            out.say(tr("Training on {device}: {images} pictures × repeats per epoch, {epochs} epochs, {steps} steps.",
                       device=event.get("device", "?"), images=event.get("images", "?"), epochs=self.epochs or "?",
                       steps=self.total or "?"))
        elif kind == "step":
            line = self.line(event)
            now = time.monotonic()
            new_epoch = event.get("epoch") != self.last_epoch
            last = event.get("step") == self.total
            if out.tty or new_epoch or last or now - self.last_plain >= PLAIN_PROGRESS_EVERY_S:
                out.progress(line)
                self.last_plain, self.last_epoch = now, event.get("epoch")
        elif kind == "checkpoint":
            out.say(tr("checkpoint (epoch {epoch}, step {step}): {path}", epoch=event.get("epoch"),
                       step=event.get("step"), path=event.get("path")))
        elif kind == "sample":
            out.say(tr("sample image: {path}", path=event.get("path")))
        elif kind == "warning" and not out.json:
            out.warn(tr("warning: {message}", message=event.get("message", "")))

    def line(self, e: Dict[str, Any]) -> str:
        loss = e.get("loss")
        speed = e.get("it_per_s")
        return tr("step {step}/{total} · epoch {epoch}/{epochs} · loss {loss} · {speed} it/s · ETA {eta}",
                  step=e.get("step", "?"), total=self.total or "?", epoch=e.get("epoch", "?"),
                  epochs=self.epochs or "?",
                  loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "?",
                  speed=f"{speed:.2f}" if isinstance(speed, (int, float)) else "?", eta=_duration(e.get("eta_s")))


def _follow(out: Output, runner, version, job_id: str, since: float, worker=None,
            command: str = "train") -> Tuple[int, Dict[str, Any]]:
    """Show a job's progress until it ends; Ctrl-C asks the trainer to save and stop (twice: stop it at once)."""
    from lib_trainer.jobs import ACTIVE_STATUSES, EventTail

    progress = _Progress(out)
    tail = None
    stops = 0
    last_status: Optional[Tuple[str, Optional[int]]] = None
    queued_since, told = time.monotonic(), False
    while True:
        try:
            job = runner.store.get(job_id)
            state = version.state()
            if tail is None and state.get("job_id") == job_id and state.get("status") != "queued":
                tail = EventTail(version.events_path)  # the runner has started this run's events file by now
            ended = job is None or job.status not in ACTIVE_STATUSES
            if tail is not None:
                for event in tail.read(final=ended):
                    if float(event.get("time") or 0) >= since:
                        progress.event(event)
            status = (job.status, job.position) if job is not None else ("removed", None)
            if status != last_status:
                last_status, queued_since, told = status, time.monotonic(), False
                out.emit({"event": "job", "id": job_id, "status": status[0], "position": status[1]})
            if status[0] == "queued" and not told and time.monotonic() - queued_since > QUEUE_NOTICE_S:
                told = True  # a job that starts at once needs no word about the queue
                out.say(tr("Waiting in the queue (position {position}).", position=status[1] or 1))
            if ended:
                break
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            stops += 1
            out.end_progress()
            if stops == 1:
                with _no_interrupts():  # a second Ctrl-C must not cut the queue update in half
                    runner.stop(version.project.name, version.name)
                out.warn(tr("Stopping: the trainer saves a checkpoint and exits (Ctrl-C again to stop it at once)."))
            elif stops == 2:
                with _no_interrupts():
                    _kill_trainer(runner, job_id)
                out.warn(tr("Stopping at once."))
            else:
                return EXIT_STOPPED, {"ok": False, "command": command, "version": version.key, "status": "stopping"}
    out.end_progress()
    if worker is not None and not _auto_preview(version):
        try:
            worker.wait(timeout=10)  # it exits once the queue is empty; never leave a zombie behind
        except Exception:
            pass
    return _conclude(out, runner, version, job_id, stopped_by_user=stops > 0, command=command)


def _auto_preview(version) -> bool:
    return bool(_settings(version).get("auto_preview"))


def _wait_for_preview(out: Output, version, worker, document: Dict[str, Any]) -> None:
    """After a foreground run with --preview: the worker draws the grid; wait for it and say where it is."""
    from lib_trainer import preview

    out.say(tr("Drawing the preview grid …"))
    try:
        worker.wait()
    except KeyboardInterrupt:
        out.warn(tr("The preview goes on in the background; \"{prog} preview {key}\" shows it when it is done.",
                    prog=PROG, key=version.key))
        return
    error = (version.state().get("after_train_error") or {}).get("message")
    grids = preview.grid_files(version)
    if error:
        out.warn(tr("The preview failed: {message}", message=error))
    for grid in grids:
        out.say(tr("Grid of prompt {n}: {path}", n=grid.prompt_index + 1, path=str(grid.path)))
    document["preview"] = {"grids": [str(g.path) for g in grids], "error": error}


class _no_interrupts:
    """Ignore SIGINT for the duration of a with-block (main thread only; elsewhere it does nothing)."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _kill_trainer(runner, job_id: str) -> None:
    from lib_trainer.jobs import find_trainer

    job = runner.store.get(job_id)
    proc = find_trainer(job) if job is not None else None
    if proc is None:
        return
    try:
        if os.name != "nt" and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except Exception:
        pass


def _conclude(out: Output, runner, version, job_id: str, stopped_by_user: bool,
              command: str) -> Tuple[int, Dict[str, Any]]:
    state = version.state()
    job = runner.store.get(job_id)
    status = state.get("status", "draft")
    document: Dict[str, Any] = {"ok": status == "finished", "command": command, "version": version.key,
                                "status": status, "job": job.to_dict() if job else None,
                                "checkpoints": _checkpoint_dicts(version), "error": state.get("error")}
    if status == "finished":
        out.say(tr("Training of \"{key}\" finished.", key=version.key))
        _say_checkpoints(out, version)
        out.say(tr("Next: \"{prog} preview {key}\" draws every checkpoint at several weights.", prog=PROG,
                   key=version.key))
        code = EXIT_OK
    elif status == "failed":
        error = state.get("error") or {}
        message = error.get("message") or tr("The trainer failed.")
        document["message"] = message
        out.warn(tr("Training failed: {message}", message=message))
        if error.get("log_tail") and not out.json:
            out.warn(error["log_tail"])
        out.warn(tr("Full log: {path}", path=str(version.log_path)))
        code = EXIT_FAILED
    else:  # cancelled, interrupted, or removed from the queue (draft)
        message = state.get("message") or tr("Training of \"{key}\" stopped.", key=version.key)
        document["message"] = message
        out.warn(message)
        if state.get("resumable"):
            out.warn(tr("Continue it with \"{prog} train {key} --resume\".", prog=PROG, key=version.key))
        if version.checkpoints():
            _say_checkpoints(out, version)
        code = EXIT_STOPPED if stopped_by_user else EXIT_FAILED
    return code, document


class _DeferredHost:
    """The worker's host for the job runner: the standalone host is built only when a preview draws after training.
    Until then this process holds no model, so releasing the GPU before a trainer starts has nothing to free (and
    needs no torch import, which would delay every trainer start)."""

    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._host: Any = None

    def get(self) -> Any:
        if self._host is None:
            self._host = self._make()
        return self._host

    def release_gpu(self) -> None:
        if self._host is not None:
            self._host.release_gpu()

    def restore_gpu(self) -> None:
        if self._host is not None:
            self._host.restore_gpu()


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    """Run the queue of a workspace until no job is queued or running (what `train` starts in the background)."""
    from lib_trainer.jobs import ACTIVE_STATUSES, JobRunner, RunnerSettings

    ws = _workspace(args)
    host = _DeferredHost(lambda: _host(args, ws))

    def after_train(version) -> None:
        from lib_trainer import preview

        result = preview.run_preview(version, host.get())
        print(f"preview of {version.key}: {[str(g.path) for g in result.grids]}", flush=True)

    settings = RunnerSettings(python=args.python, gpu=args.gpu)
    runner = JobRunner(ws, host, settings, after_train=after_train).start()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()} on {ws.root}", flush=True)
    try:
        while any(j.status in ACTIVE_STATUSES for j in runner.jobs()):
            time.sleep(POLL_S * 2)
    finally:
        runner.shutdown(stop_running=False)  # after_train (the preview) ends before this returns
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: queue empty", flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- status

def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.jobs import ACTIVE_STATUSES, JobRunner

    ws = _workspace(args)
    runner = JobRunner(ws, host=None)
    if not args.target:
        jobs = runner.jobs()
        if args.all is False:
            jobs = [j for j in jobs if j.status in ACTIVE_STATUSES] or jobs[-10:]
        if not jobs:
            out.say(tr("No training jobs in {workspace}.", workspace=str(ws.root)))
        for job in jobs:
            where = tr(" (position {position})", position=job.position) if job.status == "queued" else ""
            out.say(tr("{id}  {key}  {status}{where}  {message}", id=job.id, key=job.key,
                       status=_status_label(job.status), where=where, message=job.message or ""))
        if any(_stuck(j.to_dict()) for j in jobs) and not _queue_is_run(ws):
            out.warn(tr("No Train Tools process is running the queue; \"{prog} worker\" picks the jobs up.",
                        prog=PROG))
        out.emit({"ok": True, "command": "status", "jobs": [j.to_dict() for j in jobs]})
        return EXIT_OK
    version = _version(ws, args.target)
    status = runner.status(version.project.name, version.name, events=args.events)
    job = status.get("job")
    unattended = bool(job and _stuck(job) and not _queue_is_run(ws))
    if args.follow and job and job.get("status") in ACTIVE_STATUSES:
        if unattended:  # e.g. after a restart: somebody has to run (or settle) the job to follow it
            _spawn_worker(args, ws)
        code, document = _follow(out, runner, version, job["id"],
                                 since=_epoch(job.get("started") or job.get("created")), command="status")
        out.emit(document)
        return code
    if unattended:
        out.warn(tr("No Train Tools process is running the queue; \"{prog} worker\" (or \"status {key} --follow\") "
                    "picks the job up.", prog=PROG, key=version.key))
    status["unattended"] = unattended
    status["checkpoints_on_disk"] = _checkpoint_dicts(version)
    _say_status(out, version, status)
    out.emit({"ok": True, "command": "status", **status})
    return EXIT_OK


def _stuck(job: Dict[str, Any]) -> bool:
    """A job that should be moving if a runner were there: running (runners hold the trainer lock throughout) or
    queued for a while (a runner claims a queued job within a second)."""
    if job.get("status") == "running":
        return True
    return job.get("status") == "queued" and time.time() - _epoch(job.get("created")) > QUEUE_NOTICE_S * 5


def _queue_is_run(ws) -> bool:
    """Whether some runner (a worker, the app or the WebUI) holds the workspace's trainer lock right now."""
    from lib_trainer.jobs import FileLock

    lock = FileLock(ws.root / ".trainer.lock")
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def _say_status(out: Output, version, status: Dict[str, Any]) -> None:
    state = status.get("status", "draft")
    position = tr(" (position {position} in the queue)", position=status["position"]) if status.get("position") else ""
    out.say(tr("{key}: {status}{position}", key=version.key, status=_status_label(state), position=position))
    if state == "running" and status.get("step") is not None:
        progress = _Progress(out)
        progress.total, progress.epochs = status.get("total_steps"), status.get("epochs")
        out.say("  " + progress.line(status))
    error = status.get("error") or {}
    if error.get("message"):
        out.say("  " + tr("error: {message}", message=error["message"]))
    if status.get("resumable"):
        out.say("  " + tr("resumable: \"{prog} train {key} --resume\"", prog=PROG, key=version.key))
    _say_checkpoints(out, version)
    events = status.get("events") or []
    if events:
        out.say(tr("Last events:"))
        for event in events:
            fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time", "traceback_tail"))
            stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time") or 0)))
            out.say(f"  {stamp} {event.get('event')}: {fields}"[:300])


# ---------------------------------------------------------------------------------------------- preview, pick

def cmd_preview(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer import preview

    ws = _workspace(args)
    version = _version(ws, args.target)
    if not version.checkpoints() and not args.set_only:
        raise CliError(tr("Version \"{version}\" has no checkpoints yet: train it first.", version=version.key))
    host = _host(args, ws)
    cfg = preview.load_config(version, host)
    changes = {k: v for k, v in (("prompts", args.prompt), ("negative_prompt", args.negative),
                                 ("weights", args.weights), ("seed", args.seed), ("steps", args.steps),
                                 ("cfg_scale", args.cfg), ("sampler", args.sampler), ("clip_skip", args.clip_skip),
                                 ("base_model", args.base)) if v is not None}
    if args.size:
        changes["width"], changes["height"] = args.size
    if args.no_reference:
        changes["reference"] = False
    if changes or args.set_only:
        cfg = preview.PreviewConfig.from_dict({**cfg.to_dict(), **changes})
        preview.save_config(version, cfg)
    if args.set_only:
        out.say(tr("Preview settings of \"{key}\" saved: {weights} weight(s) × {prompts} prompt(s), "
                   "{width}×{height}, {steps} steps, seed {seed}.", key=version.key, weights=len(cfg.weights),
                   prompts=len(cfg.prompts), width=cfg.width, height=cfg.height, steps=cfg.steps, seed=cfg.seed))
        out.emit({"ok": True, "command": "preview", "version": version.key, "saved": True, "config": cfg.to_dict()})
        return EXIT_OK
    stop = threading.Event()

    def progress(done: int, total: int, cell) -> None:
        what = tr("no LoRA") if cell.reference else f"{cell.checkpoint.name} @ {preview.weight_text(cell.weight)}"
        out.progress(tr("drawing {done}/{total}: prompt {prompt}, {what}", done=done, total=total,
                        prompt=cell.prompt_index + 1, what=what))
        out.emit({"event": "cell", "done": done, "total": total, "key": cell.key, "file": cell.file,
                  "checkpoint": cell.checkpoint.name if cell.checkpoint else None, "weight": cell.weight,
                  "prompt_index": cell.prompt_index})

    out.say(tr("Preview of \"{key}\": {checkpoints} checkpoint(s) × {weights} weight(s) × {prompts} prompt(s), "
               "{width}×{height}, {steps} steps, seed {seed}.", key=version.key,
               checkpoints=len(version.checkpoints()), weights=len(cfg.weights), prompts=len(cfg.prompts),
               width=cfg.width, height=cfg.height, steps=cfg.steps, seed=cfg.seed))
    result = _interruptible(lambda: preview.run_preview(version, host, cfg, checkpoints=args.checkpoint or None,
                                                        stop=stop, progress=progress, restart=args.restart),
                            stop, host.interrupt, out)
    out.end_progress()
    for warning in result.warnings:
        out.warn(tr("warning: {message}", message=warning))
    for failure in result.failed:
        out.warn(tr("{key} failed: {message}", key=failure.key, message=failure.message))
    out.say(tr("{drawn} image(s) drawn, {reused} reused from an earlier run, {failed} failed.", drawn=result.drawn,
               reused=result.reused, failed=len(result.failed)))
    for grid in result.grids:
        out.say(tr("Grid of prompt {n}: {path}", n=grid.prompt_index + 1, path=str(grid.path)))
        for page in grid.pages:
            out.say("  " + str(page))
    rec = preview.recommend(version)
    if rec.best:
        out.say(rec.note)
    document = {"ok": result.complete, "command": "preview", "version": version.key, "seed": result.seed,
                "total": result.total, "drawn": result.drawn, "reused": result.reused,
                "failed": [{"key": f.key, "message": f.message} for f in result.failed],
                "interrupted": result.interrupted, "warnings": result.warnings,
                "grids": [{"prompt_index": g.prompt_index, "prompt": g.prompt, "path": str(g.path),
                           "pages": [str(p) for p in g.pages]} for g in result.grids],
                "manifest": str(result.manifest_path), "recommended": rec.best, "recommendation": rec.note,
                "elapsed_s": round(result.elapsed_s, 3)}
    out.emit(document)
    if result.interrupted:
        out.warn(tr("Stopped; run the preview again to draw the rest."))
        return EXIT_STOPPED
    return EXIT_OK if result.complete else EXIT_FAILED


def _interruptible(work: Callable[[], Any], stop: threading.Event, interrupt: Callable[[], None], out: Output) -> Any:
    """Run ``work`` in a thread; Ctrl-C sets ``stop`` and interrupts the host, and the work ends at its pace."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="train-tools-cli", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join(POLL_S)
        except KeyboardInterrupt:
            if not stop.is_set():
                out.end_progress()
                out.warn(tr("Stopping after the current image …"))
            stop.set()
            try:
                interrupt()
            except Exception:
                pass
    if "error" in box:
        raise box["error"]
    return box["result"]


def cmd_pick(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer import pick, preview

    ws = _workspace(args)
    version = _version(ws, args.target)
    lora_dir = _lora_dir(args, required=True)
    checkpoints = version.checkpoints()
    if not checkpoints:
        raise CliError(tr("Version \"{version}\" has no checkpoints yet: train it first.", version=version.key))
    chosen = _choose_checkpoint(version, checkpoints, args.checkpoint)
    host = _host(args, ws)
    assert lora_dir is not None
    try:
        result = pick.use_checkpoint(version, chosen, host, name=args.name, weight=args.weight,
                                     overwrite=args.overwrite)
    except pick.NameTaken as exc:
        raise CliError(str(exc) + " " + tr("(--name NAME picks another name; --overwrite replaces it.)"),
                       data={"suggestion": exc.suggestion}) from None
    for warning in result.warnings:
        out.warn(tr("warning: {message}", message=warning))
    out.say(tr("Copied {checkpoint} to {path}", checkpoint=chosen.name, path=str(result.lora_path)))
    if result.preview_path:
        out.say(tr("Card picture: {path}", path=str(result.preview_path)))
    out.say(tr("Use it in a prompt: {prompt}", prompt=result.prompt))
    out.emit({"ok": True, "command": "pick", "version": version.key, "checkpoint": chosen.name,
              "name": result.name, "lora": str(result.lora_path),
              "preview": str(result.preview_path) if result.preview_path else None,
              "preview_source": result.preview_source, "metadata": str(result.metadata_path),
              "prompt": result.prompt, "warnings": result.warnings, "lora_dir": str(lora_dir)})
    return EXIT_OK


def _choose_checkpoint(version, checkpoints, wanted: Optional[str]):
    """A checkpoint by name, file, epoch number, "best" (the recommendation) or, by default, the final one."""
    from lib_trainer import preview

    if not wanted or wanted == "last":
        return checkpoints[-1]
    if wanted == "best":
        best = preview.recommend(version).best
        if best is None:
            raise CliError(tr("No checkpoint scores were recorded, so there is no recommendation; name the "
                              "checkpoint or its epoch."))
        wanted = best
    if wanted.isdigit():
        found = [c for c in checkpoints if c.epoch == int(wanted)]
        if found:
            return found[-1]
    name = Path(wanted).stem if wanted.endswith(".safetensors") else wanted
    for c in checkpoints:
        if c.name == name:
            return c
    raise CliError(tr("Version \"{version}\" has no checkpoint \"{name}\"; it has: {names}.", version=version.key,
                      name=wanted, names=", ".join(c.name for c in checkpoints)))


# ---------------------------------------------------------------------------------------------- the parser

def _common(json_help: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", metavar="DIR",
                        default=os.environ.get(WORKSPACE_ENV) or str(DEFAULT_WORKSPACE),
                        help=tr("the Train Tools workspace (default: ${env} or ./outputs/train_tools)",
                                env=WORKSPACE_ENV))
    common.add_argument("--lang", metavar="LANG", help=argparse.SUPPRESS)  # read before parsing (see main)
    common.add_argument("--json", action="store_true",
                        help=tr("machine-readable output: one JSON document on stdout (progress as JSON lines "
                                "before it)"))
    return common


def _host_options(parser: argparse.ArgumentParser, lora: bool = False) -> None:
    parser.add_argument("--ckpt-dir", metavar="DIR", action="append",
                        help=tr("folder of base checkpoints (.safetensors/.ckpt), repeatable (default: "
                                "${env} or ./models/Stable-diffusion)", env=CKPT_DIR_ENV))
    if lora:
        parser.add_argument("--lora-dir", metavar="DIR",
                            help=tr("the Lora folder (default: ${env} or ./models/Lora)", env=LORA_DIR_ENV))


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=tr("Train Tools without a browser: projects, datasets, captions, LoRA training, preview grids "
                       "and picking the best checkpoint."),
        epilog=tr("A version is named PROJECT/VERSION; PROJECT alone means its newest version. \"{prog} COMMAND "
                  "--help\" tells more.", prog=PROG),
    )
    parser.add_argument("--lang", metavar="LANG", help=tr("language of the messages, e.g. zh_CN (default: ${env})",
                                                           env=LANG_ENV))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title=tr("commands"))
    sub.required = True

    def add(name: str, summary: str, description: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=summary, description=description)
        p.set_defaults(func=func)
        return p

    p = add("new", tr("create a project (with its first version) or a new version"),
            tr("Create a project and its first version (PROJECT, or PROJECT/VERSION; v1 by default), or a new "
               "version of an existing project (PROJECT/VERSION); with --from, the new version starts as a copy of "
               "another one's dataset, captions and settings."), cmd_new)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("--from", dest="from_version", metavar="VERSION",
                   help=tr("copy dataset, captions and settings from this version of the project"))

    p = add("import", tr("import pictures (files, folders, .zip) into a version and preprocess them"),
            tr("Import pictures into the version's dataset/source (untouched originals; captions beside them "
               "come along), print the import report (every file that cannot be used is named with the reason), "
               "then preprocess them into dataset/train/<repeats>_<concept>/, the folder the trainer reads."),
            cmd_import)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("paths", metavar="PATH", nargs="+", help=tr("picture files, folders or .zip archives"))
    p.add_argument("--concept", help=tr("the concept folder's name (default: the existing concept or the project)"))
    p.add_argument("--repeats", type=int, help=tr("uses of each picture per epoch (default: suggested from the "
                                                  "number of pictures and the preset)"))
    p.add_argument("--size", type=_size, metavar="WxH",
                   help=tr("training picture size, multiples of 64 (default: 512x512)"))
    p.add_argument("--crop", choices=("center", "focal", "none"),
                   help=tr("center, focal (faces, else the busiest part) or none (keep the aspect ratio, train "
                           "with buckets); default: center"))
    p.add_argument("--flip", action="store_true", default=None, help=tr("add a mirrored copy of each picture"))
    p.add_argument("--face-crops", type=int, metavar="N", help=tr("extra close-ups of up to N faces per picture"))
    p.add_argument("--no-preprocess", action="store_true", help=tr("only import into dataset/source"))

    p = add("caption", tr("caption with a tagger, edit captions and tags, undo"),
            tr("Without options, caption the training pictures with the host's tagger (the standalone host has "
               "none: that is an error, and manual captions still work). Tag tools change every caption; each "
               "is one edit that --undo puts back (the last one)."), cmd_caption)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("--tagger", metavar="ID", nargs="?", const="",
                   help=tr("caption with this tagger of the host (default: its first)"))
    p.add_argument("--threshold", type=float, help=tr("the tagger's confidence threshold (0–1)"))
    p.add_argument("--existing", choices=("ignore", "keep", "prepend", "append"), default="ignore",
                   help=tr("what the tagger does with an existing caption (default: ignore = replace it)"))
    p.add_argument("--set", metavar="FILE=CAPTION", action="append",
                   help=tr("write one picture's caption by hand (FILE: its name, stem or concept/name), repeatable"))
    p.add_argument("--trigger", metavar="WORD", help=tr("make WORD the first tag of every caption (protected "
                                                        "from shuffling by keep_tokens)"))
    p.add_argument("--add", metavar="TAGS", help=tr("add these comma-separated tags to every caption"))
    p.add_argument("--add-front", action="store_true", help=tr("with --add: put them first (after the trigger)"))
    p.add_argument("--remove", metavar="TAGS", help=tr("remove these comma-separated tags from every caption"))
    p.add_argument("--replace", metavar="OLD=NEW", action="append",
                   help=tr("replace a tag (NEW may be several tags, or empty to remove it), repeatable"))
    p.add_argument("--undo", action="store_true", help=tr("undo the last caption edit"))
    p.add_argument("--list", action="store_true", help=tr("print every caption and the most frequent tags"))
    _host_options(p)

    p = add("train", tr("train a LoRA on a version (waits and shows progress, or --detach)"),
            tr("Build the version's trainer config from a preset (person, character, style, product), a VRAM tier "
               "and your overrides, check it (each problem with its field), and train through the job queue with "
               "the standalone host. Shows step/epoch/loss/ETA until the end; Ctrl-C stops the trainer gracefully "
               "(it saves a checkpoint). Exits 1 with the trainer's own message when it fails. Without --base, "
               "--preset, --vram or --set, the version's previous choices are used."), cmd_train)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("--base", metavar="MODEL", help=tr("base checkpoint: a file, or a name in --ckpt-dir"))
    p.add_argument("--preset", choices=("person", "character", "style", "product"),
                   help=tr("what is learnt (default: person)"))
    p.add_argument("--vram", type=int, metavar="GB", help=tr("GPU memory tier: 6, 8, 12, 16 or 24 (default: 8)"))
    p.add_argument("--set", metavar="KEY=VALUE", action="append",
                   help=tr("override a config key (sd-scripts names, e.g. network_dim=16), repeatable"))
    p.add_argument("--epochs", type=int, help=tr("number of epochs (max_train_epochs)"))
    p.add_argument("--resolution", type=_size, metavar="WxH",
                   help=tr("training resolution, with bucket limits to match"))
    p.add_argument("--sample-prompt", metavar="PROMPT",
                   help=tr("draw a sample image with this prompt each epoch (\"\" for none)"))
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                   help=tr("draw the preview grid when training has finished (remembered for the version)"))
    p.add_argument("--resume", action="store_true", help=tr("continue a stopped run from its saved state"))
    p.add_argument("--detach", action="store_true", help=tr("return at once; training goes on in the background"))
    p.add_argument("--python", metavar="PYTHON", help=tr("run the trainer with another Python (e.g. a kohya venv)"))
    p.add_argument("--gpu", metavar="IDS", help=tr("CUDA_VISIBLE_DEVICES for the trainer, e.g. 0 or 1"))
    _host_options(p, lora=True)

    p = add("preview", tr("draw the preview grid: every checkpoint × weight × prompt"),
            tr("Draw every checkpoint of the version at several weights with one seed (and a no-LoRA reference "
               "column) through the standalone host, then assemble one labelled grid per prompt. Cells already "
               "drawn are reused; the settings are remembered for the next run. Prints where the grids are."),
            cmd_preview)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("--prompt", action="append", help=tr("a prompt (repeatable; the trigger word is added)"))
    p.add_argument("--negative", metavar="PROMPT", help=tr("negative prompt"))
    p.add_argument("--weights", type=_weights, metavar="W,W,…", help=tr("LoRA weights (default: 0.4,0.6,0.8,1.0)"))
    p.add_argument("--seed", type=int, help=tr("seed of every image (-1: one random seed)"))
    p.add_argument("--steps", type=int, help=tr("sampling steps"))
    p.add_argument("--cfg", type=float, help=tr("CFG scale"))
    p.add_argument("--sampler", help=tr("sampler, e.g. \"Euler a\""))
    p.add_argument("--size", type=_size, metavar="WxH", help=tr("image size"))
    p.add_argument("--clip-skip", type=int, help=tr("clip skip"))
    p.add_argument("--base", metavar="MODEL", help=tr("draw with this base model (default: the one trained on)"))
    p.add_argument("--no-reference", action="store_true", help=tr("leave out the no-LoRA column"))
    p.add_argument("--checkpoint", action="append", metavar="NAME", help=tr("draw only this checkpoint (repeatable)"))
    p.add_argument("--restart", action="store_true", help=tr("draw everything again"))
    p.add_argument("--set-only", action="store_true",
                   help=tr("only remember these settings (e.g. for the preview after training); draw nothing"))
    _host_options(p, lora=True)

    p = add("pick", tr("copy the chosen checkpoint into a Lora folder"),
            tr("Copy a checkpoint to <lora-dir>/<project>/<name>.safetensors with its card picture and the WebUI's "
               "Lora card metadata (activation text, preferred weight). Never overwrites silently: a name in use "
               "is refused unless --overwrite."), cmd_pick)
    p.add_argument("target", metavar="PROJECT[/VERSION]")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help=tr("checkpoint name or file, an epoch number, \"best\" (the recommendation) or \"last\" "
                           "(default)"))
    p.add_argument("--name", help=tr("the LoRA's name (default: the version's output name and epoch)"))
    p.add_argument("--weight", type=float, default=0.8, help=tr("preferred weight on the Lora card (default: 0.8)"))
    p.add_argument("--overwrite", action="store_true", help=tr("replace a LoRA of that name in the project's folder"))
    _host_options(p, lora=True)

    p = add("status", tr("a version's state and last events, or all jobs"),
            tr("With a version: its status, progress, error, checkpoints and last events (--follow: show the "
               "progress of its running job until it ends). Without: the queued and running jobs."), cmd_status)
    p.add_argument("target", nargs="?", metavar="PROJECT[/VERSION]")
    p.add_argument("--events", type=int, default=10, metavar="N", help=tr("how many of the last events (default: 10)"))
    p.add_argument("--follow", action="store_true", help=tr("show a running job's progress until it ends"))
    p.add_argument("--all", action="store_true", default=False, help=tr("without a version: also finished jobs"))

    p = add("list", tr("list projects and their versions"), tr("List the projects of the workspace and their versions "
                                                               "with status and checkpoint count."), cmd_list)
    p.add_argument("project", nargs="?", help=tr("only this project"))

    p = add("worker", tr("run the queued training jobs until the queue is empty"),
            tr("Run the workspace's queued training jobs one after another and exit when none is left (train "
               "starts one in the background; useful after a restart)."), cmd_worker)
    p.add_argument("--python", metavar="PYTHON", help=tr("run the trainer with another Python (e.g. a kohya venv)"))
    p.add_argument("--gpu", metavar="IDS", help=tr("CUDA_VISIBLE_DEVICES for the trainer, e.g. 0 or 1"))
    _host_options(p, lora=True)
    return parser


def _language(argv: Sequence[str]) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--lang="):
            return arg.split("=", 1)[1]
    return os.environ.get(LANG_ENV)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    set_language(_language(argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed by argparse)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(getattr(args, "json", False))
    try:
        return args.func(args, out)
    except CliError as exc:
        return _fail(out, args, str(exc), exc.code, exc.problems, exc.data)
    except KeyboardInterrupt:
        out.end_progress()
        out.warn(tr("Stopped."))
        return EXIT_STOPPED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILED
    except Exception as exc:
        if _is_user_error(exc):
            return _fail(out, args, str(exc), EXIT_FAILED)
        out.end_progress()
        out.warn(traceback.format_exc().rstrip())
        return _fail(out, args, tr("Unexpected error: {error}", error=f"{type(exc).__name__}: {exc}"), EXIT_FAILED)


def _fail(out: Output, args: argparse.Namespace, message: str, code: int,
          problems: Optional[List[Dict[str, str]]] = None, data: Optional[Dict[str, Any]] = None) -> int:
    out.end_progress()
    out.warn(tr("error: {message}", message=message))
    if code == EXIT_USAGE and not out.json:
        out.warn(tr("See \"{prog} {command} --help\".", prog=PROG, command=args.command))
    out.emit({"ok": False, "command": args.command, "error": message, "problems": problems or [], **(data or {})})
    return code


if __name__ == "__main__":
    sys.exit(main())
