"""The trainer config that ``train`` builds from its options and the version's earlier choices."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lib_trainer.cli.arg_values import parse_pairs, parse_value
from lib_trainer.cli.common import make_host, update_settings, use_trainer_deps, version_settings
from lib_trainer.cli.errors import CliError, EXIT_USAGE
from lib_trainer.cli.output import Output
from lib_trainer.common.i18n import tr


DEFAULT_VRAM_GB = 8


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
    if args.resolution is not None:
        res = args.resolution
        overrides.update(resolution=f"{res[0]},{res[1]}", min_bucket_reso=max(64, min(res) // 2 // 64 * 64),
                         max_bucket_reso=max(res) * 2)
    effective = dict(overrides)
    keep_tokens = version_settings(version).get("keep_tokens")  # protects the trigger word set with "caption --trigger"
    if "keep_tokens" not in effective and keep_tokens:
        effective["keep_tokens"] = int(keep_tokens)
    preset = args.preset or saved.get("preset") or presets.PRESETS[0]
    vram = args.vram or saved.get("vram_gb") or DEFAULT_VRAM_GB
    wanted = args.base or saved.get("base_model") or ""
    sample_prompt = args.sample_prompt if args.sample_prompt is not None else saved.get("sample_prompt", "")
    base, arch, problems = _resolve_base(args, version, wanted)
    try:
        cfg = presets.build_config(presets.VersionPaths.of(version), base, arch, preset, vram, effective,
                                  sample_prompt=sample_prompt or None)
    except schema.ConfigError as exc:
        raise CliError(str(exc), problems=[{"field": "config", "message": str(exc)}]) from None
    problems += [{"field": p.field, "message": p.message} for p in presets.check(cfg)]
    if problems:
        for p in problems:
            out.warn(tr("{field}: {message}", field=p["field"], message=p["message"]))
        raise CliError(tr("The training cannot start: {count} problem(s) to fix first.", count=len(problems)),
                       problems=problems)
    # Remembered only once they make a valid config: the next "train" without options runs the same again.
    update_settings(version, train={"base_model": wanted, "arch": arch, "base_stamp": _base_stamp(base),
                                     "preset": preset, "vram_gb": vram, "overrides": overrides,
                                     "sample_prompt": sample_prompt})
    out.say(tr("Base model {model} ({arch}), preset {preset}, {vram} GB VRAM tier.", model=base, arch=arch,
               preset=presets.preset_label(preset), vram=vram))
    return cfg, arch


def _resolve_base(args: argparse.Namespace, version, wanted: str) -> Tuple[str, str, List[Dict[str, str]]]:
    """(path, architecture, problems) of a base model given as a file or as a title in --ckpt-dir."""
    if not wanted:
        return "", "sd1", []  # presets.check says "Choose a base model."
    path = Path(wanted).expanduser()
    if not path.is_file():
        host = make_host(args, version.project.workspace)
        for info in host.checkpoints():
            if wanted in (info.title, info.path, Path(info.path).name, Path(info.path).stem):
                return info.path, info.arch if info.arch != "unknown" else "sd1", _arch_problems(info.arch, info.path)
        return str(path.absolute()), "sd1", []  # presets.check says it does not exist
    resolved = path.resolve()
    st = resolved.stat()
    stamp = [str(resolved), st.st_size, st.st_mtime_ns]
    saved = (version_settings(version).get("train") or {})
    if saved.get("base_stamp") == stamp and saved.get("arch") in ("sd1", "sd2", "sd2-v", "sdxl"):
        return str(resolved), saved["arch"], []  # the same file as last time: no need to open it (and torch) again
    use_trainer_deps()
    from lib_trainer.hosts.checkpoint_files import detect_checkpoint_arch

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
