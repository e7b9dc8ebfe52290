"""The trainer config that ``train`` builds from its options and the version's earlier choices."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lib_trainer.cli.arg_values import parse_pairs, parse_value
from lib_trainer.cli.common import (ckpt_dirs, embedded_model, make_host, update_settings, use_trainer_deps,
                                    version_settings)
from lib_trainer.cli.errors import CliError, EXIT_USAGE
from lib_trainer.cli.output import Output
from lib_trainer.common.i18n import tr


DEFAULT_VRAM_GB = 8
EMBEDDED = "embedded"  # --base embedded: the model the standalone host offers without any checkpoint file

# The option of `train` that sets a config key; keys without one are set with --set KEY=VALUE.
OPTION_OF_KEY = {"pretrained_model_name_or_path": "--base", "resolution": "--resolution",
                 "max_train_epochs": "--epochs", "sample_prompts": "--sample-prompt"}


def build_train_config(args: argparse.Namespace, out: Output, version):
    """The version's trainer config from --base/--preset/--vram/--set and what the version used last time."""
    from lib_trainer import presets
    from lib_trainer.trainer import schema

    saved = dict(version_settings(version).get("train") or {})
    overrides: Dict[str, Any] = dict(saved.get("overrides") or {})
    for key, value in parse_pairs(args.set, "--set"):
        if key not in schema.FIELDS:
            raise CliError(tr("Unknown config key \"{key}\" in --set; keys follow sd-scripts' names (e.g. "
                              "max_train_epochs, network_dim).", key=key), code=EXIT_USAGE)
        overrides[key] = parse_value(value)
    if args.epochs is not None:
        overrides["max_train_epochs"] = args.epochs
    if args.resolution is not None:  # the bucket limits follow it (presets.build_config) unless set with --set
        overrides["resolution"] = f"{args.resolution[0]},{args.resolution[1]}"
    effective = dict(overrides)
    keep_tokens = version_settings(version).get("keep_tokens")  # protects the trigger word set with "caption --trigger"
    if "keep_tokens" not in effective and keep_tokens:
        effective["keep_tokens"] = int(keep_tokens)
    preset = args.preset or saved.get("preset") or presets.PRESETS[0]
    vram = args.vram or saved.get("vram_gb") or DEFAULT_VRAM_GB
    wanted = args.base or saved.get("base_model") or ""
    sample_prompt = args.sample_prompt if args.sample_prompt is not None else saved.get("sample_prompt", "")
    base, arch, resolution, problems = _resolve_base(args, version, wanted)
    try:
        cfg = presets.build_config(presets.VersionPaths.of(version), base, arch, preset, vram, effective,
                                   sample_prompt=sample_prompt or None, native_resolution=resolution)
    except schema.ConfigError as exc:
        raise CliError(str(exc), problems=[{"field": "config", "option": None, "message": str(exc)}]) from None
    problems += [_cli_problem(p.field, p.message, cfg, args, version, wanted) for p in presets.check(cfg)
                 if not (p.field == "pretrained_model_name_or_path" and problems)]
    if problems:
        for p in problems:
            out.warn(tr("{option}: {message}", option=p["option"], message=p["message"]) if p["option"]
                     else p["message"])
        raise CliError(tr("The training cannot start: {count} problem(s) to fix first.", count=len(problems)),
                       problems=problems)
    # Remembered only once they make a valid config: the next "train" without options runs the same again.
    update_settings(version, train={"base_model": wanted, "arch": arch, "base_stamp": _base_stamp(base),
                                     "base_resolution": resolution, "preset": preset, "vram_gb": vram,
                                     "overrides": overrides, "sample_prompt": sample_prompt})
    out.say(tr("Base model {model} ({arch}), preset {preset}, {vram} GB VRAM tier.", model=base, arch=arch,
               preset=presets.preset_label(preset), vram=vram))
    return cfg, arch


def _resolve_base(args: argparse.Namespace, version,
                  wanted: str) -> Tuple[str, str, Optional[int], List[Dict[str, Optional[str]]]]:
    """(path, architecture, native resolution or None, problems) of a base model given as a file, or as the title,
    file name or stem of a model the host lists (--ckpt-dir and the embedded model, also called "embedded")."""
    if not wanted:
        return "", "sd1", None, []  # presets.check says there is none; _cli_problem says how to give one
    path = Path(wanted).expanduser()
    if not path.is_file():
        from lib_trainer.hosts.standalone import EMBEDDED_TINY_TITLE

        host = make_host(args, version.project.workspace)
        embedded = str(embedded_model(version.project.workspace.root).absolute())
        for info in host.checkpoints():
            names = {info.title, info.path, Path(info.path).name, Path(info.path).stem}
            if info.path == embedded:
                names |= {EMBEDDED, EMBEDDED_TINY_TITLE}
            if wanted in names:
                if info.path == embedded:
                    _write_embedded_if_missing(Path(info.path))
                return (info.path, info.arch if info.arch != "unknown" else "sd1", info.resolution,
                        _arch_problems(info.arch, info.path))
        return str(path.absolute()), "sd1", None, []  # presets.check says it does not exist
    resolved = path.resolve()
    st = resolved.stat()
    stamp = [str(resolved), st.st_size, st.st_mtime_ns]
    saved = (version_settings(version).get("train") or {})
    if saved.get("base_stamp") == stamp and saved.get("arch") in ("sd1", "sd2", "sd2-v", "sdxl"):
        # the same file as last time: no need to open it (and torch) again
        return str(resolved), saved["arch"], saved.get("base_resolution"), []
    use_trainer_deps()
    from lib_trainer.hosts.checkpoint_files import checkpoint_facts

    arch, resolution = checkpoint_facts(resolved)
    return str(resolved), arch if arch != "unknown" else "sd1", resolution, _arch_problems(arch, str(path))


def _write_embedded_if_missing(path: Path) -> None:
    """The standalone host writes the tiny embedded model when it first draws with it; the trainer needs it now."""
    if path.is_file():
        return
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    write_tiny_checkpoint("sd1", path)


def option_of(key: str) -> Optional[str]:
    """The command-line option that sets a config key (None for problems of no single key)."""
    from lib_trainer.trainer import schema

    if key in OPTION_OF_KEY:
        return OPTION_OF_KEY[key]
    return f"--set {key}=…" if key in schema.FIELDS else None


def _cli_problem(key: str, message: str, cfg, args: argparse.Namespace, version,
                 wanted: str) -> Dict[str, Optional[str]]:
    """A problem of presets.check in the CLI's words: named by the option that fixes it, with what to type."""
    from lib_trainer.cli.hints import command

    if key == "pretrained_model_name_or_path":
        message = _base_problem(args, version, wanted)
    elif key == "dataset":
        return {"field": key, "option": None, "message": tr(
            "Version \"{key}\" has no training pictures yet; import and preprocess some first:\n  {command}",
            key=version.key, command=command(args, "import", version.key, "FOLDER"))}
    elif key in ("min_bucket_reso", "max_bucket_reso"):
        message = tr("{message} (To let it follow the resolution: --set {key}=null.)", message=message, key=key)
    return {"field": key, "option": option_of(key), "message": message}


def _base_problem(args: argparse.Namespace, version, wanted: str) -> str:
    folders = ", ".join(str(d) for d in ckpt_dirs(args))
    takes = tr("a checkpoint file (.safetensors or .ckpt: Stable Diffusion 1.x, 2.x or XL), the name of one in the "
               "checkpoint folders ({folders}; --ckpt-dir DIR looks elsewhere), or \"{embedded}\" for the small "
               "model that comes with Train Tools (no file needed)", folders=folders, embedded=EMBEDDED)
    embedded = str(embedded_model(version.project.workspace.root).absolute())
    found = [info.title for info in make_host(args, version.project.workspace).checkpoints() if info.path != embedded]
    there = " " + tr("Models found there: {names}.", names=", ".join(found[:10])) if found else ""
    if not wanted:
        return tr("No base model given; give {takes}.", takes=takes) + there
    return tr("\"{wanted}\" is neither a file nor the name of a model in the checkpoint folders; give {takes}.",
              wanted=wanted, takes=takes) + there


def _base_stamp(path: str) -> Optional[List[Any]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_size, st.st_mtime_ns]


def _arch_problems(arch: str, path: str) -> List[Dict[str, Optional[str]]]:
    if arch != "unknown":
        return []
    return [{"field": "pretrained_model_name_or_path", "option": "--base",
             "message": tr("{path} is not a Stable Diffusion 1, 2 or XL checkpoint this trainer can read.",
                           path=path)}]
