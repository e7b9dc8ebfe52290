"""What several training processes (``accelerate launch`` / ``torchrun``) agree on: who trains which batch, the
gradients averaged every step, the logged loss and a stop request. With one process every function is a no-op
or the plain value."""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


def step_groups(batches: Sequence[T], n_proc: int, rank: int, accumulation: int) -> list[list[tuple[int, T]]]:
    """This process's batches of an epoch, grouped into optimizer steps of ``accumulation`` batches.

    Every batch keeps its index in the whole epoch, which seeds its noise, so a multi-GPU run draws the same noise
    for a batch whichever process trains it. Every process needs the same number of steps: with several, a
    remainder batch is left out."""
    indexed = list(enumerate(batches))
    if n_proc > 1:
        indexed = indexed[: len(indexed) - len(indexed) % n_proc][rank::n_proc]
    return [indexed[i : i + accumulation] for i in range(0, len(indexed), accumulation)]


def average_gradients(params: list, n_proc: int) -> None:
    """With several processes, replace every gradient by its mean over them (one all-reduce per dtype).

    The network is not wrapped in DistributedDataParallel: its layers run inside the UNet's and the text encoders'
    forward, never through the network's own, so DDP's gradient hooks would never be armed and every GPU would
    train alone."""
    if n_proc < 2:
        return
    groups: dict = {}
    for p in params:
        if p.grad is None:  # every process must send the same tensors
            p.grad = torch.zeros_like(p)
        groups.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= n_proc
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def loss_and_stop(loss: torch.Tensor, stop_requested: bool, n_proc: int) -> tuple[float, bool]:
    """The mean loss over the processes, and whether any of them was asked to stop (one all-reduce)."""
    if n_proc < 2:
        return loss.item(), stop_requested
    values = torch.stack([loss.detach().float().reshape(()),
                          torch.tensor(1.0 if stop_requested else 0.0, device=loss.device)])
    torch.distributed.all_reduce(values)
    mean, stops = values.tolist()
    return mean / n_proc, stops > 0
