"""The optimizers' multi-tensor defaults (trainer/optim.py): foreach on the CPU, fused AdamW on CUDA, each
switchable through optimizer_args, and the same weights as torch's per-tensor loop."""
from __future__ import annotations

import torch

from lib_trainer.trainer.optim import create_optimizer, multi_tensor
from lib_trainer.trainer.schema import TrainConfig

CPU = torch.device("cpu")


def lora_like_params(seed: int) -> list[torch.nn.Parameter]:
    """Rank-4 down/up pairs of a few widths, with gradients, as a LoRA's many small tensors."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for width in (320, 640, 768, 1280) * 3:
        for shape in ((4, width), (width, 4)):
            param = torch.nn.Parameter(torch.randn(shape, generator=gen))
            param.grad = torch.randn(shape, generator=gen)
            params.append(param)
    return params


def trained(optimizer_type: str, optimizer_args: list[str], steps: int = 5) -> list[torch.Tensor]:
    params = lora_like_params(0)
    cfg = TrainConfig(optimizer_type=optimizer_type, optimizer_args=optimizer_args, learning_rate=1e-2)
    optimizer = create_optimizer(cfg, [{"params": params}], CPU)
    for _ in range(steps):
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_cpu_defaults_to_foreach_and_optimizer_args_choose():
    params = lora_like_params(0)
    adamw = create_optimizer(TrainConfig(optimizer_type="AdamW"), [{"params": params}], CPU)
    assert adamw.defaults["foreach"] is True and not adamw.defaults.get("fused")
    sgd = create_optimizer(TrainConfig(optimizer_type="SGD"), [{"params": params}], CPU)
    assert sgd.defaults["foreach"] is True

    loop = create_optimizer(TrainConfig(optimizer_type="AdamW", optimizer_args=["foreach=False"]),
                            [{"params": params}], CPU)
    assert loop.defaults["foreach"] is False
    # fused asked for on the CPU (torch >= 2.4 has a CPU kernel): foreach is not added beside it (torch refuses both)
    fused = create_optimizer(TrainConfig(optimizer_type="AdamW", optimizer_args=["fused=True"]),
                             [{"params": params}], CPU)
    assert fused.defaults["fused"] is True and not fused.defaults.get("foreach")


def test_cuda_defaults_to_fused_adamw():
    cuda = torch.device("cuda")  # only the choice is checked: nothing is allocated there
    assert multi_tensor({}, cuda, fused_on_cuda=True) == {"fused": True}
    assert multi_tensor({}, cuda, fused_on_cuda=False) == {}  # torch's CUDA default, foreach, stays
    assert multi_tensor({"fused": False}, cuda, fused_on_cuda=True) == {"fused": False}
    assert multi_tensor({"weight_decay": 0.1}, CPU, fused_on_cuda=True) == {"weight_decay": 0.1, "foreach": True}


def test_foreach_trains_the_same_weights_as_the_per_tensor_loop():
    for optimizer_type in ("AdamW", "SGD"):
        default = trained(optimizer_type, [])
        loop = trained(optimizer_type, ["foreach=False"])
        start = lora_like_params(0)
        assert all(torch.equal(a, b) for a, b in zip(default, loop)), optimizer_type
        assert all(not torch.equal(a, s) for a, s in zip(default, start)), optimizer_type  # the steps did move them
