"""DoRA files are applied by A1111 1.10 and Forge as they were trained.

DoRA rescales the merged weight W' = W + ΔW to a trained magnitude m, one per input column or one per output row.
The hosts' formulas, re-implemented here from their code:

- A1111 1.10.1 (tag v1.10.1 of the WebUI; extensions-builtin/Lora/network.py, ``NetworkModule.finalize_updown``
  lines 196-216 and ``apply_weight_decompose`` lines 175-194): ΔW = up·down · alpha/dim, then
  W'·dora_scale/‖W'‖ with the norm taken per *input column* (transpose(0, 1), norm over the rest), whatever the
  shape of dora_scale; the weight becomes W + (that − W)·multiplier.
- Forge (lllyasviel/stable-diffusion-webui-forge at dfdcbab6, backend/patcher/lora.py, ``weight_decompose`` lines
  52-81 and the "lora" branch of ``merge_lora_to_weight`` lines 145-181): ΔW = alpha/rank · up·down; a dora_scale
  whose first dimension is the output count is read per output row *but divided by the norm of W, not of W'*; any
  other per input column of W'; the weight becomes W + strength·(that − W). Before commit 0ced1d0c ("Support
  wd_on_output for DoRA", #2856) it read every dora_scale per input column of W'.

So only the input-axis layout, dora_scale of shape (1, in, 1, …), is applied as trained by both: Train Tools
trains DoRA with lycoris' wd_on_output=False (lycoris' own default, True, gives (out, 1, …), which A1111 applies
wrongly even untrained). "Our own merged weight" is lycoris' get_merged_weight of the module the file builds
(lib_trainer.trainer.network.module_from_file, as the standalone host applies it).
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.trainer_fixtures import (
    fast_trainer,  # noqa: F401  (fixture)
    load_lora,
    make_config,
    tiny_sd1,  # noqa: F401  (fixture)
    train,
)

pytestmark = pytest.mark.usefixtures("fast_trainer")

DORA = dict(network_module="lycoris.kohya", network_args=["algo=lora", "dora_wd=True"], save_precision="float")


def a1111_applied(weight, up, down, alpha, dora_scale, multiplier=1.0):
    """A1111 1.10.1's weight for a LoRA module with dora_scale (network.py, see the module docstring)."""
    dim = down.shape[0]
    updown = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / dim)  # calc_updown, calc_scale
    merged = updown + weight
    norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
            .reshape(merged.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1))
    final_updown = merged * (dora_scale / norm) - weight
    return weight + final_updown * multiplier


def forge_applied(weight, up, down, alpha, dora_scale, strength=1.0):
    """Forge's weight for a LoRA patch with dora_scale (backend/patcher/lora.py, see the module docstring)."""
    lora_diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / down.shape[0])
    weight_calc = weight + lora_diff
    if dora_scale.shape[0] == weight_calc.shape[0]:  # "wd_on_output_axis"
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1))
    weight_calc = weight_calc * (dora_scale / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (weight_calc - weight)


def layers_of(model) -> dict:
    """LoRA module name → the model's layer (SD1 names: lora_unet_/lora_te_ + the diffusers path)."""
    out = {}
    for prefix, root in (("lora_unet", model.unet), ("lora_te", model.text_encoders[0])):
        for name, layer in root.named_modules():
            out[f"{prefix}_{name}".replace(".", "_")] = layer
    return out


def modules_of(tensors: dict) -> dict[str, dict]:
    grouped: dict[str, dict] = {}
    for key, value in tensors.items():
        module, _, param = key.partition(".")
        grouped.setdefault(module, {})[param] = value.float()
    return grouped


def our_merged_weight(name: str, params: dict, layer) -> torch.Tensor:
    from lycoris.modules import get_module

    from lib_trainer.trainer.network import module_from_file

    kind, extracted = get_module({f"{name}.{k}": v for k, v in params.items()}, name)
    module = module_from_file(kind, extracted, name, layer)
    return module.get_merged_weight(multiplier=1)[0]


@pytest.fixture(scope="module")
def tiny_model(tiny_sd1):
    from lib_trainer.trainer.models import load_model

    return load_model(str(tiny_sd1))


def test_a_trained_dora_is_applied_by_both_hosts_as_trained(tiny_sd1, tiny_model, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, max_train_steps=3, learning_rate=2e-2, **DORA)).assert_ok()
    tensors, _ = load_lora(result.final)
    layers = layers_of(tiny_model)
    checked = {2: 0, 4: 0}
    for name, params in modules_of(tensors).items():
        layer = layers[name]
        weight = layer.weight.detach().float()
        up, down, alpha, scale = params["lora_up.weight"], params["lora_down.weight"], params["alpha"], params["dora_scale"]
        assert scale.shape == (1, weight.shape[1], *[1] * (weight.dim() - 2)), (name, scale.shape)  # input axis
        ours = our_merged_weight(name, params, layer)
        trained = (ours - weight).abs().max()
        assert trained > 1e-4, f"{name} did not train"  # a real difference to reproduce
        for host in (a1111_applied, forge_applied):
            applied = host(weight, up, down, float(alpha), scale)
            assert torch.allclose(applied, ours, rtol=1e-5, atol=1e-6 * weight.abs().max()), (host.__name__, name)
        checked[weight.dim()] += 1
    assert checked[2] > 0 and checked[4] > 0, checked  # linear layers and 1×1 convs (SD1's proj_in / proj_out)


def test_an_untrained_dora_leaves_the_weights_unchanged_in_both_hosts(tiny_model):
    from lib_trainer.trainer.network import create_network, network_state_for_file, unet_name_map
    from lib_trainer.trainer.schema import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(pretrained_model_name_or_path="x", network_dim=2, **DORA)
    network = create_network(cfg, tiny_model.text_encoders, tiny_model.unet, True, True)
    tensors = network_state_for_file(network, unet_name_map(tiny_model.unet, tiny_model.arch), torch.float32)
    layers = layers_of(tiny_model)
    modules = modules_of(tensors)
    assert modules
    for name, params in modules.items():
        weight = layers[name].weight.detach().float()
        args = (weight, params["lora_up.weight"], params["lora_down.weight"], float(params["alpha"]), params["dora_scale"])
        for host in (a1111_applied, forge_applied):
            assert torch.allclose(host(*args), weight, rtol=1e-5, atol=1e-6 * weight.abs().max()), (host.__name__, name)


def test_lycoris_default_output_axis_is_what_a1111_gets_wrong(tiny_model):
    """Why the layout matters: an untrained output-axis DoRA (lycoris' default) changes the weights in A1111."""
    name, layer = next((n, m) for n, m in layers_of(tiny_model).items()
                       if n.endswith("attn1_to_q") and n.startswith("lora_unet"))
    weight = layer.weight.detach().float()
    rows = weight.norm(dim=1, keepdim=True)  # lycoris' wd_on_output=True init: (out, 1)
    up, down = torch.zeros(weight.shape[0], 2), torch.randn(2, weight.shape[1])
    assert (a1111_applied(weight, up, down, 1.0, rows) - weight).abs().max() > 1e-2 * weight.abs().max()
    assert torch.allclose(forge_applied(weight, up, down, 1.0, rows), weight, atol=1e-6)  # Forge reads its shape


def test_an_output_axis_file_is_warned_about_and_continues_only_in_its_layout(tiny_sd1, tmp_path):
    output_axis = dict(DORA, network_args=["algo=lora", "dora_wd=True", "wd_on_output=True"])
    first = train(make_config(tmp_path, tiny_sd1, **output_axis)).assert_ok()
    assert any(w.startswith("wd_on_output=True keeps DoRA's magnitude per output row") for w in first.warnings)
    tensors, metadata = load_lora(first.final)
    assert json.loads(metadata["ss_network_args"])["wd_on_output"] == "True"
    assert all(v.shape[1] == 1 for k, v in tensors.items() if k.endswith(".dora_scale"))  # (out, 1, …)
    # continued without wd_on_output: refused, saying which setting fits the file
    refused = train(make_config(tmp_path, tiny_sd1, network_weights=str(first.final),
                                output_dir=str(tmp_path / "out2"), **DORA))
    assert refused.code == 1 and "wd_on_output=True" in refused.error and "dora_scale" in refused.error, refused.error
    train(make_config(tmp_path, tiny_sd1, network_weights=str(first.final), output_dir=str(tmp_path / "out3"),
                      **output_axis)).assert_ok()
