"""A training state folder (``<output_name>-<suffix>-state/``): everything needed to continue a run exactly —
the network in fp32, the optimizer, the scheduler, the fp16 loss scaler and the position in the run.

```
network.safetensors   optimizer.pt   scheduler.pt   scaler.pt (fp16 only)   train_state.json
```
The folder is written under a temporary name and moved into place, so a crash never leaves half a state.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from lib_trainer.common.i18n import tr

from .errors import TrainingError

STATE_FILE = "train_state.json"


def save_training_state(folder: Path, network: torch.nn.Module, optimizer: Any, lr_scheduler: Any,
                        scaler: Optional[Any], position: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    net_state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(net_state, str(tmp / "network.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / STATE_FILE).write_text(json.dumps(position), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_training_state(folder: Path, network: torch.nn.Module, optimizer: Any, lr_scheduler: Any,
                        scaler: Optional[Any], steps_per_epoch: int) -> dict[str, Any]:
    """Restore a state folder into the given objects; returns the saved position (global_step, epoch,
    step_in_epoch, seed, …). The dataset and batch size must be what they were."""
    from safetensors.torch import load_file

    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise TrainingError(tr("resume: {folder} is not a state folder written with save_state (no {file})",
                               folder=folder, file=STATE_FILE))
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state["steps_per_epoch"] != steps_per_epoch:
        raise TrainingError(tr(
            "resume: the dataset or batch size changed since the state was saved ({then} steps per epoch then, {now} "
            "now)", then=state["steps_per_epoch"], now=steps_per_epoch))
    network.load_state_dict(load_file(str(folder / "network.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if scaler is not None and (folder / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    return state
