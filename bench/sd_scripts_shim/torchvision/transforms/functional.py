"""torchvision.transforms.functional, as far as sd-scripts' training path uses it."""
from __future__ import annotations

import numpy as np
import torch


def pil_to_tensor(picture) -> torch.Tensor:
    array = np.asarray(picture)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def __getattr__(name: str):
    raise NotImplementedError(f"torchvision.transforms.functional.{name} is not in the benchmark's stand-in torchvision")
