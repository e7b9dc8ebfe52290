"""What the network trains (modules and parameters of each part, as sd-scripts counts them) and how a
network_weights file must fit: every key matched, or an error naming what did not, unless partial loading is
asked for (network_weights_partial)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.models import load_single_file

    folder = tmp_path_factory.mktemp("nw")
    return {arch: load_single_file(write_tiny_checkpoint(arch, folder / f"{arch}.safetensors")) for arch in ("sd1", "sdxl")}


def make_network(model, train_te: bool = True, conv_dim=None, seed: int = 0):
    from lib_trainer.trainer.network import create_network
    from lib_trainer.trainer.schema import TrainConfig

    torch.manual_seed(seed)
    cfg = TrainConfig(network_dim=4, network_alpha=1, conv_dim=conv_dim)
    return create_network(cfg, model.text_encoders, model.unet, train_unet=True, train_text_encoder=train_te)


def expected_modules(model) -> dict[str, int]:
    """Closed form of sd-scripts' LoRA targets: per transformer block attn1 and attn2 (q, k, v, out) and the
    feed-forward (2), plus proj_in and proj_out of each Transformer2DModel; per CLIP layer q, k, v, out, fc1, fc2
    (full-size SD1.5: 16 x 2 + 16 x 10 = 192 UNet modules and 12 x 6 = 72 text-encoder modules, what sd-scripts
    prints)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    modules = list(model.unet.modules())
    unet = 2 * sum(isinstance(m, Transformer2DModel) for m in modules) + 10 * sum(isinstance(m, BasicTransformerBlock) for m in modules)
    tes = [6 * te.config.num_hidden_layers for te in model.text_encoders]
    names = ["text_encoder"] if len(tes) == 1 else ["text_encoder_1", "text_encoder_2"]
    return {"unet": unet, **dict(zip(names, tes))}


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_the_network_says_what_it_trains(models, arch):
    from lib_trainer.trainer.network import describe_network

    network = make_network(models[arch])
    info = describe_network(network)
    assert {part: v["modules"] for part, v in info["trained"].items()} == expected_modules(models[arch])
    # LoRA rank r on a layer of in x out features: r * (in + out) parameters (down and up; alpha is a buffer)
    rank_params = 0
    for lora in network.loras:
        layer = lora.org_module[0]
        rank_params += 4 * (layer.in_features + layer.out_features) if isinstance(layer, torch.nn.Linear) else \
            4 * (layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels)
    assert info["trainable_parameters"] == rank_params == sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert info["trainable_parameters"] == sum(v["parameters"] for v in info["trained"].values())

    unet_only = describe_network(make_network(models[arch], train_te=False))
    assert list(unet_only["trained"]) == ["unet"] and unet_only["trained"]["unet"] == info["trained"]["unet"]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_file_that_fits_loads_with_every_key_matched(models, arch):
    from lib_trainer.trainer.network import load_network_weights, network_state_for_file, unet_name_map

    model = models[arch]
    name_map = unet_name_map(model.unet, arch)
    source = make_network(model, seed=1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    state = network_state_for_file(source, name_map, torch.float32)
    target = make_network(model, seed=2)
    report = load_network_weights(target, state, name_map)
    assert report == {"file_keys": len(state), "matched": len(state), "file_keys_unused": 0,
                      "network_keys_not_in_file": 0, "partial": False}
    assert network_state_for_file(target, name_map, torch.float32).keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in network_state_for_file(target, name_map, torch.float32).items())


def test_a_unet_only_file_for_a_network_with_text_encoder_is_refused_unless_partial(models):
    from lib_trainer.trainer.network import NetworkError, load_network_weights, network_state_for_file, unet_name_map

    model = models["sd1"]
    name_map = unet_name_map(model.unet, "sd1")
    state = network_state_for_file(make_network(model, train_te=False, seed=1), name_map, torch.float32)
    te_keys = len([k for k in make_network(model).state_dict() if k.startswith("lora_te_")])
    with pytest.raises(NetworkError) as error:
        load_network_weights(make_network(model), state, name_map)
    message = str(error.value)
    assert f"no weights for {te_keys} of the network's" in message and f"{te_keys} text encoder" in message
    assert "network_weights_partial = true" in message and "network_train_unet_only" in message

    target = make_network(model, seed=2)
    report = load_network_weights(target, state, name_map, partial=True)
    assert report == {"file_keys": len(state), "matched": len(state), "file_keys_unused": 0,
                      "network_keys_not_in_file": te_keys, "partial": True}
    loaded = network_state_for_file(target, name_map, torch.float32)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_file_with_modules_this_network_lacks_names_them(models):
    """A LoCon file (conv layers too) for a plain LoRA network: the conv modules are named."""
    from lib_trainer.trainer.network import NetworkError, load_network_weights, network_state_for_file, unet_name_map

    model = models["sd1"]
    name_map = unet_name_map(model.unet, "sd1")
    locon = network_state_for_file(make_network(model, conv_dim=2, seed=1), name_map, torch.float32)
    plain = make_network(model)
    extra = len(locon) - len(plain.state_dict())
    assert extra > 0
    with pytest.raises(NetworkError, match=rf"{extra} of its {len(locon)} keys are not in this network \({extra} unet: lora_unet_"):
        load_network_weights(plain, locon, name_map)
    report = load_network_weights(plain, locon, name_map, partial=True)
    assert report["file_keys_unused"] == extra and report["matched"] == len(plain.state_dict())
