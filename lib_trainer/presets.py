"""From a version and a few choices to a full trainer config: presets, VRAM tiers, checks and estimates.

The config schema itself (kohya key names, TOML in/out, validation) lives in ``lib_trainer.trainer.schema`` and
is the only one; this module decides *values*. A preset says what is being learnt (a person, an anime
character, a style, a product); a VRAM tier says how much memory there is; the person's own edits win over
both. Standard library only (plus the schema module): this runs inside the WebUI process.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lib_trainer.common.cuda import cuda_available
from lib_trainer.common.i18n import tr
from lib_trainer.trainer import schema
from lib_trainer.trainer.folders import IMAGE_EXTENSIONS, parse_folder_name
from lib_trainer.trainer.schema import ConfigError, TrainConfig

PRESETS = ("person", "character", "style", "product")
VRAM_TIERS = (6, 8, 12, 16, 24)
ARCHES = ("sd1", "sd2", "sd2-v", "sdxl")


def preset_label(preset: str) -> str:
    return {"person": tr("Person"), "character": tr("Anime character"), "style": tr("Style"),
            "product": tr("Product")}.get(preset, preset)


# What each kind of subject needs (the community's settled values for SD1.5; SDXL gets its resolution and a
# slightly lower learning rate below). Repeats are chosen per dataset (lib_trainer.dataset.concepts).
PRESET_VALUES: Dict[str, Dict[str, Any]] = {
    # Real people: faces are asymmetric (no flips); a moderate rank; the text encoder learns the name.
    "person": dict(network_dim=32, network_alpha=16, unet_lr=1e-4, text_encoder_lr=5e-5, max_train_epochs=10,
                   lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=3, min_snr_gamma=5.0,
                   noise_offset=0.03, shuffle_caption=True, keep_tokens=1, flip_aug=False),
    # Anime characters: trained on anime models with clip skip 2; flips are fine for most designs.
    "character": dict(network_dim=16, network_alpha=8, unet_lr=1e-4, text_encoder_lr=5e-5, max_train_epochs=10,
                      lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=3, min_snr_gamma=5.0,
                      clip_skip=2, shuffle_caption=True, keep_tokens=1, flip_aug=False),
    # Styles: more pictures and a higher rank, conv layers too (LoCon), flips help.
    "style": dict(network_dim=32, network_alpha=16, conv_dim=8, conv_alpha=4, unet_lr=1e-4, text_encoder_lr=3e-5,
                  max_train_epochs=12, lr_scheduler="cosine", min_snr_gamma=5.0, shuffle_caption=True,
                  keep_tokens=1, flip_aug=True, caption_dropout_rate=0.05),
    # Products and objects: shape and logo must stay exact (no flips), a low rank suffices.
    "product": dict(network_dim=16, network_alpha=8, unet_lr=1e-4, text_encoder_lr=5e-5, max_train_epochs=12,
                    lr_scheduler="cosine", min_snr_gamma=5.0, shuffle_caption=True, keep_tokens=1, flip_aug=False),
}

# Memory: batch size, gradient checkpointing and the 8-bit optimizer per tier, per family (SD1/SD2 vs SDXL).
TIER_VALUES: Dict[Tuple[str, int], Dict[str, Any]] = {
    ("sd", 6): dict(train_batch_size=1, gradient_checkpointing=True, optimizer_type="AdamW8bit"),
    ("sd", 8): dict(train_batch_size=2, gradient_checkpointing=True, optimizer_type="AdamW8bit"),
    ("sd", 12): dict(train_batch_size=2, gradient_checkpointing=False, optimizer_type="AdamW8bit"),
    ("sd", 16): dict(train_batch_size=4, gradient_checkpointing=False, optimizer_type="AdamW"),
    ("sd", 24): dict(train_batch_size=6, gradient_checkpointing=False, optimizer_type="AdamW"),
    ("sdxl", 6): dict(train_batch_size=1, gradient_checkpointing=True, optimizer_type="AdamW8bit",
                      network_train_unet_only=True, resolution="768,768"),
    ("sdxl", 8): dict(train_batch_size=1, gradient_checkpointing=True, optimizer_type="AdamW8bit",
                      network_train_unet_only=True),
    ("sdxl", 12): dict(train_batch_size=1, gradient_checkpointing=True, optimizer_type="AdamW8bit"),
    ("sdxl", 16): dict(train_batch_size=2, gradient_checkpointing=True, optimizer_type="AdamW8bit"),
    ("sdxl", 24): dict(train_batch_size=4, gradient_checkpointing=True, optimizer_type="AdamW"),
}

COMMON_VALUES: Dict[str, Any] = dict(
    network_module="networks.lora", optimizer_type="AdamW", mixed_precision="fp16", save_precision="fp16",
    save_model_as="safetensors", save_every_n_epochs=1, save_state=True, cache_latents=True,
    caption_extension=".txt", enable_bucket=True, bucket_reso_steps=64, lr_warmup_steps=0.05, seed=1234,
    max_grad_norm=1.0, log_every_n_steps=1,
)


def default_resolution(arch: str) -> int:
    return {"sdxl": 1024, "sd2-v": 768}.get(arch, 512)


def bucket_limits(resolution: str, step: int = 64) -> Tuple[int, int]:
    """(min_bucket_reso, max_bucket_reso) that follow a resolution: half its shorter side (at least one bucket
    step), twice its longer side — sd-scripts' usual 256/1024 at 512 px."""
    w, h = schema.parse_resolution(resolution)
    low = max(step, (min(w, h) // 2) // step * step)
    return low, max(w, h) * 2


def preset_values(preset: str, vram_gb: int, arch: str, *, cuda: Optional[bool] = None,
                  native_resolution: Optional[int] = None) -> Dict[str, Any]:
    """The config values a preset and a VRAM tier choose for an architecture on this machine (no paths).

    ``native_resolution`` is the base model's own size when it is not the architecture's (a small demo model
    trains at its own 64 px, not at 512). Without an NVIDIA GPU (``cuda`` False, or None and none found) there is
    no 8-bit optimizer and no mixed precision: both need one. The bucket limits are not set: they follow the
    resolution (:func:`bucket_limits`) unless the person sets them."""
    if preset not in PRESET_VALUES:
        raise ConfigError(tr("Unknown preset \"{preset}\"; choose one of: {presets}.", preset=preset,
                             presets=", ".join(PRESETS)))
    tier = max([t for t in VRAM_TIERS if t <= vram_gb] or [VRAM_TIERS[0]])
    family = "sdxl" if arch == "sdxl" else "sd"
    res = native_resolution or default_resolution(arch)
    values = dict(COMMON_VALUES)
    values.update(PRESET_VALUES[preset])
    values.update(resolution=f"{res},{res}")
    values.update(TIER_VALUES[(family, tier)])
    if native_resolution:
        values["resolution"] = f"{res},{res}"  # a tier's lower resolution is for full-size models
    if family == "sdxl":
        values.pop("clip_skip", None)  # SDXL always uses the penultimate layer
        values["unet_lr"] = values["unet_lr"] * 0.5
        values["text_encoder_lr"] = values["text_encoder_lr"] * 0.5
        values["no_half_vae"] = True  # SDXL's VAE overflows in fp16
    if arch == "sd2-v":
        values["v_parameterization"] = True
    if not (cuda_available() if cuda is None else cuda):
        if values.get("optimizer_type") == "AdamW8bit":
            values["optimizer_type"] = "AdamW"
        values["mixed_precision"] = "no"
    return values


@dataclass
class VersionPaths:
    """Where a version's trainer reads and writes (from a projects.Version)."""
    train_dir: Path
    reg_dir: Path
    checkpoints_dir: Path
    samples_dir: Path
    logs_dir: Path
    events_path: Path
    output_name: str

    @classmethod
    def of(cls, version) -> "VersionPaths":
        return cls(train_dir=version.train_dir, reg_dir=version.reg_dir, checkpoints_dir=version.checkpoints_dir,
                   samples_dir=version.samples_dir, logs_dir=version.logs_dir, events_path=version.events_path,
                   output_name=version.output_name)


def build_config(paths: VersionPaths, base_model: str, arch: str, preset: str, vram_gb: int,
                 overrides: Optional[Dict[str, Any]] = None, sample_prompt: Optional[str] = None,
                 cuda: Optional[bool] = None, native_resolution: Optional[int] = None) -> TrainConfig:
    """The full config of a run: preset and tier values for this machine (see :func:`preset_values`), the
    person's ``overrides`` (an 8-bit optimizer or fp16 chosen by hand stays, so the trainer says why it cannot),
    then the version's paths; the bucket limits follow the final resolution unless overridden."""
    values = preset_values(preset, vram_gb, arch, cuda=cuda, native_resolution=native_resolution)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    auto_low, auto_high = bucket_limits(values["resolution"], int(values.get("bucket_reso_steps") or 64))
    values.setdefault("min_bucket_reso", auto_low)
    values.setdefault("max_bucket_reso", auto_high)
    has_reg = paths.reg_dir.is_dir() and any(p.is_dir() and parse_folder_name(p.name) for p in paths.reg_dir.iterdir())
    values.update(
        pretrained_model_name_or_path=str(base_model),
        train_data_dir=str(paths.train_dir),
        reg_data_dir=str(paths.reg_dir) if has_reg else None,
        output_dir=str(paths.checkpoints_dir),
        output_name=paths.output_name,
        logging_dir=str(paths.logs_dir / "tensorboard"),
        events_file=str(paths.events_path),
        sample_dir=str(paths.samples_dir),
    )
    if sample_prompt:
        prompt_file = paths.samples_dir / "prompts.txt"
        w, h = schema.parse_resolution(values["resolution"])
        schema.atomic_write_text(prompt_file, f"{sample_prompt} --w {w} --h {h} --s 20 --d 1234\n")
        values["sample_prompts"] = str(prompt_file)
        values.setdefault("sample_every_n_epochs", 1)
    cfg, _ = schema.config_from_dict(values)
    return cfg


# ---- checks before a job starts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    field: str      # the config key (or "dataset", "base_model") the UI shows the message beside
    message: str


def dataset_counts(train_dir: Path) -> Dict[str, Tuple[int, int]]:
    """concept folder → (pictures, repeats) of a train folder, without opening any picture."""
    counts: Dict[str, Tuple[int, int]] = {}
    if not train_dir.is_dir():
        return counts
    for folder in sorted(train_dir.iterdir()):
        parsed = parse_folder_name(folder.name) if folder.is_dir() else None
        if not parsed:
            continue
        pictures = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        counts[folder.name] = (pictures, parsed[0])
    return counts


def check(cfg: TrainConfig) -> List[Problem]:
    """Every problem that would stop the run, each beside its field, in the person's language."""
    problems: List[Problem] = []
    model = cfg.pretrained_model_name_or_path
    if not model:
        problems.append(Problem("pretrained_model_name_or_path", tr("Choose a base model.")))
    elif not Path(model).exists():
        problems.append(Problem("pretrained_model_name_or_path",
                                tr("The base model {path} does not exist (moved or deleted?); refresh the list and "
                                   "choose again.", path=model)))
    counts = dataset_counts(Path(cfg.train_data_dir))
    if not any(n and r for n, r in counts.values()):
        problems.append(Problem("dataset", tr("The dataset is empty: import pictures and preprocess them first.")))
    try:
        w, h = schema.parse_resolution(cfg.resolution)
        if w % 64 or h % 64 or w < 64 or h < 64:
            problems.append(Problem("resolution", tr("The resolution {w}x{h} must be multiples of 64 (e.g. 512 or "
                                                     "768).", w=w, h=h)))
    except ConfigError as exc:
        problems.append(Problem("resolution", str(exc)))
    if cfg.max_train_epochs is not None and cfg.max_train_epochs < 1:
        problems.append(Problem("max_train_epochs", tr("Train at least one epoch.")))
    if cfg.network_dim < 1:
        problems.append(Problem("network_dim", tr("The network rank (dim) must be at least 1.")))
    if cfg.network_alpha <= 0:
        problems.append(Problem("network_alpha", tr("Alpha must be above 0 (usually half the rank).")))
    for key in ("learning_rate", "unet_lr", "text_encoder_lr"):
        value = getattr(cfg, key)
        if value is not None and (value < 0 or math.isnan(value)):
            problems.append(Problem(key, tr("The learning rate must not be negative.")))
    if cfg.train_batch_size < 1:
        problems.append(Problem("train_batch_size", tr("The batch size must be at least 1.")))
    if cfg.enable_bucket and not any(p.field == "resolution" for p in problems):
        w, h = schema.parse_resolution(cfg.resolution)
        if cfg.min_bucket_reso > min(w, h):
            problems.append(Problem("min_bucket_reso", tr(
                "The smallest bucket side ({value} px) is larger than the resolution ({side} px): lower it, or leave "
                "it empty to follow the resolution.", value=cfg.min_bucket_reso, side=min(w, h))))
        if cfg.max_bucket_reso < max(w, h):
            problems.append(Problem("max_bucket_reso", tr(
                "The largest bucket side ({value} px) is smaller than the resolution ({side} px): raise it, or leave "
                "it empty to follow the resolution.", value=cfg.max_bucket_reso, side=max(w, h))))
    if not problems:
        try:
            schema.validate(cfg)
        except ConfigError as exc:
            problems += validation_problems(str(exc))
    return problems


_CONFIG_KEYS = tuple(sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True))


def validation_problems(message: str) -> List[Problem]:
    """The trainer's validation message (its problems joined by "; ") as problems, each beside the config key it
    names first (or "config" when it names none)."""
    problems = []
    for part in (p.strip() for p in message.split("; ")):
        if part:
            key = next((k for k in _CONFIG_KEYS if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", part)), "config")
            problems.append(Problem(key, part))
    return problems


# ---- estimates ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    steps: int
    steps_per_epoch: int
    epochs: int
    uses_per_epoch: int  # picture uses per epoch: trained pictures × repeats (+ as many regularization uses)
    pictures: int  # training pictures found
    held_out: int  # of them, held out of training to score the checkpoints
    repeats: int  # repeats of the concept folder (the largest, when there are several)
    batch: int
    vram_gb: float
    seconds: Optional[float]
    it_per_s: Optional[float]
    basis: str          # what the time is based on, for the person to judge it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Weights in fp16 (UNet + text encoders + VAE) and activation memory per picture at the native resolution,
# with and without gradient checkpointing (GB) — rounded from public measurements of LoRA training; the
# estimate is a guide, not a promise.
_MODEL_GB = {"sd1": 2.1, "sd2": 2.6, "sd2-v": 2.6, "sdxl": 6.9}
_ACT_GB = {"sd1": (3.2, 0.7), "sd2": (3.6, 0.8), "sd2-v": (3.6, 0.8), "sdxl": (9.5, 2.2)}
# Typical speed of a mid-range card (RTX 3060 12 GB class) at native resolution, batch 1, seconds per step.
_TYPICAL_S_PER_STEP = {"sd1": 0.55, "sd2": 0.7, "sd2-v": 0.9, "sdxl": 2.0}
_TYPICAL_BASIS = "RTX 3060-class GPU"


def estimate(cfg: TrainConfig, arch: str, measured_it_per_s: Optional[float] = None,
             measured_batch: Optional[int] = None, cuda: Optional[bool] = None) -> Estimate:
    """Steps, VRAM and time of a run. With a speed measured on this machine (a previous run's events at the same
    batch size) the time uses it; otherwise a typical GPU's speed, said plainly when there is no GPU here."""
    from lib_trainer.trainer.schedule import step_plan  # imports torch: only when an estimate is asked for

    plan = step_plan(cfg)  # the trainer's own count: held-out pictures, a batch per bucket remainder, reg uses
    batch = max(1, cfg.train_batch_size)
    steps, epochs, steps_per_epoch = plan.total_steps, plan.epochs, plan.steps_per_epoch
    w, h = schema.parse_resolution(cfg.resolution)
    native = default_resolution(arch) ** 2
    scale = (w * h) / native
    full, checkpointed = _ACT_GB.get(arch, _ACT_GB["sd1"])
    act = (checkpointed if cfg.gradient_checkpointing else full) * scale * batch
    weights = _MODEL_GB.get(arch, 2.1) * (2.0 if cfg.mixed_precision == "no" else 1.0)
    if cfg.network_train_unet_only and arch == "sdxl":
        weights -= 0.3
    vram = round(weights + act + 0.6, 1)  # + CUDA context, LoRA weights and optimizer state
    if measured_it_per_s and measured_batch == batch:
        it_per_s, basis = measured_it_per_s, tr("at the speed measured on this machine")
    else:
        per_step = _TYPICAL_S_PER_STEP.get(arch, 0.6) * scale * (0.6 + 0.4 * batch)
        if cfg.gradient_checkpointing:
            per_step *= 1.25
        it_per_s = 1.0 / per_step
        if cuda_available() if cuda is None else cuda:
            basis = tr("at the speed of a typical {gpu}", gpu=_TYPICAL_BASIS)
        else:
            basis = tr("at the speed of a typical {gpu}; no NVIDIA GPU was found here, and on the CPU training is "
                       "far slower", gpu=_TYPICAL_BASIS)
    seconds = steps / it_per_s if it_per_s else None
    return Estimate(steps=steps, steps_per_epoch=steps_per_epoch, epochs=epochs, uses_per_epoch=plan.uses_per_epoch,
                    pictures=plan.pictures, held_out=plan.held_out, repeats=plan.repeats, batch=batch, vram_gb=vram, seconds=seconds, it_per_s=round(it_per_s, 3), basis=basis)


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


def describe_estimate(est: Estimate) -> str:
    """"12 pictures × 5 repeats = 60 picture uses per epoch (1 held out to score the checkpoints) · 10 epochs × 15
    steps at batch 4 = 150 steps · about 5.2 GB of VRAM · about 2m 30s at …"."""
    trained = est.pictures - est.held_out
    if trained * est.repeats == est.uses_per_epoch:
        uses = tr("{pictures} pictures × {repeats} repeats = {uses} picture uses per epoch", pictures=trained,
                  repeats=est.repeats, uses=est.uses_per_epoch)
    else:  # concept folders with different repeats, or regularization pictures
        uses = tr("{pictures} pictures × their folders' repeats = {uses} picture uses per epoch", pictures=trained,
                  uses=est.uses_per_epoch)
    if est.held_out:
        uses += " " + tr("({n} more held out to score the checkpoints)", n=est.held_out)
    if est.epochs == 1:
        steps = tr("1 epoch of {per_epoch} steps at batch {batch} = {steps} steps", per_epoch=est.steps_per_epoch,
                   batch=est.batch, steps=est.steps)
    else:
        steps = tr("{epochs} epochs × {per_epoch} steps at batch {batch} = {steps} steps", epochs=est.epochs,
                   per_epoch=est.steps_per_epoch, batch=est.batch, steps=est.steps)
    return tr("{uses} · {steps} · about {vram} GB of VRAM · about {time} {basis}", uses=uses, steps=steps,
              vram=est.vram_gb, time=format_duration(est.seconds), basis=est.basis)


def last_speed(events: List[Dict[str, Any]]) -> Tuple[Optional[float], Optional[int]]:
    """(it/s, batch size) of the last step event of a previous run, for a measured time estimate."""
    speed = next((e.get("it_per_s") for e in reversed(events) if e.get("event") == "step" and e.get("it_per_s")), None)
    batch = next((e.get("batch_size") for e in events if e.get("event") == "start" and e.get("batch_size")), None)
    return speed, batch


__all__ = ["PRESETS", "VRAM_TIERS", "preset_label", "preset_values", "build_config", "VersionPaths", "check",
           "Problem", "estimate", "Estimate", "describe_estimate", "format_duration", "dataset_counts",
           "default_resolution", "bucket_limits", "validation_problems", "last_speed"]
