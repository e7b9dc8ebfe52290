"""The pictures that score every checkpoint, and the score itself.

Held-out pictures measure how well a checkpoint generalises rather than how well it memorised; with few pictures
every one is needed for training, so a fixed subset of them is scored instead. The score is the denoising loss
on those pictures with fixed noise at fixed timesteps, so it is comparable across the checkpoints of a run (it is
written into every checkpoint event and feeds the recommended epoch).
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .data import derive_seed

EVAL_TIMESTEPS = (100, 300, 500, 700, 900)
EVAL_PICTURES = 4
AUTO_HOLDOUT_MIN_PICTURES = 20

# (latents, noise, timesteps, captions, size ids) -> (prediction, target)
Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list, list], tuple[torch.Tensor, torch.Tensor]]


def choose_holdout(train: Sequence, requested: int, seed: int) -> tuple[list, str]:
    """(the pictures that score each checkpoint, "held_out" or "train_subset").

    ``requested`` < 0 is automatic: one in ten from ``AUTO_HOLDOUT_MIN_PICTURES`` pictures on, at most
    ``EVAL_PICTURES``. Held-out pictures are to be taken out of training by the caller. The choice depends only on
    the seed and the file names, so a resumed run holds out the same pictures."""
    if requested < 0:
        count = min(EVAL_PICTURES, len(train) // 10) if len(train) >= AUTO_HOLDOUT_MIN_PICTURES else 0
    else:
        count = min(requested, len(train) - 1)
    if count <= 0:
        return list(train[:EVAL_PICTURES]), "train_subset"
    order = sorted(train, key=lambda e: (e.folder, e.path.name))
    random.Random(derive_seed(seed, "holdout")).shuffle(order)
    return order[:count], "held_out"


@torch.no_grad()
def fixed_noise_score(entries: Sequence, encode: Callable, denoise: Denoise, seed: int, device: torch.device) -> float:
    """Mean denoising loss over ``entries``; ``encode(entry)`` gives its scaled latent (1, C, H, W) and size ids."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "eval"))
    total = 0.0
    for entry in entries:
        latent, ids = encode(entry)
        t = torch.tensor(EVAL_TIMESTEPS, device=device)
        latents = latent.expand(len(t), -1, -1, -1)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        pred, target = denoise(latents, noise, t, [entry.caption] * len(t), [ids] * len(t))
        total += F.mse_loss(pred.float(), target.float()).item()
    return total / max(1, len(entries))
