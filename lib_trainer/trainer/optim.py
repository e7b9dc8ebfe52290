"""Optimizers and learning-rate schedulers, by sd-scripts' names."""
from __future__ import annotations

import ast
from typing import Any, Callable, Optional

import torch

from lib_trainer.common.i18n import tr

from .schema import ConfigError, TrainConfig

Warn = Callable[[str], None]


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def optimizer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {k: _literal(v) for k, v in cfg.optimizer_kwargs.items()}


def create_optimizer(cfg: TrainConfig, param_groups: list[dict], device: torch.device, warn: Optional[Warn] = None):
    name = cfg.optimizer_type.lower()
    kwargs = optimizer_kwargs(cfg)
    lr = cfg.learning_rate
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, **multi_tensor(kwargs, device, fused_on_cuda=True))
    if name == "adamw8bit":
        return adamw8bit(param_groups, lr, kwargs, device)
    if name == "lion":
        from lion_pytorch import Lion

        return Lion(param_groups, lr=lr, **kwargs)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(param_groups, lr=lr, **kwargs)
    if name == "adafactor":
        return adafactor(cfg, param_groups, kwargs, warn or (lambda message: None))
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, **multi_tensor(kwargs, device, fused_on_cuda=False))
    raise ConfigError(tr("unknown optimizer_type {name}", name=repr(cfg.optimizer_type)))


def adafactor(cfg: TrainConfig, param_groups: list[dict], kwargs: dict[str, Any], warn: Warn):
    """transformers' Adafactor with sd-scripts' defaults (``get_optimizer``): relative_step on unless
    optimizer_args turn it off (warmup_init needs it, so it turns it back on); scale_parameter and warmup_init
    as transformers has them (True, False). With relative_step the optimizer computes its own step size: no
    learning rate is given to it (the groups' rates are removed) and the scheduler is Adafactor's own (see
    schedule_plan)."""
    from transformers.optimization import Adafactor

    kwargs.setdefault("relative_step", True)
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        warn(tr("Adafactor: warmup_init needs relative_step, so relative_step is on (as in sd-scripts)"))
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return Adafactor(param_groups, lr=cfg.learning_rate, **kwargs)
    if cfg.unet_lr is not None or cfg.text_encoder_lr is not None:
        warn(tr("Adafactor with relative_step computes its own step size: unet_lr and text_encoder_lr are not used "
                "(optimizer_args = [\"relative_step=False\"] uses them)"))
    for group in param_groups:
        group.pop("lr", None)
    return Adafactor(param_groups, lr=None, **kwargs)


def relative_step(optimizer) -> bool:
    """Whether the optimizer (or the one accelerate's wrapper holds) is an Adafactor that computes its own step
    size."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return type(optimizer).__name__ == "Adafactor" and bool(optimizer.defaults.get("relative_step"))


def multi_tensor(kwargs: dict[str, Any], device: torch.device, fused_on_cuda: bool) -> dict[str, Any]:
    """torch's multi-tensor update unless optimizer_args choose (``fused=...`` or ``foreach=...``): the fused
    kernel on CUDA where asked for (AdamW; torch's own default there is foreach), foreach on the CPU, where torch's
    default is one tensor at a time. A LoRA has hundreds of small tensors (rank 4 on SD1.5's U-Net and text
    encoder: 528), so the per-tensor loop costs more than the arithmetic; foreach gives bit-identical weights."""
    if "fused" in kwargs or "foreach" in kwargs:
        return kwargs
    if device.type == "cuda":
        return {**kwargs, "fused": True} if fused_on_cuda else kwargs
    return {**kwargs, "foreach": True}


def adamw8bit(param_groups: list[dict], lr: float, kwargs: dict[str, Any], device: torch.device):
    """bitsandbytes' AdamW8bit. install.py installs bitsandbytes only next to a CUDA torch; recent versions also
    run on the CPU, older ones fail there at the first step, so off CUDA one tiny step is tried first."""
    use_adamw = tr('use optimizer_type = "AdamW"')
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        if device.type != "cuda":
            raise ConfigError(tr("AdamW8bit needs an NVIDIA GPU (bitsandbytes); on this machine {use_adamw}",
                                 use_adamw=use_adamw)) from None
        raise ConfigError(tr("AdamW8bit needs bitsandbytes, which could not be loaded ({error}); reinstall the trainer "
                             "dependencies or {use_adamw}", error=exc, use_adamw=use_adamw)) from None
    if device.type != "cuda":
        try:
            probe = torch.nn.Parameter(torch.zeros(4096, device=device))
            probe.grad = torch.ones_like(probe)
            bnb.optim.AdamW8bit([probe], lr=1e-3).step()
        except Exception as exc:
            raise ConfigError(tr(
                "AdamW8bit needs an NVIDIA GPU: bitsandbytes {version} does not run on {device} ({error}); {use_adamw}",
                version=getattr(bnb, "__version__", ""), device=device.type, error=type(exc).__name__,
                use_adamw=use_adamw)) from None
    return bnb.optim.AdamW8bit(param_groups, lr=lr, **kwargs)


def warmup_steps(cfg: TrainConfig, total_updates: int) -> int:
    value = cfg.lr_warmup_steps
    if isinstance(value, float) and value < 1:
        return int(value * total_updates)
    return int(value)


def schedule_plan(cfg: TrainConfig, optimizer, total_updates: int) -> tuple[str, int, list[str]]:
    """The scheduler actually used, its warm-up steps and what was changed to get there, in words.

    The name is what sd-scripts records in ``ss_lr_scheduler``: ``adafactor:<lr>`` for Adafactor with
    relative_step (its step size is its own, so the configured scheduler and warm-up are not used). constant with
    a warm-up, which sd-scripts refuses, trains as constant_with_warmup."""
    warmup = warmup_steps(cfg, total_updates)
    if relative_step(optimizer):
        notes = []
        if cfg.lr_scheduler != "constant" or warmup:
            notes.append(tr("Adafactor with relative_step (sd-scripts' default) computes its own step size: "
                            "lr_scheduler {scheduler} and the warm-up are not used (optimizer_args = "
                            "[\"relative_step=False\"] trains with learning_rate and the scheduler)",
                            scheduler=cfg.lr_scheduler))
        return f"adafactor:{cfg.learning_rate}", 0, notes
    if cfg.lr_scheduler == "constant" and warmup:
        return "constant_with_warmup", warmup, [tr(
            "lr_scheduler constant has no warm-up, so this run uses constant_with_warmup with {steps} warm-up steps "
            "(set lr_warmup_steps = 0 for a constant rate from the first step)", steps=warmup)]
    return cfg.lr_scheduler, warmup, []


def create_scheduler(cfg: TrainConfig, optimizer, total_updates: int, name: str, warmup: int):
    """The scheduler ``name`` with ``warmup`` steps, as schedule_plan chose them."""
    if name.startswith("adafactor:"):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=cfg.learning_rate)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_updates,
        num_cycles=cfg.lr_scheduler_num_cycles,
        power=cfg.lr_scheduler_power,
    )


def describe_optimizer(optimizer, cfg: TrainConfig) -> str:
    cls = type(optimizer)
    args = ",".join(cfg.optimizer_args) if cfg.optimizer_args else ""
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
