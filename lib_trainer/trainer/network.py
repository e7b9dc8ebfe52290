"""The trained network (LoRA, LoCon, LoHa, LoKr, DoRA) through lycoris-lora, and its file format.

Module names follow sd-scripts: for SD1/SD2 the UNet keys carry diffusers module paths
(``lora_unet_down_blocks_0_attentions_0_...``); for SDXL sd-scripts uses the original (LDM) paths
(``lora_unet_input_blocks_4_1_...``), so SDXL names are translated when saving and back when loading.
Text encoders are ``lora_te_`` (one encoder) or ``lora_te1_`` / ``lora_te2_`` (SDXL).
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from lib_trainer.common.i18n import tr

from .schema import TrainConfig

UNET_PREFIX = "lora_unet"
PRESET_NAME = "train_tools"
# What sd-scripts' LoRA targets: attention/feed-forward/projection layers of the UNet's transformer blocks and
# the text encoders' attention and MLP layers. LoCon adds the ResNet and up/down-sampling convolutions.
UNET_TRANSFORMER_MODULES = ["Transformer2DModel"]
UNET_CONV_MODULES = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
TEXT_ENCODER_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]

_RESNET_LDM = {
    "conv1": "in_layers.2", "conv2": "out_layers.3", "norm1": "in_layers.0", "norm2": "out_layers.0",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_TOP_LDM = {
    "conv_in": "input_blocks.0.0", "conv_out": "out.2", "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}


class NetworkError(RuntimeError):
    pass


def diffusers_unet_path_to_ldm(path: str, layers_per_block: int, up_block_has_attention: list[bool]) -> Optional[str]:
    """Translate a diffusers UNet module path to the original LDM path (as SDXL LoRA files name modules)."""
    n = layers_per_block
    for top, ldm in _TOP_LDM.items():
        if path == top or path.startswith(top + "."):
            return ldm + path[len(top):]

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        mapped = _RESNET_LDM.get(head, head)
        return mapped + ("." + tail if tail else "")

    m = re.match(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + i * (n + 1) + j
        return f"input_blocks.{idx}.1.{rest}" if kind == "attentions" else f"input_blocks.{idx}.0.{resnet(rest)}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", path)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op{m[2]}"
    m = re.match(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)$", path)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * j}.{resnet(rest)}"
    m = re.match(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (n + 1) + j
        return f"output_blocks.{idx}.1.{rest}" if kind == "attentions" else f"output_blocks.{idx}.0.{resnet(rest)}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$", path)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * (n + 1) + n}.{2 if up_block_has_attention[i] else 1}.conv{m[2]}"
    return None


def unet_name_map(unet, arch: str) -> dict[str, str]:
    """Our (diffusers-path) LoRA module names → the names written to the file."""
    out: dict[str, str] = {}
    has_attn = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    for path, _ in unet.named_modules():
        if not path:
            continue
        ours = f"{UNET_PREFIX}_{path.replace('.', '_')}"
        if arch == "sdxl":
            ldm = diffusers_unet_path_to_ldm(path, unet.config.layers_per_block, has_attn)
            if ldm is None:
                continue
            out[ours] = f"{UNET_PREFIX}_{ldm.replace('.', '_')}"
        else:
            out[ours] = ours
    return out


def _preset(cfg: TrainConfig) -> dict:
    conv = cfg.effective_conv_dim is not None
    return {
        "enable_conv": bool(conv),
        "unet_target_module": UNET_TRANSFORMER_MODULES + (UNET_CONV_MODULES if conv else []),
        "unet_target_name": [],
        "text_encoder_target_module": TEXT_ENCODER_MODULES,
        "text_encoder_target_name": [],
        "module_algo_map": {},
        "name_algo_map": {},
        "use_fnmatch": False,
    }


def network_args_used(cfg: TrainConfig) -> dict[str, str]:
    """``ss_network_args``: the network_args (validate refuses those not read) with conv_dim / conv_alpha / algo
    as applied."""
    used = dict(cfg.network_kwargs)
    if cfg.effective_conv_dim:
        used["conv_dim"] = str(cfg.effective_conv_dim)
        if cfg.effective_conv_alpha:
            used["conv_alpha"] = str(cfg.effective_conv_alpha)
    if cfg.network_module == "lycoris.kohya":
        used["algo"] = cfg.algo
    if cfg.use_dora:
        used["dora_wd"] = "True"
        used["wd_on_output"] = str(cfg.dora_on_output)
    return used


# ---- DoRA's magnitude, as the hosts read it ------------------------------------------------------------------
# DoRA scales each column of the merged weight W' = W + ΔW to a trained magnitude m. lycoris-lora can keep m per
# output row (wd_on_output=True, its default: dora_scale (out, 1, …)) or per input column (dora_scale (1, in, …)).
# A1111 1.10.1 (extensions-builtin/Lora/network.py, NetworkModule.apply_weight_decompose) always normalises along
# the input axis: W' · dora_scale / ‖W'‖ with the norm taken per input column, so an output-axis file changes the
# weights there even untrained. Forge normalises along the input axis too (backend/patcher/lora.py
# weight_decompose; since May 2025 it also tells an output-axis file by its shape, but then divides by the norm of
# W, not W'). So Train Tools trains and writes the input-axis layout, which both apply as trained; the tests
# re-implement both formulas (tests/test_trainer_dora.py).

def dora_on_input_axis(dora_scale: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a file's dora_scale holds one magnitude per input column of ``weight`` (shape (1, in, 1, …))."""
    return (dora_scale.dim() == weight.dim() and dora_scale.shape[0] == 1 and dora_scale.shape[1] == weight.shape[1]
            and weight.shape[0] != 1)


def module_from_file(kind, params: tuple, lora_name: str, layer):
    """lycoris' ``make_module`` for one layer of a file, with a DoRA magnitude in either layout (lycoris' loaders
    build only the output-axis one, its default)."""
    from lycoris.modules import make_module

    dora_scale = params[-1] if params else None
    if not isinstance(dora_scale, torch.Tensor) or not dora_on_input_axis(dora_scale, layer.weight):
        return make_module(kind, params, lora_name, layer)
    # built with a placeholder magnitude (a scalar copies into any shape), then switched to the input axis
    module = make_module(kind, (*params[:-1], torch.ones(())), lora_name, layer)
    if module is not None:
        module.wd_on_out = False
        module.dora_scale = torch.nn.Parameter(dora_scale.detach().float().clone(), requires_grad=False)
    return module


def create_network(cfg: TrainConfig, text_encoders: list, unet, train_unet: bool, train_text_encoder: bool):
    import logging

    from lycoris import kohya as lycoris_kohya

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    kwargs = dict(cfg.network_kwargs)
    kwargs.pop("conv_dim", None)
    kwargs.pop("conv_alpha", None)
    kwargs["algo"] = cfg.algo
    # lycoris reads every value but "false" as true; these two are passed as this config reads them
    kwargs["dora_wd"] = str(cfg.use_dora)
    kwargs["wd_on_output"] = str(cfg.dora_on_output)
    conv_dim = cfg.effective_conv_dim
    kwargs["conv_dim"] = conv_dim or 0
    kwargs["conv_alpha"] = cfg.effective_conv_alpha if cfg.effective_conv_alpha is not None else (conv_dim or 1)
    if cfg.algo in ("lora", "locon") and not cfg.use_dora:
        # Computes x -> down -> up instead of rebuilding the full weight each forward: same maths, far faster.
        kwargs.setdefault("bypass_mode", True)
    # create_network applies a preset by name; ours is registered under a name of its own
    from lycoris.config import PRESET

    PRESET[PRESET_NAME] = _preset(cfg)
    kwargs["preset"] = PRESET_NAME
    te_arg = text_encoders if len(text_encoders) > 1 else text_encoders[0]
    network = lycoris_kohya.create_network(1.0, cfg.network_dim, cfg.network_alpha, None, te_arg, unet, **kwargs)
    network.apply_to(te_arg, unet, apply_text_encoder=train_text_encoder, apply_unet=train_unet)
    if not network.loras:
        raise NetworkError(tr("the network found no layer to train; check network_module and network_args"))
    return network


def network_state_for_file(network, name_map: dict[str, str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in network.state_dict().items():
        module, _, param = key.partition(".")
        module = name_map.get(module, module)
        out[f"{module}.{param}"] = value.detach().to("cpu", dtype=dtype).contiguous()
    return out


PART_PREFIXES = (("text_encoder_1", "lora_te1_"), ("text_encoder_2", "lora_te2_"), ("text_encoder", "lora_te_"),
                 ("unet", f"{UNET_PREFIX}_"))


def part_of(module_name: str) -> str:
    """unet, text_encoder (SD1/SD2), text_encoder_1 / text_encoder_2 (SDXL) for a LoRA module name."""
    return next((part for part, prefix in PART_PREFIXES if module_name.startswith(prefix)), "other")


def describe_network(network) -> dict:
    """What is trained, as sd-scripts reports it: the LoRA modules of each part and their trainable parameters.

    ``{"trained": {"unet": {"modules": 192, "parameters": 1594368}, "text_encoder": {...}},
    "trainable_parameters": total}``; a part that is not trained is absent."""
    parts: dict[str, dict[str, int]] = {}
    for module in network.loras:
        part = parts.setdefault(part_of(module.lora_name), {"modules": 0, "parameters": 0})
        part["modules"] += 1
        part["parameters"] += sum(p.numel() for p in module.parameters() if p.requires_grad)
    order = [name for name, _ in PART_PREFIXES]
    trained = dict(sorted(parts.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    return {"trained": trained, "trainable_parameters": sum(p["parameters"] for p in parts.values())}


def _names(keys: list[str], limit: int = 3) -> str:
    modules = sorted({k.partition(".")[0] for k in keys})
    shown = ", ".join(modules[:limit])
    return shown + (f" and {len(modules) - limit} more" if len(modules) > limit else "")


def _by_part(keys: list[str]) -> str:
    counts: dict[str, int] = {}
    for key in keys:
        counts[part_of(key)] = counts.get(part_of(key), 0) + 1
    return ", ".join(f"{n} {part.replace('_', ' ')}" for part, n in sorted(counts.items()))


def load_network_weights(network, state: dict[str, torch.Tensor], name_map: dict[str, str],
                         partial: bool = False) -> dict:
    """Continue from a LoRA file: its keys are translated to ours and must fit the configured network.

    Every key of the file must be one of the network's and every key of the network must be in the file, with
    the same shape; a file that fits only partly (another network type, a UNet-only file for a network that
    trains the text encoder too, other modules) is an error that names what did not match, unless ``partial``
    (``network_weights_partial = true``) asks to load what fits and start the rest afresh. Returns how many keys
    matched: ``{"file_keys", "matched", "file_keys_unused", "network_keys_not_in_file", "partial"}``."""
    inverse = {v: k for k, v in name_map.items()}
    own = network.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.partition(".")
        renamed[f"{inverse.get(module, module)}.{param}"] = value
    unknown = [k for k in renamed if k not in own]
    if len(unknown) == len(renamed):
        raise NetworkError(tr(
            "the network_weights file does not fit this model and network (no key matches); was it trained on another "
            "architecture or with another network type?"))
    for key, value in renamed.items():
        if key in own and own[key].shape != value.shape and key.endswith(".dora_scale"):
            raise NetworkError(tr(
                "the network_weights file keeps DoRA's magnitude on the other axis ({file_shape} for {key}, this "
                "network {own_shape}): a file with one per output row, shape (out, 1), continues with "
                "wd_on_output=True in network_args (A1111 and Forge apply such files wrongly); one per input "
                "column, shape (1, in), without it",
                file_shape=tuple(value.shape), key=key, own_shape=tuple(own[key].shape)))
        if key in own and own[key].shape != value.shape:
            raise NetworkError(tr(
                "the network_weights file has {file_shape} for {key} but this config makes {own_shape}: set "
                "network_dim / conv_dim to the file's values", file_shape=tuple(value.shape), key=key,
                own_shape=tuple(own[key].shape)))
    absent = [k for k in own if k not in renamed]
    if (unknown or absent) and not partial:
        problems = []
        if unknown:
            problems.append(tr("{count} of its {total} keys are not in this network ({parts}: {names})",
                               count=len(unknown), total=len(renamed), parts=_by_part(unknown), names=_names(unknown)))
        if absent:
            problems.append(tr("it has no weights for {count} of the network's {total} keys ({parts}: {names})",
                               count=len(absent), total=len(own), parts=_by_part(absent), names=_names(absent)))
        raise NetworkError(tr(
            "the network_weights file fits this network only partly: {problems}. Make the config match the file "
            "(network_module, network_args, conv_dim, network_train_unet_only / network_train_text_encoder_only), or "
            "set network_weights_partial = true to load the keys that match and train the rest from the start",
            problems="; ".join(problems)))
    network.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=False)
    return {"file_keys": len(renamed), "matched": len(renamed) - len(unknown), "file_keys_unused": len(unknown),
            "network_keys_not_in_file": len(absent), "partial": bool(unknown or absent)}
