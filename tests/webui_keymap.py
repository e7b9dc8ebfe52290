"""Which model layer the AUTOMATIC1111 WebUI's built-in Lora extension puts each LoRA module on (test helper).

An independent re-implementation of the key-mapping rules of stable-diffusion-webui v1.10.1 (the same in 1.10.0):

- extensions-builtin/Lora/networks.py
  - `assign_network_names_to_compvis_modules`: the layer names (`network_layer_mapping`) are the `named_modules()`
    paths, '.' replaced by '_', of `sd_model.model` (so the UNet is `diffusion_model_...`) and of the text encoder:
    `cond_stage_model.wrapped` for SD1/SD2 (`transformer_text_model_...` / `model_transformer_resblocks_...`), and
    for SDXL every conditioner embedder that has `.wrapped`, prefixed by its index (`0_transformer_text_model_...`,
    `1_model_transformer_resblocks_...`). The VAE gets no names.
  - `convert_diffusers_name_to_compvis`: diffusers / kohya names (`lora_unet_down_blocks_...`,
    `lora_te_text_model_...`, `lora_te2_...`) rewritten to those layer names.
  - `load_network`: `is_sd2` is "a layer is named exactly `model_transformer_resblocks`"; a name that matches no
    layer is retried without a `_q_proj`/`_k_proj`/`_v_proj` suffix (`re_x_proj`, for nn.MultiheadAttention), then
    with `lora_unet` -> `diffusion_model` (SDXL LoRAs already use LDM block names), or `lora_te1_text_model` ->
    `0_transformer_text_model` then `transformer_text_model`, or `oft_unet` -> `diffusion_model`; anything still
    unmatched is silently skipped (logged at debug level only).
  - `network_apply_weights`: a LoRA on an nn.MultiheadAttention (open_clip text encoders) is applied only when
    the `_q_proj`, `_k_proj`, `_v_proj` *and* `_out_proj` modules are all present; MultiheadAttention never calls
    its `out_proj` Linear's forward, so an out_proj LoRA is applied only through that path too.
- modules/sd_hijack.py: the token embeddings are wrapped in `EmbeddingsWithFixes`, which adds a
  `..._token_embedding_wrapped` layer; SDXL's embedders 0 (CLIP ViT-L) and 1 (OpenCLIP bigG) are wrapped
  (`FrozenCLIPEmbedderForSDXLWithCustomWords`, `FrozenOpenCLIPEmbedder2WithCustomWords`), the size/crop embedders
  are not (they have no weights either).

Not modelled: the SD3 `diffusers_weight_map` path, layer types (a LoRA landing on a container module makes the
WebUI refuse the whole file), and modules without parameters (SiLU, Dropout, ...), which real LoRAs never target.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")

_RESNET_SUFFIXES = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def _open_clip_suffix(suffix: str) -> str:
    # The WebUI tests these in this order with substring checks, so `mlp_fc1` wins over `self_attn`.
    if "mlp_fc1" in suffix:
        return suffix.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in suffix:
        return suffix.replace("mlp_fc2", "mlp_c_proj")
    return suffix.replace("self_attn", "attn")


def _block(kind: str, suffix: str) -> str:
    return _RESNET_SUFFIXES.get(suffix, suffix) if kind == "resnets" else suffix


# (pattern, rewrite) in the WebUI's order; patterns are matched at the start of the name only (re.match).
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str], bool], str]]
_RULES: list[_Rule] = [
    (re.compile(r"lora_unet_conv_in(.*)"), lambda m, _: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (re.compile(r"lora_unet_conv_out(.*)"), lambda m, _: f"diffusion_model_out_2{m[1]}"),
    (re.compile(r"lora_unet_time_embedding_linear_(\d+)(.*)"),
     lambda m, _: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
    # Three input blocks per diffusers down block and per up block: right for SD1/SD2/SDXL's 2 resnets per level.
    (re.compile(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"),
     lambda m, _: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_"
                  f"{1 if m[2] == 'attentions' else 0}_{_block(m[2], m[4])}"),
    (re.compile(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"),
     lambda m, _: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
                  f"{_block(m[1], m[3])}"),
    (re.compile(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"),
     lambda m, _: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_"
                  f"{1 if m[2] == 'attentions' else 0}_{_block(m[2], m[4])}"),
    (re.compile(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"),
     lambda m, _: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
    # The upsampler is assumed to sit at index 1 in up block 0 (SD1/SD2: no attention there) and 2 elsewhere.
    (re.compile(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"),
     lambda m, _: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"),
    (re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"),
     lambda m, is_sd2: f"model_transformer_resblocks_{int(m[1])}_{_open_clip_suffix(m[2])}" if is_sd2
     else f"transformer_text_model_encoder_layers_{int(m[1])}_{m[2]}"),
    (re.compile(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)"),
     lambda m, _: f"1_model_transformer_resblocks_{int(m[1])}_{_open_clip_suffix(m[2])}"),
]


def webui_compvis_name(lora_module_name: str, is_sd2: bool) -> str:
    """`convert_diffusers_name_to_compvis`: the name rewritten by the first rule that matches, else unchanged."""
    for pattern, rewrite in _RULES:
        match = pattern.match(lora_module_name)
        if match:
            return rewrite(match, is_sd2)
    return lora_module_name


def _is_sd2(network_layer_names: set[str], arch: str) -> bool:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    is_sd2 = "model_transformer_resblocks" in network_layer_names
    if is_sd2 != arch.startswith("sd2"):
        raise ValueError(f"these layer names are {'' if is_sd2 else 'not '}from an SD2 model, but arch is {arch}")
    return is_sd2


def _match(name: str, layers: set[str], is_sd2: bool) -> tuple[str, str] | None:
    """(the key the WebUI files the module under, the layer it lands on), or None when it is skipped."""
    key = webui_compvis_name(name, is_sd2)
    if key in layers:
        return key, key
    x_proj = _X_PROJ.match(key)
    if x_proj and x_proj[1] in layers:
        return key, x_proj[1]  # filed under the ..._q_proj name, applied by the MultiheadAttention

    if "lora_unet" in name:
        key = name.replace("lora_unet", "diffusion_model")
        candidates = [key]
    elif "lora_te1_text_model" in name:
        key = name.replace("lora_te1_text_model", "transformer_text_model")
        candidates = [name.replace("lora_te1_text_model", "0_transformer_text_model"), key]
    elif "oft_unet" in name:
        key = name.replace("oft_unet", "diffusion_model")
        candidates = [key]
    else:
        candidates = []
    for candidate in candidates:
        if candidate in layers:
            return candidate, candidate

    # KohakuBlueLeaf's OFT: the WebUI's first replacement (lora_unet) is overwritten by the second one.
    if "oft_diag" in key:
        key = name.replace("lora_te1_text_model", "0_transformer_text_model")
        if key in layers:
            return key, key
    return None


def webui_target_module(lora_module_name: str, network_layer_names: set[str], arch: str) -> str | None:
    """The WebUI layer a LoRA module (`lora_unet_...`, the key up to its first '.') lands on; None if skipped.

    q/k/v projections of an open_clip text encoder land on the nn.MultiheadAttention layer itself
    (`model_transformer_resblocks_N_attn`); see `webui_unapplied_modules` for when they take effect.
    """
    found = _match(lora_module_name, network_layer_names, _is_sd2(network_layer_names, arch))
    return None if found is None else found[1]


def webui_dropped_keys(lora_keys: Iterable[str], network_layer_names: set[str], arch: str) -> list[str]:
    """The tensor keys of a LoRA file that `load_network` skips (`bundle_emb.*` embeddings are used, not skipped)."""
    is_sd2 = _is_sd2(network_layer_names, arch)
    dropped = []
    for key in lora_keys:
        module_name = key.partition(".")[0]
        if module_name != "bundle_emb" and _match(module_name, network_layer_names, is_sd2) is None:
            dropped.append(key)
    return dropped


_MHA_PARTS = ("_q_proj", "_k_proj", "_v_proj", "_out_proj")


def _multihead_attention_layers(layers: set[str]) -> set[str]:
    # Without module types: an open_clip `attn` owns `out_proj` but, unlike HF CLIP's `self_attn`, no `q_proj`.
    bases = {name[: -len("_out_proj")] for name in layers if name.endswith("_out_proj")}
    return {base for base in bases if base in layers and base + "_q_proj" not in layers}


def webui_unapplied_modules(
    lora_module_names: Iterable[str], network_layer_names: set[str], arch: str
) -> list[str]:
    """Modules that load but never change the model: parts of a MultiheadAttention LoRA missing q, k, v or out."""
    is_sd2 = _is_sd2(network_layer_names, arch)
    mha_layers = _multihead_attention_layers(network_layer_names)
    filed: dict[str, str] = {}
    for name in dict.fromkeys(lora_module_names):
        found = _match(name, network_layer_names, is_sd2)
        if found is not None:
            filed[name] = found[0]
    present = set(filed.values())
    unapplied = []
    for name, key in filed.items():
        for part in _MHA_PARTS:
            base = key[: -len(part)]
            if key.endswith(part) and base in mha_layers:
                if not all(base + p in present for p in _MHA_PARTS):
                    unapplied.append(name)
                break
    return unapplied


def _module_paths(param_key: str) -> list[str]:
    parts = param_key.split(".")[:-1]
    return ["_".join(parts[:n]) for n in range(1, len(parts) + 1)]


def webui_network_layer_names(ldm_state_dict: Mapping[str, Any] | Iterable[str], arch: str) -> set[str]:
    """The `network_layer_mapping` names the WebUI builds for a model loaded from this checkpoint.

    Module paths come from the checkpoint's parameter keys (every parent module included, as `named_modules()`
    yields containers too; the unnamed roots are left out).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    names: set[str] = set()
    for key in ldm_state_dict:
        if key.startswith("model.diffusion_model."):
            names.update(_module_paths(key[len("model."):]))
        elif arch != "sdxl" and key.startswith("cond_stage_model."):
            names.update(_module_paths(key[len("cond_stage_model."):]))
        elif arch == "sdxl" and key.startswith("conditioner.embedders."):
            index, _, rest = key[len("conditioner.embedders."):].partition(".")
            names.update(f"{index}_{path}" for path in _module_paths(rest))
    # sd_hijack wraps each token embedding in EmbeddingsWithFixes, whose `wrapped` is the original nn.Embedding.
    names.update({f"{name}_wrapped" for name in names if name.endswith("token_embedding")})
    if not any(name.startswith("diffusion_model_") for name in names):
        raise ValueError("no UNet (model.diffusion_model.*) keys: not an LDM single-file checkpoint")
    return names
