"""The ``preview`` and ``pick`` commands."""
from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lib_trainer.cli.common import LORA_DIR_ENV, POLL_S, find_version, lora_dir, make_host, open_workspace
from lib_trainer.cli.hints import command
from lib_trainer.cli.errors import CliError, EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from lib_trainer.cli.output import Output
from lib_trainer.common.i18n import tr


def cmd_preview(args: argparse.Namespace, out: Output) -> int:
    from lib_trainer.checkpoints.recommend import recommend
    from lib_trainer.cli.train_config import EMBEDDED
    from lib_trainer.hosts.standalone import EMBEDDED_TINY_TITLE
    from lib_trainer.preview.cells import weight_text
    from lib_trainer.preview.config import load_config, PreviewConfig, save_config
    from lib_trainer.preview.tasks import PreviewTasks

    ws = open_workspace(args)
    version = find_version(ws, args.target, args)
    if not version.checkpoints() and not args.set_only:
        raise CliError(_untrained(args, version))
    host = make_host(args, ws)
    cfg = load_config(version, host)
    changes = {k: v for k, v in (("prompts", args.prompt), ("negative_prompt", args.negative),
                                 ("weights", args.weights), ("seed", args.seed), ("steps", args.steps),
                                 ("cfg_scale", args.cfg), ("sampler", args.sampler), ("clip_skip", args.clip_skip),
                                 ("base_model", args.base)) if v is not None}
    if args.base == EMBEDDED:  # the name train --base takes; the host knows the embedded model by its title
        changes["base_model"] = EMBEDDED_TINY_TITLE
    if args.size:
        changes["width"], changes["height"] = args.size
    if args.no_reference:
        changes["reference"] = False
    if changes or args.set_only:
        cfg = PreviewConfig.from_dict({**cfg.to_dict(), **changes})
        save_config(version, cfg)
    if args.set_only:
        out.say(tr("Preview settings of \"{key}\" saved: {weights} weight(s) × {prompts} prompt(s), "
                   "{width}×{height}, {steps} steps, seed {seed}.", key=version.key, weights=len(cfg.weights),
                   prompts=len(cfg.prompts), width=cfg.width, height=cfg.height, steps=cfg.steps, seed=cfg.seed))
        out.emit({"ok": True, "command": "preview", "version": version.key, "saved": True, "config": cfg.to_dict()})
        return EXIT_OK
    stop = threading.Event()

    def progress(done: int, total: int, cell) -> None:
        what = tr("no LoRA") if cell.reference else f"{cell.checkpoint.name} @ {weight_text(cell.weight)}"
        out.progress(tr("drawing {done}/{total}: prompt {prompt}, {what}", done=done, total=total,
                        prompt=cell.prompt_index + 1, what=what))
        out.emit({"event": "cell", "done": done, "total": total, "key": cell.key, "file": cell.file,
                  "checkpoint": cell.checkpoint.name if cell.checkpoint else None, "weight": cell.weight,
                  "prompt_index": cell.prompt_index})

    out.say(tr("Preview of \"{key}\": {checkpoints} checkpoint(s) × {weights} weight(s) × {prompts} prompt(s), "
               "{width}×{height}, {steps} steps, seed {seed}.", key=version.key,
               checkpoints=len(version.checkpoints()), weights=len(cfg.weights), prompts=len(cfg.prompts),
               width=cfg.width, height=cfg.height, steps=cfg.steps, seed=cfg.seed))
    previews = PreviewTasks(host)  # one kind of preview task: the tab of another process sees it and can stop it

    def draw():
        task = previews.run(version, args.checkpoint or None, cfg, origin="cli", progress=progress,
                            restart=args.restart, stop=stop)
        if task.exception is not None:
            raise task.exception
        return task.result

    result = _interruptible(draw, stop, host.interrupt, out)
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
    rec = recommend(version)
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
    from lib_trainer.checkpoints import promote

    ws = open_workspace(args)
    version = find_version(ws, args.target, args)
    folder = lora_dir(args)
    checkpoints = version.checkpoints()
    if not checkpoints:
        raise CliError(_untrained(args, version))
    chosen = _choose_checkpoint(version, checkpoints, args.checkpoint)
    host = make_host(args, ws)  # its Lora folder is lora_dir(args)
    try:
        result = promote.use_checkpoint(version, chosen, host, name=args.name, weight=args.weight,
                                     overwrite=args.overwrite)
    except promote.NameTaken as exc:
        raise CliError(str(exc) + " " + tr("(--name NAME picks another name; --overwrite replaces it.)"),
                       data={"suggestion": exc.suggestion}) from None
    for warning in result.warnings:
        out.warn(tr("warning: {message}", message=warning))
    out.say(tr("Copied {checkpoint} to {path}", checkpoint=chosen.name, path=str(result.lora_path)))
    if not (args.lora_dir or os.environ.get(LORA_DIR_ENV)):
        out.say(tr("(the default Lora folder; --lora-dir DIR or ${env} copies into another, e.g. a WebUI's "
                   "models/Lora)", env=LORA_DIR_ENV))
    if result.preview_path:
        out.say(tr("Card picture: {path}", path=str(result.preview_path)))
    out.say(tr("Use it in a prompt: {prompt}", prompt=result.prompt))
    out.emit({"ok": True, "command": "pick", "version": version.key, "checkpoint": chosen.name,
              "name": result.name, "lora": str(result.lora_path),
              "preview": str(result.preview_path) if result.preview_path else None,
              "preview_source": result.preview_source, "metadata": str(result.metadata_path),
              "prompt": result.prompt, "warnings": result.warnings, "lora_dir": str(folder)})
    return EXIT_OK


def _untrained(args: argparse.Namespace, version) -> str:
    return tr("Version \"{key}\" has no checkpoints yet; train it first (MODEL: a checkpoint file, or \"embedded\"):"
              "\n  {command}", key=version.key, command=command(args, "train", version.key, "--base", "MODEL"))


def _choose_checkpoint(version, checkpoints, wanted: Optional[str]):
    """A checkpoint by name, file, epoch number, "best" (the recommendation) or, by default, the final one."""
    from lib_trainer.checkpoints.recommend import recommend

    if not wanted or wanted == "last":
        return checkpoints[-1]
    if wanted == "best":
        best = recommend(version).best
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
