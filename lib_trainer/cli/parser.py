"""The argument parser: every command, its options and help."""
from __future__ import annotations

import argparse
from typing import Callable

from lib_trainer.cli.arg_values import parse_size, parse_weights
from lib_trainer.cli.common import CKPT_DIR_ENV, LANG_ENV, LORA_DIR_ENV, WORKSPACE_ENV
from lib_trainer.cli.hints import join, program
from lib_trainer.cli.train_config import EMBEDDED
from lib_trainer.cli.dataset_cmds import cmd_caption, cmd_import
from lib_trainer.cli.preview_cmds import cmd_pick, cmd_preview
from lib_trainer.cli.projects_cmds import cmd_list, cmd_new, cmd_status
from lib_trainer.cli.train_cmds import cmd_train, cmd_worker
from lib_trainer.common.i18n import tr
from lib_trainer.hosts.standalone import EMBEDDED_TINY_TITLE


def _common(json_help: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", metavar="DIR",  # None: $TRAIN_TOOLS_WORKSPACE or the default (common.py)
                        help=tr("the Train Tools workspace (default: ${env} or ./outputs/train_tools)",
                                env=WORKSPACE_ENV))
    common.add_argument("--lang", metavar="LANG", help=argparse.SUPPRESS)  # read before parsing (see main)
    common.add_argument("--json", action="store_true",
                        help=tr("machine-readable output: one JSON document on stdout (progress as JSON lines "
                                "before it)"))
    return common


def _host_options(parser: argparse.ArgumentParser, lora: bool = False) -> None:
    parser.add_argument("--ckpt-dir", metavar="DIR", action="append",
                        help=tr("folder of base checkpoints (.safetensors/.ckpt), repeatable (default: ${env}, else "
                                "./models/Stable-diffusion when it exists and <workspace>/models/Stable-diffusion)",
                                env=CKPT_DIR_ENV))
    if lora:
        parser.add_argument("--lora-dir", metavar="DIR",
                            help=tr("the Lora folder (default: ${env}, else ./models/Lora when it exists, as in a "
                                    "WebUI's folder, else <workspace>/models/Lora, as the standalone app)",
                                    env=LORA_DIR_ENV))


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=join(program()),  # the usage line shows the program as it was started
        description=tr("Train Tools without a browser: projects, datasets, captions, LoRA training, preview grids "
                       "and picking the best checkpoint."),
        epilog=tr("A version is named PROJECT/VERSION; PROJECT alone means its newest version. \"{prog} COMMAND "
                  "--help\" tells more.", prog=join(program())),
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
    p.add_argument("--size", type=parse_size, metavar="WxH",
                   help=tr("training picture size, multiples of 64 (default: 512x512)"))
    p.add_argument("--crop", choices=("center", "focal", "none"),
                   help=tr("center, focal (faces, else the busiest part) or none (keep the aspect ratio, train "
                           "with buckets); default: center"))
    p.add_argument("--flip", action="store_true", default=None, help=tr("add a mirrored copy of each picture"))
    p.add_argument("--face-crops", type=int, metavar="N", help=tr("extra close-ups of up to N faces per picture"))
    p.add_argument("--no-preprocess", action="store_true", help=tr("only import into dataset/source"))
    p.add_argument("--reg", metavar="CLASS",
                   help=tr("import regularization pictures of CLASS (e.g. woman) into dataset/reg/<repeats>_<CLASS>/ "
                           "instead (not preprocessed; --repeats defaults to 1 there)"))

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
    p.add_argument("--base", metavar="MODEL",
                   help=tr("base checkpoint: a .safetensors/.ckpt file, the name of one in --ckpt-dir, or "
                           "\"{embedded}\" (also its title, \"{title}\") for the small model that comes with "
                           "Train Tools: no checkpoint file needed", embedded=EMBEDDED, title=tr(EMBEDDED_TINY_TITLE)))
    p.add_argument("--preset", choices=("person", "character", "style", "product"),
                   help=tr("what is learnt (default: person)"))
    p.add_argument("--vram", type=int, metavar="GB", help=tr("GPU memory tier: 6, 8, 12, 16 or 24 (default: 8)"))
    p.add_argument("--set", metavar="KEY=VALUE", action="append",
                   help=tr("override a config key (sd-scripts names, e.g. network_dim=16), repeatable; remembered "
                           "for the version, KEY=null drops it again"))
    p.add_argument("--epochs", type=int, help=tr("number of epochs (max_train_epochs)"))
    p.add_argument("--resolution", type=parse_size, metavar="WxH",
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
    p.add_argument("--weights", type=parse_weights, metavar="W,W,…", help=tr("LoRA weights (default: 0.4,0.6,0.8,1.0)"))
    p.add_argument("--seed", type=int, help=tr("seed of every image (-1: one random seed)"))
    p.add_argument("--steps", type=int, help=tr("sampling steps"))
    p.add_argument("--cfg", type=float, help=tr("CFG scale"))
    p.add_argument("--sampler", help=tr("sampler, e.g. \"Euler a\""))
    p.add_argument("--size", type=parse_size, metavar="WxH", help=tr("image size"))
    p.add_argument("--clip-skip", type=int, help=tr("clip skip"))
    p.add_argument("--base", metavar="MODEL",
                   help=tr("draw with this base model: a file, a name in --ckpt-dir or \"embedded\" (default: the one "
                           "trained on)"))
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
