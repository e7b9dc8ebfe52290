"""Optimizers and learning-rate schedulers, by sd-scripts' names."""
from __future__ import annotations

import ast
from typing import Any

import torch

from .schema import ConfigError, TrainConfig


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def optimizer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {k: _literal(v) for k, v in cfg.optimizer_kwargs.items()}


def create_optimizer(cfg: TrainConfig, param_groups: list[dict], device: torch.device):
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
        from transformers.optimization import Adafactor

        kwargs.setdefault("relative_step", False)
        kwargs.setdefault("scale_parameter", False)
        kwargs.setdefault("warmup_init", False)
        return Adafactor(param_groups, lr=None if kwargs["relative_step"] else lr, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, **multi_tensor(kwargs, device, fused_on_cuda=False))
    raise ConfigError(f"unknown optimizer_type {cfg.optimizer_type!r}")


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
    use_adamw = 'use optimizer_type = "AdamW"'
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        if device.type != "cuda":
            raise ConfigError(f"AdamW8bit needs an NVIDIA GPU (bitsandbytes); on this machine {use_adamw}") from None
        raise ConfigError(
            f"AdamW8bit needs bitsandbytes, which could not be loaded ({exc}); "
            f"reinstall the trainer dependencies or {use_adamw}"
        ) from None
    if device.type != "cuda":
        try:
            probe = torch.nn.Parameter(torch.zeros(4096, device=device))
            probe.grad = torch.ones_like(probe)
            bnb.optim.AdamW8bit([probe], lr=1e-3).step()
        except Exception as exc:
            raise ConfigError(
                f"AdamW8bit needs an NVIDIA GPU: bitsandbytes {getattr(bnb, '__version__', '')} does not run on "
                f"{device.type} ({type(exc).__name__}); {use_adamw}"
            ) from None
    return bnb.optim.AdamW8bit(param_groups, lr=lr, **kwargs)


def warmup_steps(cfg: TrainConfig, total_updates: int) -> int:
    value = cfg.lr_warmup_steps
    if isinstance(value, float) and value < 1:
        return int(value * total_updates)
    return int(value)


def create_scheduler(cfg: TrainConfig, optimizer, total_updates: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_updates),
        num_training_steps=total_updates,
        num_cycles=cfg.lr_scheduler_num_cycles,
        power=cfg.lr_scheduler_power,
    )


def describe_optimizer(optimizer, cfg: TrainConfig) -> str:
    cls = type(optimizer)
    args = ",".join(cfg.optimizer_args) if cfg.optimizer_args else ""
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
