"""The one definition of the training config.

Keys are sd-scripts' names wherever sd-scripts has the concept, so a config moves between Train Tools and
sd-scripts (``train_network.py --config_file``). The trainer and the rest of lib_trainer both use this module;
it needs only the standard library so that it can be imported inside the WebUI process too.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from lib_trainer.common.files import atomic_write_text
from lib_trainer.common.i18n import tr

OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor", "SGD")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
NETWORK_MODULES = ("networks.lora", "lycoris.kohya")
ALGOS = ("lora", "locon", "loha", "lokr")
# network_args each network_module reads here. lycoris.kohya: what lycoris-lora's create_network reads (its
# deprecated spellings included; "preset" is Train Tools' own, chosen from conv_dim). networks.lora: the part of
# sd-scripts' networks/lora.py arguments this trainer implements (through lycoris); its block-wise dims and learning
# rates (block_dims, down_lr_weight, ...) are not.
LYCORIS_NETWORK_ARGS = (
    "algo", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "use_tucker", "use_scalar",
    "disable_conv_cp", "use_conv_cp", "use_cp", "block_size", "train_norm", "constraint", "constrain", "rescaled",
    "dora_wd", "wd_on_output", "full_matrix", "decompose_both", "factor", "unbalanced_factorization", "bypass_mode",
    "rs_lora", "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
)
LORA_NETWORK_ARGS = (
    "conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
)
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTIONS = ("sdpa", "eager")
SAVE_PRECISION = ("float", "fp16", "bf16")
SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)

# sd-scripts options that a config exported from another tool often carries and that change nothing here:
# they are accepted with a warning instead of failing the run.
IGNORED_SD_SCRIPTS_KEYS = {  # why, translated where it is said
    "xformers": "attention always uses PyTorch SDPA",
    "sdpa": "attention always uses PyTorch SDPA",
    "mem_eff_attn": "attention always uses PyTorch SDPA",
    "max_data_loader_n_workers": "pictures are decoded once and cached",
    "persistent_data_loader_workers": "pictures are decoded once and cached",
    "lowram": "not needed",
    "highvram": "not needed",
    "log_with": "TensorBoard is always written to logging_dir",
    "log_prefix": "not used",
    "save_last_n_epochs": "every saved checkpoint is kept for the preview",
    "save_last_n_steps": "every saved checkpoint is kept for the preview",
    "console_log_simple": "not used",
    "wandb_api_key": "not used",
    "huggingface_repo_id": "nothing is uploaded",
    "ddp_timeout": "not used",
    "no_metadata": "metadata is always written",
}


class ConfigError(ValueError):
    """A config that cannot be trained; the message says what to change."""


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # --- model ---
    pretrained_model_name_or_path: str = _f("", "Base checkpoint: a WebUI .safetensors/.ckpt file or a diffusers folder.")
    v2: bool = _f(False, "sd-scripts' SD2 switch; the architecture is detected from the checkpoint anyway.")
    v_parameterization: bool = _f(False, "Train with v-prediction (SD2 768-v models).")
    clip_skip: Optional[int] = _f(None, "Use the output of the n-th last text-encoder layer (2 for most anime models).")
    max_token_length: Optional[int] = _f(None, "Caption length in tokens: 75 (default), 150 or 225.")
    # --- data ---
    train_data_dir: str = _f("", "Folder holding <repeats>_<concept>/ sub-folders of pictures and captions.")
    reg_data_dir: Optional[str] = _f(None, "Optional folder of regularization pictures, same layout.")
    resolution: Any = _f("512,512", "Training resolution 'W,H' (or one number for a square).")
    caption_extension: str = _f(".caption", "Extension of caption files beside each picture.")
    shuffle_caption: bool = _f(False, "Shuffle the comma-separated tags of each caption every step.")
    keep_tokens: int = _f(0, "Keep the first N tags in place and never drop them (protects the trigger word).")
    caption_dropout_rate: float = _f(0.0, "Probability of training a picture with an empty caption.")
    caption_tag_dropout_rate: float = _f(0.0, "Probability of dropping each (unprotected) tag.")
    flip_aug: bool = _f(False, "Randomly mirror pictures left-right.")
    enable_bucket: bool = _f(False, "Keep each picture's aspect ratio using resolution buckets.")
    min_bucket_reso: int = _f(256, "Smallest bucket side.")
    max_bucket_reso: int = _f(1024, "Largest bucket side.")
    bucket_reso_steps: int = _f(64, "Bucket sides are multiples of this.")
    bucket_no_upscale: bool = _f(
        False, "With enable_bucket: never enlarge a picture. One within the resolution's area trains in a bucket of "
               "its own size rounded down to bucket_reso_steps (only cropped); a larger one is shrunk to that area, "
               "as sd-scripts does. min/max_bucket_reso are then not used.")
    prior_loss_weight: float = _f(1.0, "Loss weight of regularization pictures.")
    cache_latents: bool = _f(False, "Encode every picture once before training (faster, less VRAM).")
    cache_latents_to_disk: bool = _f(False, "Keep the cached latents on disk so the next run reuses them.")
    # --- network ---
    network_module: str = _f("networks.lora", "networks.lora (LoRA/LoCon) or lycoris.kohya (algo= in network_args).")
    network_dim: int = _f(8, "LoRA rank of linear layers.")
    network_alpha: float = _f(1.0, "LoRA alpha; the update is scaled by alpha/dim.")
    conv_dim: Optional[int] = _f(None, "Rank of 3x3 conv layers (LoCon). Unset: conv layers are not trained.")
    conv_alpha: Optional[float] = _f(None, "Alpha of conv layers.")
    network_args: list = _f([], "Extra network options as 'key=value' (algo=locon|loha|lokr, dora_wd=True, conv_dim=4 "
                                "...); a key the network_module does not read is refused.")
    network_weights: Optional[str] = _f(None, "Continue training from this LoRA file.")
    network_train_unet_only: bool = _f(False, "Train the UNet only; the text encoder stays frozen.")
    network_train_text_encoder_only: bool = _f(False, "Train the text encoder(s) only.")
    # --- optimisation ---
    learning_rate: float = _f(1e-4, "Learning rate used where unet_lr / text_encoder_lr are unset.")
    unet_lr: Optional[float] = _f(None, "Learning rate of the UNet part of the network.")
    text_encoder_lr: Optional[float] = _f(None, "Learning rate of the text-encoder part of the network.")
    optimizer_type: str = _f("AdamW", "AdamW, AdamW8bit (CUDA), Lion, Prodigy, Adafactor or SGD.")
    optimizer_args: list = _f([], "Extra optimizer options as 'key=value' (weight_decay=0.01, betas=0.9,0.99 ...).")
    lr_scheduler: str = _f("constant", "constant, constant_with_warmup, cosine, cosine_with_restarts, linear, polynomial "
                                       "(constant with a warm-up trains as constant_with_warmup).")
    lr_warmup_steps: Union[int, float] = _f(0, "Warm-up steps (a number below 1 is a fraction of all steps).")
    lr_scheduler_num_cycles: int = _f(1, "Restarts of cosine_with_restarts.")
    lr_scheduler_power: float = _f(1.0, "Power of the polynomial scheduler.")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm (0: no clipping).")
    train_batch_size: int = _f(1, "Pictures per step.")
    gradient_accumulation_steps: int = _f(1, "Steps whose gradients are summed before one optimizer update.")
    max_train_epochs: Optional[int] = _f(None, "Epochs to train (takes precedence over max_train_steps).")
    max_train_steps: int = _f(1600, "Steps to train when max_train_epochs is unset.")
    seed: Optional[int] = _f(None, "Random seed; the same seed and config give the same weights on one machine.")
    mixed_precision: str = _f("no", "no, fp16 or bf16 (CUDA only; CPU always trains in fp32).")
    full_fp16: bool = _f(False, "sd-scripts' network in fp16; not done here: the network trains in fp32 under "
                                "mixed_precision (a warning says so, the metadata says False).")
    full_bf16: bool = _f(False, "sd-scripts' network in bf16; not done here: the network trains in fp32 under "
                                "mixed_precision (a warning says so).")
    no_half_vae: bool = _f(False, "Keep the VAE in fp32 (needed by some SDXL VAEs in fp16).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less VRAM, slower.")
    noise_offset: Optional[float] = _f(None, "Noise offset (0.05-0.1 helps very dark/bright pictures).")
    min_snr_gamma: Optional[float] = _f(None, "Min-SNR loss weighting gamma (5 is the paper's value).")
    min_timestep: int = _f(0, "Smallest diffusion timestep sampled.")
    max_timestep: int = _f(1000, "Largest diffusion timestep sampled (exclusive).")
    # --- output ---
    output_dir: str = _f("", "Where checkpoints are written.")
    output_name: str = _f("last", "File name stem of the checkpoints.")
    save_model_as: str = _f("safetensors", "File format of the checkpoints (safetensors).")
    save_precision: Optional[str] = _f(None, "float, fp16 or bf16 (default fp16).")
    save_every_n_epochs: Optional[int] = _f(None, "Write a checkpoint every N epochs.")
    save_every_n_steps: Optional[int] = _f(None, "Write a checkpoint every N steps.")
    save_state: bool = _f(False, "Also save optimizer/scheduler/RNG state beside each checkpoint so a run can resume.")
    resume: Optional[str] = _f(None, "Resume from a state folder written by save_state.")
    training_comment: Optional[str] = _f(None, "Free text stored in the file's metadata.")
    logging_dir: Optional[str] = _f(None, "TensorBoard folder.")
    # --- samples ---
    sample_prompts: Optional[str] = _f(None, "File of sample prompts (one per line, --n --w --h --s --l --d options).")
    sample_every_n_steps: Optional[int] = _f(None, "Draw samples every N steps.")
    sample_every_n_epochs: Optional[int] = _f(None, "Draw samples every N epochs.")
    sample_sampler: str = _f("ddim", "Sampler of the sample images.")
    # --- Train Tools' own keys (sd-scripts ignores unknown keys, so configs still move) ---
    events_file: Optional[str] = _f(None, "Where the JSON event stream is appended (default: <output_dir>/events.jsonl).")
    sample_dir: Optional[str] = _f(None, "Where sample images go (default: <output_dir>/sample, as sd-scripts).")
    log_every_n_steps: int = _f(1, "How often a step event (and a host sync for the loss) happens.")
    attention: str = _f(
        "sdpa", "Attention of the UNet and VAE: sdpa (PyTorch's scaled_dot_product_attention; flash or "
                "memory-efficient kernels on CUDA) or eager (plain matmul-softmax, slower; for comparisons).")
    channels_last: Optional[bool] = _f(
        None, "Keep the UNet in channels-last memory format (faster convolutions on NVIDIA GPUs). Unset: on CUDA.")
    network_weights_partial: bool = _f(
        False, "Load a network_weights file that fits the network only partly (the keys that match; the rest "
               "start afresh). Without it such a file is an error naming what did not match.")
    eval_holdout_images: int = _f(
        -1, "Pictures kept out of training to score every checkpoint (the recommended-epoch hint). -1: automatic "
            "(one in ten when there are at least 20 pictures, at most 4); 0: none (score a fixed subset of the "
            "training pictures instead).")

    # ---- derived views -------------------------------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def network_kwargs(self) -> dict[str, str]:
        return parse_kv_list(self.network_args, "network_args")

    @property
    def optimizer_kwargs(self) -> dict[str, str]:
        return parse_kv_list(self.optimizer_args, "optimizer_args")

    @property
    def algo(self) -> str:
        kw = self.network_kwargs
        if self.network_module == "lycoris.kohya":
            return kw.get("algo", "lora").lower()
        return "locon" if self.effective_conv_dim else "lora"

    @property
    def effective_conv_dim(self) -> Optional[int]:
        kw = self.network_kwargs
        value = self.conv_dim if self.conv_dim is not None else kw.get("conv_dim")
        return int(value) if value not in (None, "", 0, "0") else None

    @property
    def effective_conv_alpha(self) -> Optional[float]:
        kw = self.network_kwargs
        value = self.conv_alpha if self.conv_alpha is not None else kw.get("conv_alpha")
        return float(value) if value not in (None, "") else None

    @property
    def use_dora(self) -> bool:
        return str(self.network_kwargs.get("dora_wd", "false")).lower() in ("1", "true", "yes")

    @property
    def dora_on_output(self) -> bool:
        """Where DoRA keeps its magnitude: False (the default here; lycoris' is True) puts it on the input axis,
        ``dora_scale`` of shape (1, in, …), the layout A1111 1.10 and Forge apply correctly (see network.py)."""
        return str(self.network_kwargs.get("wd_on_output", "false")).lower() in ("1", "true", "yes")

    @property
    def effective_save_precision(self) -> str:
        return self.save_precision or "fp16"

    @property
    def effective_events_file(self) -> Path:
        return Path(self.events_file) if self.events_file else Path(self.output_dir) / "events.jsonl"

    @property
    def effective_sample_dir(self) -> Path:
        return Path(self.sample_dir) if self.sample_dir else Path(self.output_dir) / "sample"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = get_type_hints(TrainConfig)


def field_help(name: str) -> str:
    return FIELDS[name].metadata.get("help", "")


def parse_resolution(value: Any) -> tuple[int, int]:
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        parts = [int(v) for v in value]
    else:
        text = str(value).replace("x", ",").replace("X", ",")
        try:
            parts = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(tr("resolution {value} is not 'W,H' or a number, e.g. resolution = \"512,512\"",
                                 value=repr(value))) from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ConfigError(tr("resolution {value} is not 'W,H' or a number, e.g. resolution = \"512,512\"",
                             value=repr(value)))
    return parts[0], parts[1]


def parse_kv_list(items: Any, what: str) -> dict[str, str]:
    if isinstance(items, str):
        items = items.split()
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in str(item):
            raise ConfigError(tr("{what}: {item} is not 'key=value'", what=what, item=repr(item)))
        key, value = str(item).split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _coerce(name: str, value: Any) -> Any:
    hint = _HINTS[name]
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    if value is None:
        if optional or hint is Any:
            return None
        raise ConfigError(tr("{name} must not be empty", name=name))
    base = hint
    if optional:
        base = next(a for a in get_args(hint) if a is not type(None))
    if base is Any:
        return value
    if get_origin(base) is Union:  # int | float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(tr("{name} must be a number, got {value}", name=name, value=repr(value)))
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(tr("{name} must be true or false, got {value}", name=name, value=repr(value)))
    if base is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(tr("{name} must be a whole number, got {value}", name=name, value=repr(value)))
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(tr("{name} must be a number, got {value}", name=name, value=repr(value)))
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(tr("{name} must be text, got {value}", name=name, value=repr(value)))
        return value
    if base is list:
        if isinstance(value, str):
            return value.split()
        if not isinstance(value, list):
            raise ConfigError(tr("{name} must be a list of 'key=value' strings, got {value}", name=name, value=repr(value)))
        return [str(v) for v in value]
    raise AssertionError(f"unhandled type for {name}: {hint}")


def flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts flattens one level of [sections] in its config files; so do we."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def config_from_dict(data: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """Build a config; returns it with warnings about accepted-but-ignored sd-scripts keys."""
    data = flatten_sections(data)
    unknown = sorted(k for k in data if k not in FIELDS and k not in IGNORED_SD_SCRIPTS_KEYS)
    if unknown:
        raise ConfigError(tr(
            "unknown config key(s): {keys}. Check the spelling; keys follow sd-scripts' names (e.g. max_train_epochs, "
            "network_dim).", keys=", ".join(unknown)))
    warnings = [tr("config key {key} is ignored: {why}", key=repr(k), why=tr(IGNORED_SD_SCRIPTS_KEYS[k]))
                for k in sorted(data) if k in IGNORED_SD_SCRIPTS_KEYS]
    values = {k: _coerce(k, v) for k, v in data.items() if k in FIELDS}
    return TrainConfig(**values), warnings


def network_args_problems(cfg: TrainConfig) -> list[str]:
    """network_args the network_module would not read (they would change nothing, or were mistyped), named with
    the ones it reads. LyCORIS and sd-scripts skip such keys silently."""
    if cfg.network_module not in NETWORK_MODULES:
        return []
    lycoris = cfg.network_module == "lycoris.kohya"
    known = LYCORIS_NETWORK_ARGS if lycoris else LORA_NETWORK_ARGS
    unread = [key for key in cfg.network_kwargs if key not in known]
    if not unread:
        return []
    needs_lycoris = [key for key in unread if not lycoris and key in LYCORIS_NETWORK_ARGS]
    others = [key for key in unread if key not in needs_lycoris]
    problems = []
    if needs_lycoris:
        problems.append(tr("network_args {names} need network_module = \"lycoris.kohya\" (networks.lora does not read "
                           "them)", names=", ".join(needs_lycoris)))
    if others:
        problems.append(tr("network_args {names} are not read by {module}, so they would change nothing: remove "
                           "them or correct their spelling ({module} reads {known})", names=", ".join(others),
                           module=cfg.network_module, known=", ".join(known)))
    return problems


def validate(cfg: TrainConfig) -> None:
    """Checks that need no files. Raises ConfigError with every problem found."""
    problems: list[str] = []
    if not cfg.pretrained_model_name_or_path:
        problems.append(tr("pretrained_model_name_or_path is required (the base checkpoint)"))
    if not cfg.train_data_dir:
        problems.append(tr("train_data_dir is required"))
    if not cfg.output_dir:
        problems.append(tr("output_dir is required"))
    try:
        w, h = cfg.resolution_wh
        step = cfg.bucket_reso_steps
        if w <= 0 or h <= 0 or w % step or h % step:
            problems.append(tr("resolution {w}x{h} must be positive multiples of {step}", w=w, h=h, step=step))
    except ConfigError as exc:
        problems.append(str(exc))
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        problems.append(tr("min_bucket_reso must not exceed max_bucket_reso"))
    elif cfg.enable_bucket and not problems:
        w, h = cfg.resolution_wh
        if cfg.min_bucket_reso > min(w, h):
            problems.append(tr("min_bucket_reso ({value}) must not exceed the resolution's shorter side ({side}): "
                               "lower min_bucket_reso", value=cfg.min_bucket_reso, side=min(w, h)))
        if cfg.max_bucket_reso < max(w, h):
            problems.append(tr("max_bucket_reso ({value}) must not be below the resolution's longer side ({side}): "
                               "raise max_bucket_reso", value=cfg.max_bucket_reso, side=max(w, h)))
    if cfg.network_module not in NETWORK_MODULES:
        problems.append(tr("network_module {value} is not supported; use one of {choices}", value=repr(cfg.network_module),
                               choices=", ".join(NETWORK_MODULES)))
    try:
        if cfg.attention not in ATTENTIONS:
            problems.append(tr("attention={attention} is not supported; use one of {choices}",
                               attention=cfg.attention, choices=", ".join(ATTENTIONS)))
        if cfg.algo not in ALGOS:
            problems.append(tr("algo={algo} is not supported; use one of {choices}", algo=cfg.algo,
                               choices=", ".join(ALGOS)))
        problems.extend(network_args_problems(cfg))
        cfg.optimizer_kwargs
    except ConfigError as exc:
        problems.append(str(exc))
    if cfg.network_dim < 1:
        problems.append(tr("network_dim must be at least 1"))
    if cfg.network_alpha <= 0:
        problems.append(tr("network_alpha must be above 0"))
    if cfg.optimizer_type.lower() not in [o.lower() for o in OPTIMIZERS]:
        problems.append(tr("optimizer_type {value} is not supported; use one of {choices}", value=repr(cfg.optimizer_type),
                               choices=", ".join(OPTIMIZERS)))
    if cfg.lr_scheduler not in SCHEDULERS:
        problems.append(tr("lr_scheduler {value} is not supported; use one of {choices}", value=repr(cfg.lr_scheduler),
                               choices=", ".join(SCHEDULERS)))
    if cfg.mixed_precision not in MIXED_PRECISION:
        problems.append(tr("mixed_precision must be one of {choices}", choices=", ".join(MIXED_PRECISION)))
    if cfg.effective_save_precision not in SAVE_PRECISION:
        problems.append(tr("save_precision must be one of {choices}", choices=", ".join(SAVE_PRECISION)))
    if cfg.save_model_as != "safetensors":
        problems.append(tr("save_model_as must be safetensors (the WebUI refuses pickled LoRA files from modern torch)"))
    if cfg.sample_sampler not in SAMPLERS:
        problems.append(tr("sample_sampler {value} is not supported; use one of {choices}", value=repr(cfg.sample_sampler),
                               choices=", ".join(SAMPLERS)))
    if cfg.max_token_length not in (None, 75, 150, 225):
        problems.append(tr("max_token_length must be 75, 150 or 225"))
    if cfg.clip_skip is not None and cfg.clip_skip < 1:
        problems.append(tr("clip_skip must be 1 or more"))
    if cfg.train_batch_size < 1 or cfg.gradient_accumulation_steps < 1:
        problems.append(tr("train_batch_size and gradient_accumulation_steps must be at least 1"))
    if cfg.max_train_epochs is not None and cfg.max_train_epochs < 1:
        problems.append(tr("max_train_epochs must be at least 1"))
    if cfg.max_train_epochs is None and cfg.max_train_steps < 1:
        problems.append(tr("max_train_steps must be at least 1"))
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(tr("{name} must be between 0 and 1", name=name))
    if cfg.keep_tokens < 0:
        problems.append(tr("keep_tokens must not be negative"))
    if not 0 <= cfg.min_timestep < cfg.max_timestep <= 1000:
        problems.append(tr("timesteps must satisfy 0 <= min_timestep < max_timestep <= 1000"))
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        problems.append(tr("network_train_unet_only and network_train_text_encoder_only exclude each other"))
    for name in ("learning_rate", "unet_lr", "text_encoder_lr"):
        value = getattr(cfg, name)
        if value is not None and (value < 0 or math.isnan(value)):
            problems.append(tr("{name} must not be negative", name=name))
    if "/" in cfg.output_name or "\\" in cfg.output_name or cfg.output_name in ("", ".", ".."):
        problems.append(tr("output_name must be a plain file name without folders"))
    if problems:
        raise ConfigError("; ".join(problems))


# ---- TOML in/out -------------------------------------------------------------------------------------------

def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
        return tomllib.loads(text)
    except ModuleNotFoundError:
        pass
    try:
        import tomli  # type: ignore
        return tomli.loads(text)
    except ModuleNotFoundError:
        pass
    try:
        from pip._vendor import tomli as pip_tomli  # the WebUI's Python 3.10 always has pip
        return pip_tomli.loads(text)
    except ModuleNotFoundError:
        import toml  # type: ignore  # the trainer's private dependencies have it
        return toml.loads(text)


def load_config(path: Union[str, os.PathLike]) -> tuple[TrainConfig, list[str]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(tr("cannot read config {path}: {error}", path=path, error=exc.strerror or exc)) from None
    try:
        data = _toml_loads(text)
    except Exception as exc:  # every TOML library has its own error class
        raise ConfigError(tr("{path} is not valid TOML: {error}", path=path, error=exc)) from None
    return config_from_dict(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            raise ValueError("TOML cannot hold inf/nan here")
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_config(cfg: TrainConfig) -> str:
    """Flat TOML with every set key (None is left out, TOML has no null)."""
    lines = []
    for name in FIELDS:
        value = getattr(cfg, name)
        if value is None:
            continue
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path: Union[str, os.PathLike]) -> None:
    atomic_write_text(path, dumps_config(cfg))
