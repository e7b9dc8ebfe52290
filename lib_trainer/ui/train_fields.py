"""The fields of the training form: which config key each edits, how it is shown, and the conversions
form values ↔ config values (``lib_trainer.presets`` decides the values; this module only maps them).

A few fields are the tab's own, not config keys: ``network_type`` (LoRA / LoCon / LoHa / LoKr → network_module,
network_args, conv_dim), ``sample_prompt`` (written to the samples' prompt file by ``config.build_config``;
empty: the first caption), ``trigger`` (the version's trigger word) and ``auto_preview`` (read by the job runner
after training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lib_trainer.common.i18n import tr
from lib_trainer.trainer.schema import MIXED_PRECISION, OPTIMIZERS, SCHEDULERS

NETWORK_TYPES = ("lora", "locon", "loha", "lokr")
UI_ONLY = ("network_type", "sample_prompt", "trigger", "auto_preview")


@dataclass(frozen=True)
class Field:
    key: str
    kind: str  # "int" | "float" | "bool" | "choice" | "text"
    label: Callable[[], str]
    advanced: bool = False
    choices: Tuple[Any, ...] = ()
    info: Optional[Callable[[], str]] = None


FIELDS: Tuple[Field, ...] = (
    # in view
    Field("max_train_epochs", "int", lambda: tr("Epochs")),
    Field("network_dim", "int", lambda: tr("Rank (dim)")),
    Field("network_alpha", "float", lambda: tr("Alpha")),
    Field("unet_lr", "float", lambda: tr("UNet learning rate")),
    Field("text_encoder_lr", "float", lambda: tr("Text encoder learning rate")),
    Field("resolution", "int", lambda: tr("Resolution (px)")),
    Field("train_batch_size", "int", lambda: tr("Batch size")),
    Field("trigger", "text", lambda: tr("Trigger word")),
    # under "Advanced"
    Field("network_type", "choice", lambda: tr("Network type"), True, NETWORK_TYPES),
    Field("conv_dim", "int", lambda: tr("Conv rank (LoCon; 0: none)"), True),
    Field("conv_alpha", "float", lambda: tr("Conv alpha"), True),
    Field("optimizer_type", "choice", lambda: tr("Optimizer"), True, OPTIMIZERS),
    Field("lr_scheduler", "choice", lambda: tr("Learning-rate schedule"), True, SCHEDULERS),
    Field("lr_warmup_steps", "float", lambda: tr("Warm-up (steps, or a fraction below 1)"), True),
    Field("lr_scheduler_num_cycles", "int", lambda: tr("Restarts (cosine with restarts)"), True),
    Field("enable_bucket", "bool", lambda: tr("Aspect-ratio buckets"), True),
    Field("min_bucket_reso", "int", lambda: tr("Smallest bucket side (empty: half the resolution)"), True),
    Field("max_bucket_reso", "int", lambda: tr("Largest bucket side (empty: twice the resolution)"), True),
    Field("save_every_n_epochs", "int", lambda: tr("Save a checkpoint every N epochs"), True),
    Field("seed", "int", lambda: tr("Seed"), True),
    Field("clip_skip", "int", lambda: tr("Clip skip"), True),
    Field("noise_offset", "float", lambda: tr("Noise offset (0: off)"), True),
    Field("min_snr_gamma", "float", lambda: tr("Min-SNR gamma (0: off)"), True),
    Field("flip_aug", "bool", lambda: tr("Mirror pictures randomly"), True),
    Field("shuffle_caption", "bool", lambda: tr("Shuffle tags"), True),
    Field("keep_tokens", "int", lambda: tr("Keep the first N tags in place"), True),
    Field("caption_dropout_rate", "float", lambda: tr("Caption dropout"), True),
    Field("gradient_checkpointing", "bool", lambda: tr("Gradient checkpointing (less VRAM, slower)"), True),
    Field("cache_latents", "bool", lambda: tr("Cache latents"), True),
    Field("gradient_accumulation_steps", "int", lambda: tr("Gradient accumulation steps"), True),
    Field("mixed_precision", "choice", lambda: tr("Mixed precision"), True, MIXED_PRECISION),
    Field("network_train_unet_only", "bool", lambda: tr("Train the UNet only"), True),
    Field("max_token_length", "choice", lambda: tr("Caption length (tokens)"), True, (75, 150, 225)),
    Field("eval_holdout_images", "int", lambda: tr("Held-out pictures for the score (-1: automatic)"), True),
    Field("sample_prompt", "text", lambda: tr("Sample prompt (empty: the first caption)"), True),
    Field("sample_every_n_epochs", "int", lambda: tr("Draw a sample every N epochs (0: none)"), True),
    Field("auto_preview", "bool", lambda: tr("Draw the preview grid when training ends"), True),
)
KEYS: Tuple[str, ...] = tuple(f.key for f in FIELDS)
BY_KEY: Dict[str, Field] = {f.key: f for f in FIELDS}

#: Values of fields a preset does not set (sd-scripts' defaults, shown so that a person sees them).
BASE_VALUES: Dict[str, Any] = {
    "conv_dim": 0, "conv_alpha": 0.0, "lr_scheduler_num_cycles": 1, "clip_skip": 1, "noise_offset": 0.0,
    "min_snr_gamma": 0.0, "caption_dropout_rate": 0.0, "gradient_accumulation_steps": 1,
    "network_train_unet_only": False, "max_token_length": 75, "eval_holdout_images": -1, "sample_prompt": "",
    "sample_every_n_epochs": 1, "auto_preview": True, "trigger": "", "enable_bucket": True,
}


def network_type_label(value: str) -> str:
    return {"lora": tr("LoRA"), "locon": tr("LoCon (LoRA with conv layers)"), "loha": tr("LoHa"),
            "lokr": tr("LoKr")}.get(value, value)


def choice_label(key: str, value: Any) -> str:
    """What a choice field shows for a config value (in the person's language); the value itself is passed on."""
    if key == "network_type":
        return network_type_label(value or "lora")
    if key == "mixed_precision":
        return {"no": tr("off (fp32)"), "fp16": tr("fp16"), "bf16": tr("bf16")}.get(value, str(value))
    if key == "lr_scheduler":
        return {"constant": tr("constant"), "constant_with_warmup": tr("constant with warm-up"),
                "cosine": tr("cosine"), "cosine_with_restarts": tr("cosine with restarts"), "linear": tr("linear"),
                "polynomial": tr("polynomial")}.get(value, str(value))
    return str(value)


def choice_value(key: str, label: Any) -> Any:
    """The config value of a label shown by :func:`choice_label` (a value given as is is kept)."""
    field = BY_KEY.get(key)
    if field is None or label is None:
        return label
    for value in field.choices:
        if label == choice_label(key, value) or str(label) == str(value):
            return value
    return label


def _resolution_side(value: Any) -> int:
    text = str(value or "512").replace("x", ",")
    try:
        return int(float(text.split(",")[0]))
    except ValueError:
        return 512


def form_from_values(values: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The form's values for config ``values`` (a preset's, or a saved form) plus the tab's own ``extra``."""
    form = dict(BASE_VALUES)
    for key in KEYS:
        if key in values and key not in ("resolution", "network_type"):
            form[key] = values[key]
    form["resolution"] = _resolution_side(values.get("resolution", 512))
    module = values.get("network_module", "networks.lora")
    args = [str(a) for a in values.get("network_args") or []]
    algo = next((a.split("=", 1)[1].strip().lower() for a in args if a.startswith("algo=")), None)
    if module == "lycoris.kohya" and algo in NETWORK_TYPES:
        form["network_type"] = algo
    elif values.get("conv_dim"):
        form["network_type"] = "locon"
    else:
        form["network_type"] = values.get("network_type", "lora") if values.get("network_type") in NETWORK_TYPES \
            else "lora"
    for key in ("conv_dim", "conv_alpha", "noise_offset", "min_snr_gamma", "clip_skip", "max_token_length"):
        if form.get(key) is None:
            form[key] = BASE_VALUES[key]
    form.update(extra or {})
    return form


def _number(kind: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if kind == "int":
        return int(round(float(value)))
    return float(value)


def overrides_from_form(form: Dict[str, Any]) -> Dict[str, Any]:
    """The config values the form sets (a blank number leaves the preset's value), without the tab's own fields."""
    out: Dict[str, Any] = {}
    for f in FIELDS:
        if f.key in UI_ONLY or f.key not in form:
            continue
        value = form[f.key]
        if f.kind in ("int", "float"):
            value = _number(f.kind, value)
        elif f.kind == "bool":
            value = bool(value)
        elif f.key == "max_token_length":
            value = int(value) if value not in (None, "") else None
        out[f.key] = value
    if out.get("resolution") is not None:
        side = int(out["resolution"])
        out["resolution"] = f"{side},{side}"
    # build_config drops None values (the preset's value stays), so "off" is written as 0, which the trainer
    # reads as off for these keys.
    for key in ("noise_offset", "min_snr_gamma", "caption_dropout_rate"):
        if not out.get(key):
            out[key] = 0.0
    kind = form.get("network_type") or "lora"
    conv_dim = out.pop("conv_dim", None) or 0
    conv_alpha = out.pop("conv_alpha", None) or 0.0
    if kind in ("loha", "lokr"):
        out["network_module"] = "lycoris.kohya"
        out["network_args"] = [f"algo={kind}"]
        out["conv_dim"], out["conv_alpha"] = conv_dim, (conv_alpha or float(conv_dim)) if conv_dim else 0.0
    elif kind == "locon":
        out["network_module"] = "networks.lora"
        out["network_args"] = []
        dim = int(out.get("network_dim") or 8)
        out["conv_dim"] = conv_dim or max(1, dim // 2)
        out["conv_alpha"] = conv_alpha or max(1.0, out["conv_dim"] / 2)
    else:
        out["network_module"] = "networks.lora"
        out["network_args"] = []
        out["conv_dim"], out["conv_alpha"] = 0, 0.0
    if not out.get("sample_every_n_epochs"):
        out["sample_every_n_epochs"] = None
    return out


def form_to_dict(values: Sequence[Any]) -> Dict[str, Any]:
    """The form's values, given in the order of :data:`KEYS` (as gradio passes inputs)."""
    return dict(zip(KEYS, values))


def form_to_list(form: Dict[str, Any]) -> List[Any]:
    return [form.get(key) for key in KEYS]


__all__ = ["Field", "FIELDS", "KEYS", "BY_KEY", "NETWORK_TYPES", "UI_ONLY", "BASE_VALUES", "form_from_values",
           "overrides_from_form", "form_to_dict", "form_to_list", "network_type_label", "choice_label", "choice_value"]
