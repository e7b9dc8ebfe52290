"""FLUX.1's training objective: rectified flow matching with sd-scripts' choices and key names.

For clean latents x0, noise n and a noise level sigma in (0, 1) the model sees x_sigma = (1 - sigma) x0 + sigma n
and is trained towards the velocity n - x0 (sd-scripts' ``flux_train_network.py``: ``target = noise - latents``).
How sigma is drawn is ``timestep_sampling``:

- ``sigma``: the noise levels of a ``FlowMatchEulerDiscreteScheduler(1000, shift=discrete_flow_shift)``, indexed by
  u ~ ``weighting_scheme`` (uniform; ``logit_normal`` with ``logit_mean`` / ``logit_std``; ``mode`` with ``mode_scale``)
- ``uniform``: sigma ~ U(0, 1);  ``sigmoid``: sigma = sigmoid(sigmoid_scale * z), z ~ N(0, 1)
- ``shift``: s = sigmoid(sigmoid_scale * z), sigma = shift * s / (1 + (shift - 1) * s) with shift = discrete_flow_shift
- ``flux_shift``: s as above, sigma = e^mu / (e^mu + 1/s - 1) with mu linear in the packed image's token count
  (0.5 at 256 tokens, 1.15 at 4096): FLUX.1's resolution-dependent shift.

``model_prediction_type``: ``raw`` (the output is the velocity), ``additive`` (output + x_sigma), ``sigma_scaled``
(x_sigma - sigma * output, weighted by ``weighting_scheme``'s sigma_sqrt / cosmap), as sd-scripts computes them:
its target stays n - x0 for all three. The transformer takes sigma itself as its timestep (diffusers multiplies
by 1000 inside) and, for dev, ``guidance_scale`` as its guidance input.

Latents are packed into 2x2 patches: (B, 16, H, W) -> (B, H/2 * W/2, 64), with position ids (0, row, column) per
patch and zeros per text token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

TIMESTEP_SAMPLING = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
MODEL_PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")
BASE_SEQ_LEN, BASE_SHIFT, MAX_SEQ_LEN, MAX_SHIFT = 256, 0.5, 4096, 1.15


@dataclass(frozen=True)
class FlowMatchingConfig:
    """sd-scripts' keys and defaults (``library/flux_train_utils.py``, ``train_util.py``)."""
    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    model_prediction_type: str = "sigma_scaled"
    guidance_scale: float = 3.5
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        for key, allowed in (("timestep_sampling", TIMESTEP_SAMPLING),
                             ("model_prediction_type", MODEL_PREDICTION_TYPES),
                             ("weighting_scheme", WEIGHTING_SCHEMES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} = {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.discrete_flow_shift <= 0:
            raise ValueError(f"discrete_flow_shift must be > 0 (got {self.discrete_flow_shift})")
        if self.sigmoid_scale <= 0:
            raise ValueError(f"sigmoid_scale must be > 0 (got {self.sigmoid_scale})")


# ---------------------------------------------------------------------------------------------- sigma

def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The discrete flow shift: shift * s / (1 + (shift - 1) * s) (FlowMatchEulerDiscreteScheduler's)."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def flux_mu(image_seq_len: int) -> float:
    """FLUX.1's shift exponent, linear in the packed token count through (256, 0.5) and (4096, 1.15)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (image_seq_len - BASE_SEQ_LEN)


def time_shift(mu: float, sigmas: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** power)


def _density(cfg: FlowMatchingConfig, batch: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """u in [0, 1) for the ``sigma`` sampling (SD3's timestep densities, as sd-scripts draws them on the CPU)."""
    if cfg.weighting_scheme == "logit_normal":
        return torch.sigmoid(torch.normal(cfg.logit_mean, cfg.logit_std, (batch,), generator=generator))
    u = torch.rand((batch,), generator=generator)
    if cfg.weighting_scheme == "mode":
        u = 1 - u - cfg.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def scheduler_sigmas(cfg: FlowMatchingConfig) -> torch.Tensor:
    """The training noise levels of diffusers' FlowMatchEulerDiscreteScheduler with ``discrete_flow_shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps,
                                                shift=cfg.discrete_flow_shift)
    return scheduler.sigmas.float()


def sample_sigmas(cfg: FlowMatchingConfig, batch: int, latent_hw: tuple[int, int],
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One noise level per sample, shape (batch,), float32 on the CPU. ``latent_hw`` is the unpacked latent size."""
    mode = cfg.timestep_sampling
    if mode == "sigma":
        u = _density(cfg, batch, generator)
        table = scheduler_sigmas(cfg)
        return table[(u * cfg.num_train_timesteps).long().clamp(0, len(table) - 1)]
    if mode == "uniform":
        return torch.rand((batch,), generator=generator)
    s = torch.sigmoid(cfg.sigmoid_scale * torch.randn((batch,), generator=generator))
    if mode == "sigmoid":
        return s
    if mode == "shift":
        return shift_sigmas(s, cfg.discrete_flow_shift)
    h, w = latent_hw
    return time_shift(flux_mu((h // 2) * (w // 2)), s)


# ---------------------------------------------------------------------------------------------- inputs and target

def _broadcast(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigmas.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = _broadcast(sigmas, latents)
    return ((1 - s) * latents.float() + s * noise.float()).to(latents.dtype)


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise.float() - latents.float()


def apply_model_prediction_type(cfg: FlowMatchingConfig, prediction: torch.Tensor, noisy: torch.Tensor,
                                sigmas: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(what the loss compares with the target, a per-sample weighting or None), as sd-scripts computes them."""
    if cfg.model_prediction_type == "raw":
        return prediction, None
    if cfg.model_prediction_type == "additive":
        return prediction + noisy, None
    s = _broadcast(sigmas, prediction)
    return prediction * (-s) + noisy, loss_weighting(cfg.weighting_scheme, s)


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    if scheme == "sigma_sqrt":
        return (sigmas ** -2.0).float()
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor,
                       weighting: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample mean squared error (B,), weighted; the loop averages it (and applies prior_loss_weight)."""
    err = (prediction.float() - target.float()) ** 2
    if weighting is not None:
        err = err * weighting
    return err.mean(dim=tuple(range(1, err.ndim)))


# ---------------------------------------------------------------------------------------------- packing, ids, guidance

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): each 2x2 patch one token, channels major (c, dy, dx)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latents of {h}x{w} cannot be packed into 2x2 patches (use sizes divisible by 16 px)")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    b, n, d = packed.shape
    c = d // 4
    x = packed.reshape(b, latent_h // 2, latent_w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, latent_h, latent_w)


def image_ids(latent_h: int, latent_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H/2 * W/2, 3): (0, row, column) of every packed patch, in packing order."""
    rows = torch.arange(latent_h // 2, device=device, dtype=dtype)
    cols = torch.arange(latent_w // 2, device=device, dtype=dtype)
    ids = torch.zeros(latent_h // 2, latent_w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


def text_ids(seq_len: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)


def guidance_input(cfg: FlowMatchingConfig, batch: int, guidance_embeds: bool, device=None) -> Optional[torch.Tensor]:
    """dev is guidance-distilled: it takes ``guidance_scale`` as an input (sd-scripts' docs train with 1.0);
    schnell has no such input."""
    if not guidance_embeds:
        return None
    return torch.full((batch,), float(cfg.guidance_scale), device=device)


# ---------------------------------------------------------------------------------------------- latent space

def to_model_latents(ae_latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """The AE's latents -> the transformer's space: (z - shift) * scale (FLUX.1: 0.1159, 0.3611)."""
    return (ae_latents - shift_factor) * scaling_factor


def from_model_latents(latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    return latents / scaling_factor + shift_factor


# ---------------------------------------------------------------------------------------------- one step

@dataclass
class FlowMatchingBatch:
    sigmas: torch.Tensor       # (B,) the noise levels; also the transformer's timestep input
    noise: torch.Tensor
    noisy: torch.Tensor        # (B, C, H, W)
    packed: torch.Tensor       # (B, H/2 * W/2, 4C): the transformer's hidden_states
    img_ids: torch.Tensor      # (H/2 * W/2, 3)
    target: torch.Tensor       # (B, C, H, W) float32: noise - latents
    guidance: Optional[torch.Tensor]


def prepare_batch(cfg: FlowMatchingConfig, latents: torch.Tensor, guidance_embeds: bool,
                  generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                  sigmas: Optional[torch.Tensor] = None) -> FlowMatchingBatch:
    """Everything one training step feeds the transformer and compares its output with."""
    b, _, h, w = latents.shape
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    if sigmas is None:
        sigmas = sample_sigmas(cfg, b, (h, w), generator)
    noisy = noisy_latents(latents, noise, sigmas)
    return FlowMatchingBatch(
        sigmas=sigmas.to(latents.device), noise=noise, noisy=noisy, packed=pack_latents(noisy),
        img_ids=image_ids(h, w, device=latents.device), target=velocity_target(latents, noise),
        guidance=guidance_input(cfg, b, guidance_embeds, latents.device),
    )


def batch_loss(cfg: FlowMatchingConfig, batch: FlowMatchingBatch, packed_prediction: torch.Tensor) -> torch.Tensor:
    """Per-sample loss (B,) of the transformer's packed output for ``batch``."""
    h, w = batch.noisy.shape[-2:]
    prediction = unpack_latents(packed_prediction, h, w)
    prediction, weighting = apply_model_prediction_type(cfg, prediction.float(), batch.noisy.float(), batch.sigmas)
    return flow_matching_loss(prediction, batch.target, weighting)
