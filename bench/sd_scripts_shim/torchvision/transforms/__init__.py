"""The image transforms sd-scripts' training data path uses, with torchvision's semantics."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from . import functional  # noqa: F401


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class ToTensor:
    """HWC uint8 (PIL picture or ndarray) -> CHW float in [0, 1]; float arrays are only transposed."""

    def __call__(self, picture) -> torch.Tensor:
        array = np.asarray(picture)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.float().div_(255)
        return tensor.float()


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean.to(tensor.dtype)) / self.std.to(tensor.dtype)


def __getattr__(name: str):
    raise NotImplementedError(f"torchvision.transforms.{name} is not in the benchmark's stand-in torchvision")
