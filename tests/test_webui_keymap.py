"""The WebUI v1.10.1 LoRA key rules (tests/webui_keymap.py) against the layer names of the tiny checkpoints."""
from __future__ import annotations

import functools

import pytest
import torch

from lib_trainer.demo.tiny_model import TINY_CONFIGS, build_tiny_state_dict
from webui_keymap import (
    webui_dropped_keys,
    webui_network_layer_names,
    webui_target_module,
    webui_unapplied_modules,
)


@functools.lru_cache(maxsize=None)
def _checkpoint(arch: str) -> dict[str, torch.Tensor]:
    return build_tiny_state_dict(arch)


@functools.lru_cache(maxsize=None)
def _layers(arch: str) -> frozenset[str]:
    return frozenset(webui_network_layer_names(_checkpoint(arch), arch))


def _target(arch: str, name: str) -> str | None:
    return webui_target_module(name, set(_layers(arch)), arch)


def test_layer_names_follow_the_webui_module_tree() -> None:
    sd1, sd2, sdxl = _layers("sd1"), _layers("sd2"), _layers("sdxl")
    assert {
        "diffusion_model_input_blocks_1_1_proj_in",
        "diffusion_model_middle_block_1_transformer_blocks_0_attn2_to_k",
        "transformer_text_model_encoder_layers_11_mlp_fc2",
        "transformer_text_model_embeddings_token_embedding_wrapped",  # sd_hijack's EmbeddingsWithFixes
        "transformer_text_model_final_layer_norm",
    } <= sd1
    assert {
        "model_transformer_resblocks",  # the WebUI's SD2 test
        "model_transformer_resblocks_3_attn",  # nn.MultiheadAttention: owns in_proj_weight
        "model_transformer_resblocks_3_attn_out_proj",
        "model_transformer_resblocks_0_mlp_c_fc",
        "model_token_embedding_wrapped",
        "model_ln_final",
    } <= sd2
    assert {
        "diffusion_model_label_emb_0_0",
        "0_transformer_text_model_encoder_layers_0_self_attn_q_proj",
        "1_model_transformer_resblocks_9_attn",
        "1_model_transformer_resblocks_9_mlp_c_proj",
        "1_model_token_embedding_wrapped",
    } <= sdxl
    assert "model_transformer_resblocks" not in sd1 | sdxl
    for names in (sd1, sd2, sdxl):
        assert not any(n.startswith(("first_stage_model", "encoder_", "decoder_", "model_diffusion")) for n in names)
        assert "" not in names


MAPPED = [
    # SD1, sd-scripts (diffusers block names)
    ("sd1", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
     "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"),
    ("sd1", "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_0_proj",
     "diffusion_model_input_blocks_8_1_transformer_blocks_0_ff_net_0_proj"),
    ("sd1", "lora_unet_mid_block_attentions_0_proj_in", "diffusion_model_middle_block_1_proj_in"),
    ("sd1", "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0",
     "diffusion_model_output_blocks_3_1_transformer_blocks_0_attn2_to_out_0"),
    ("sd1", "lora_unet_up_blocks_3_attentions_2_proj_out", "diffusion_model_output_blocks_11_1_proj_out"),
    ("sd1", "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
     "transformer_text_model_encoder_layers_0_self_attn_q_proj"),
    ("sd1", "lora_te_text_model_encoder_layers_11_mlp_fc2", "transformer_text_model_encoder_layers_11_mlp_fc2"),
    # "some SD1 Loras also have correct compvis keys": lora_te1_ falls back to the SD1 text encoder
    ("sd1", "lora_te1_text_model_encoder_layers_3_self_attn_v_proj",
     "transformer_text_model_encoder_layers_3_self_attn_v_proj"),
    # SD1 LoCon (conv layers of resnets, down/upsamplers)
    ("sd1", "lora_unet_down_blocks_0_resnets_1_conv1", "diffusion_model_input_blocks_2_0_in_layers_2"),
    ("sd1", "lora_unet_down_blocks_0_resnets_1_conv2", "diffusion_model_input_blocks_2_0_out_layers_3"),
    ("sd1", "lora_unet_down_blocks_0_resnets_0_time_emb_proj", "diffusion_model_input_blocks_1_0_emb_layers_1"),
    ("sd1", "lora_unet_down_blocks_2_resnets_0_conv_shortcut", "diffusion_model_input_blocks_7_0_skip_connection"),
    ("sd1", "lora_unet_down_blocks_3_resnets_1_conv1", "diffusion_model_input_blocks_11_0_in_layers_2"),
    ("sd1", "lora_unet_down_blocks_0_downsamplers_0_conv", "diffusion_model_input_blocks_3_0_op"),
    ("sd1", "lora_unet_down_blocks_2_downsamplers_0_conv", "diffusion_model_input_blocks_9_0_op"),
    ("sd1", "lora_unet_mid_block_resnets_1_conv2", "diffusion_model_middle_block_2_out_layers_3"),
    ("sd1", "lora_unet_up_blocks_0_resnets_2_conv_shortcut", "diffusion_model_output_blocks_2_0_skip_connection"),
    ("sd1", "lora_unet_up_blocks_0_upsamplers_0_conv", "diffusion_model_output_blocks_2_1_conv"),
    ("sd1", "lora_unet_up_blocks_2_upsamplers_0_conv", "diffusion_model_output_blocks_8_2_conv"),
    ("sd1", "lora_unet_conv_in", "diffusion_model_input_blocks_0_0"),
    ("sd1", "lora_unet_conv_out", "diffusion_model_out_2"),
    ("sd1", "lora_unet_time_embedding_linear_2", "diffusion_model_time_embed_2"),
    # SD2: linear proj_in; the open_clip text encoder under HF names
    ("sd2", "lora_unet_down_blocks_1_attentions_1_proj_in", "diffusion_model_input_blocks_5_1_proj_in"),
    ("sd2", "lora_te_text_model_encoder_layers_0_self_attn_q_proj", "model_transformer_resblocks_0_attn"),
    ("sd2", "lora_te_text_model_encoder_layers_0_self_attn_k_proj", "model_transformer_resblocks_0_attn"),
    ("sd2", "lora_te_text_model_encoder_layers_3_self_attn_v_proj", "model_transformer_resblocks_3_attn"),
    ("sd2", "lora_te_text_model_encoder_layers_3_self_attn_out_proj", "model_transformer_resblocks_3_attn_out_proj"),
    ("sd2", "lora_te_text_model_encoder_layers_1_mlp_fc1", "model_transformer_resblocks_1_mlp_c_fc"),
    ("sd2", "lora_te_text_model_encoder_layers_2_mlp_fc2", "model_transformer_resblocks_2_mlp_c_proj"),
    ("sd2-v", "lora_te_text_model_encoder_layers_2_mlp_fc2", "model_transformer_resblocks_2_mlp_c_proj"),
    # SDXL, sd-scripts (LDM block names in the UNet)
    ("sdxl", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("sdxl", "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k",
     "diffusion_model_input_blocks_7_1_transformer_blocks_1_attn2_to_k"),
    ("sdxl", "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2",
     "diffusion_model_middle_block_1_transformer_blocks_1_ff_net_2"),
    ("sdxl", "lora_unet_output_blocks_5_1_proj_out", "diffusion_model_output_blocks_5_1_proj_out"),
    ("sdxl", "lora_unet_input_blocks_1_0_in_layers_2", "diffusion_model_input_blocks_1_0_in_layers_2"),
    ("sdxl", "lora_unet_input_blocks_3_0_op", "diffusion_model_input_blocks_3_0_op"),
    ("sdxl", "lora_unet_output_blocks_2_2_conv", "diffusion_model_output_blocks_2_2_conv"),
    ("sdxl", "lora_unet_label_emb_0_0", "diffusion_model_label_emb_0_0"),
    ("sdxl", "lora_unet_time_embed_2", "diffusion_model_time_embed_2"),
    ("sdxl", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
     "0_transformer_text_model_encoder_layers_0_self_attn_q_proj"),
    ("sdxl", "lora_te1_text_model_encoder_layers_11_mlp_fc1", "0_transformer_text_model_encoder_layers_11_mlp_fc1"),
    ("sdxl", "lora_te1_text_model_final_layer_norm", "0_transformer_text_model_final_layer_norm"),
    ("sdxl", "lora_te2_text_model_encoder_layers_0_mlp_fc1", "1_model_transformer_resblocks_0_mlp_c_fc"),
    ("sdxl", "lora_te2_text_model_encoder_layers_9_self_attn_q_proj", "1_model_transformer_resblocks_9_attn"),
    ("sdxl", "lora_te2_text_model_encoder_layers_9_self_attn_out_proj",
     "1_model_transformer_resblocks_9_attn_out_proj"),
    # SDXL under diffusers block names also works (3 blocks per level, like SD1)
    ("sdxl", "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
     "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("sdxl", "lora_unet_up_blocks_1_upsamplers_0_conv", "diffusion_model_output_blocks_5_2_conv"),
]


@pytest.mark.parametrize(("arch", "name", "expected"), MAPPED)
def test_mapped(arch: str, name: str, expected: str) -> None:
    assert expected in _layers(arch)
    assert _target(arch, name) == expected


DROPPED = [
    ("sd1", "lora_unet_down_blocks_3_attentions_0_proj_in"),  # SD1's lowest level has no attention
    ("sd1", "lora_unet_mid_block_attentions_0_transformer_blocks_1_attn1_to_q"),  # depth 1
    ("sd1", "lora_unet_conv_norm_out"),  # no rule for it, and not an LDM name either
    ("sd1", "lora_te_text_model_final_layer_norm"),  # only encoder layers are rewritten for lora_te_
    ("sd1", "lora_te_text_model_embeddings_token_embedding"),
    ("sd1", "lora_te_text_model_encoder_layers_12_mlp_fc1"),  # 12 layers: 0..11
    ("sd1", "lora_te2_text_model_encoder_layers_0_mlp_fc1"),  # an SDXL LoRA on SD1
    ("sd1", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down"),  # not split at '.'
    ("sd1", "lora_unet_input_blocks_1_1_proj_in_extra"),
    ("sd2", "lora_te_text_model_encoder_layers_4_self_attn_q_proj"),  # 4 layers
    ("sd2", "lora_te_text_model_final_layer_norm"),
    ("sd2", "lora_te1_text_model_encoder_layers_0_mlp_fc1"),  # te1 fallbacks only know HF CLIP names
    ("sdxl", "lora_te_text_model_encoder_layers_0_mlp_fc1"),  # SD1 text-encoder names on SDXL
    ("sdxl", "lora_te2_text_model_final_layer_norm"),  # only te2 encoder layers are rewritten
    ("sdxl", "lora_unet_input_blocks_1_1_proj_in"),  # no attention at SDXL's first level
    ("sdxl", "lora_unet_add_embedding_linear_1"),  # diffusers' name for label_emb.0.0 has no rule
    # diffusers name: the rule puts up block 0's upsampler at index 1, but SDXL has attention there (2_2_conv)
    ("sdxl", "lora_unet_up_blocks_0_upsamplers_0_conv"),
]


@pytest.mark.parametrize(("arch", "name"), DROPPED)
def test_dropped(arch: str, name: str) -> None:
    assert _target(arch, name) is None


def test_every_diffusers_unet_module_lands_on_its_ldm_layer() -> None:
    """All UNet modules in diffusers names, through the WebUI rules, against diffusers' own LDM conversion."""
    pytest.importorskip("diffusers")
    from diffusers.loaders import single_file_utils as sfu
    from test_tiny_model import _unet_config

    mismatches = {}
    for arch in ("sd1", "sd2", "sdxl"):
        checkpoint = _checkpoint(arch)
        converted = sfu.convert_ldm_unet_checkpoint(checkpoint, _unet_config(arch, checkpoint))
        ldm_key_of = {id(tensor): key for key, tensor in checkpoint.items()}  # the converter moves tensors as-is
        misses = []
        for key, tensor in converted.items():
            if key.endswith(".weight"):
                module = key[: -len(".weight")]
                expected = ldm_key_of[id(tensor)][len("model."): -len(".weight")].replace(".", "_")
                if _target(arch, "lora_unet_" + module.replace(".", "_")) != expected:
                    misses.append(module)
        mismatches[arch] = sorted(misses)
    assert mismatches == {
        "sd1": ["conv_norm_out"],
        "sd2": ["conv_norm_out"],
        "sdxl": ["add_embedding.linear_1", "add_embedding.linear_2", "conv_norm_out", "up_blocks.0.upsamplers.0.conv"],
    }


@pytest.mark.parametrize(("arch", "prefix", "lora_prefix", "layer_prefix"), [
    ("sd1", "cond_stage_model.transformer.text_model.", "lora_te_text_model_", "transformer_text_model_"),
    ("sdxl", "conditioner.embedders.0.transformer.text_model.", "lora_te1_text_model_", "0_transformer_text_model_"),
])
def test_every_hf_clip_module_lands_on_its_layer(arch: str, prefix: str, lora_prefix: str, layer_prefix: str) -> None:
    modules = {k[len(prefix): -len(".weight")].replace(".", "_")
               for k in _checkpoint(arch) if k.startswith(prefix + "encoder.") and k.endswith(".weight")}
    assert len(modules) == 12 * 8  # q, k, v, out, fc1, fc2, layer_norm1, layer_norm2
    for module in modules:
        assert _target(arch, lora_prefix + module) == layer_prefix + module


@pytest.mark.parametrize(("arch", "lora_prefix", "layer_prefix", "layers"), [
    ("sd2", "lora_te_", "model_", TINY_CONFIGS["sd2"]["text_encoders"][0]["layers"]),
    ("sdxl", "lora_te2_", "1_model_", TINY_CONFIGS["sdxl"]["text_encoders"][1]["layers"]),
])
def test_open_clip_text_encoder_lora(arch: str, lora_prefix: str, layer_prefix: str, layers: int) -> None:
    layer_names = set(_layers(arch))
    names = [f"{lora_prefix}text_model_encoder_layers_{i}_{part}" for i in range(layers)
             for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                          "mlp_fc1", "mlp_fc2")]
    for i in range(layers):
        assert _target(arch, f"{lora_prefix}text_model_encoder_layers_{i}_self_attn_k_proj") == \
            f"{layer_prefix}transformer_resblocks_{i}_attn"
    assert webui_unapplied_modules(names, layer_names, arch) == []

    # Without out_proj in layer 0, the MultiheadAttention path skips q, k and v of that layer.
    partial = [n for n in names if n != f"{lora_prefix}text_model_encoder_layers_0_self_attn_out_proj"]
    assert webui_unapplied_modules(partial, layer_names, arch) == [
        f"{lora_prefix}text_model_encoder_layers_0_self_attn_{p}_proj" for p in "qkv"
    ]
    # An attention LoRA of only out_proj (or only q) never takes effect either.
    only_out = [f"{lora_prefix}text_model_encoder_layers_1_self_attn_out_proj"]
    assert webui_unapplied_modules(only_out, layer_names, arch) == only_out


def test_hf_clip_attention_parts_apply_one_by_one() -> None:
    names = ["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_unet_conv_in"]
    assert webui_unapplied_modules(names, set(_layers("sd1")), "sd1") == []


def test_dropped_keys_of_a_lora_file() -> None:
    keys = [
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
        "lora_unet_conv_norm_out.lora_down.weight",
        "lora_te_text_model_final_layer_norm.w_norm",
        "bundle_emb.trigger.string_to_param.*",
    ]
    assert webui_dropped_keys(keys, set(_layers("sd1")), "sd1") == [
        "lora_unet_conv_norm_out.lora_down.weight",
        "lora_te_text_model_final_layer_norm.w_norm",
    ]


def test_arch_must_match_the_layer_names() -> None:
    with pytest.raises(ValueError):
        webui_target_module("lora_unet_conv_in", set(_layers("sd1")), "sd2")
    with pytest.raises(ValueError):
        webui_target_module("lora_unet_conv_in", set(_layers("sd2")), "sdxl")
    with pytest.raises(ValueError):
        webui_network_layer_names(_checkpoint("sd1"), "sd3")
