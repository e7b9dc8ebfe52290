"""FLUX.1 LoRA files in the kohya layout (sd-scripts' ``networks/lora_flux.py``), from and to the LoRA the trainer
trains on diffusers' modules, and their metadata.

The file names BFL's modules (what Forge and ComfyUI patch by name): ``lora_unet_double_blocks_N_{img,txt}_attn_qkv``,
``..._{img,txt}_attn_proj``, ``..._{img,txt}_mlp_{0,2}``, ``..._{img,txt}_mod_lin``, ``lora_unet_single_blocks_N_linear1``,
``..._linear2``, ``..._modulation_lin``, and CLIP-L's ``lora_te1_text_model_encoder_layers_N_{self_attn_{q,k,v,out}_proj,mlp_fc{1,2}}``.
diffusers splits BFL's fused layers: a double block's ``qkv`` is ``to_q`` / ``to_k`` / ``to_v`` (``add_*_proj`` for
the text stream), a single block's ``linear1`` is ``to_q`` / ``to_k`` / ``to_v`` / ``proj_mlp``. The trainer trains one
rank-r LoRA per diffusers layer (sd-scripts' ``split_qkv = True``); saving stacks the pieces of a fused layer into
one LoRA of rank k*r: the downs one above the other, the ups block-diagonal, alpha k*a so that alpha / rank stays
a / r (sd-scripts keeps alpha a there, which makes other tools apply 1/k of the trained change). The product up @
down is then exactly the fused layer's change, and diffusers' ``_convert_kohya_flux_lora_to_diffusers`` recognises
the block-diagonal form and splits it back to rank r. Loading (``network_weights``) takes that form back, or a
dense fused LoRA of rank r (sd-scripts' default): each piece then gets the same down and its rows of the up.

Only plain LoRA has this exact fused form; LoHa, LoKr and DoRA do not.
"""
from __future__ import annotations

from typing import Optional

import torch

UNET_PREFIX = "lora_unet_"
TE_PREFIX_OURS = "lora_te_"   # lycoris' name for a single text encoder
TE_PREFIX_FILE = "lora_te1_"  # sd-scripts' (and diffusers' Flux loader's) name for CLIP-L
TARGET_MODULES = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]  # lycoris unet_target_module for FLUX.1
TEXT_ENCODER_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
ARCHITECTURE = {"dev": "flux-1-dev/lora", "schnell": "flux-1-schnell/lora"}
IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
BASE_MODEL_VERSION = "flux1"

_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}


class FluxLoraError(RuntimeError):
    pass


def ours(path: str) -> str:
    """The trainer's (lycoris') name of a LoRA on the transformer module at ``path``."""
    return UNET_PREFIX + path.replace(".", "_")


def kohya_layout(num_double: int, num_single: int) -> dict[str, tuple[str, ...]]:
    """kohya module name -> the trainer's module names it fuses, in row order."""
    out: dict[str, tuple[str, ...]] = {}
    for i in range(num_double):
        for name, parts in _DOUBLE.items():
            out[f"{UNET_PREFIX}double_blocks_{i}_{name}"] = tuple(ours(f"transformer_blocks.{i}.{p}") for p in parts)
    for i in range(num_single):
        for name, parts in _SINGLE.items():
            out[f"{UNET_PREFIX}single_blocks_{i}_{name}"] = tuple(
                ours(f"single_transformer_blocks.{i}.{p}") for p in parts)
    return out


def modules_of(state: dict) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA state by module: ``{module: {param: tensor}}`` (``module.param`` keys split at the first dot)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, param = key.partition(".")
        out.setdefault(module, {})[param] = value
    return out


def _check_plain(module: str, params: dict) -> None:
    extra = set(params) - {"lora_down.weight", "lora_up.weight", "alpha"}
    if extra or "lora_down.weight" not in params:
        raise FluxLoraError(
            f"{module} is not a plain LoRA ({sorted(params)}): FLUX.1 LoRAs are written in the kohya layout, where "
            "q, k and v share one fused layer, which only plain LoRA can express; use network_module = "
            "\"networks.lora\" (no LoHa, LoKr or DoRA) for FLUX.1"
        )


def _alpha(params: dict, rank: int) -> float:
    alpha = params.get("alpha")
    return float(alpha) if alpha is not None else float(rank)


def to_kohya(state: dict[str, torch.Tensor], num_double: int, num_single: int) -> dict[str, torch.Tensor]:
    """The trainer's network state (lycoris names on diffusers modules) -> a kohya FLUX.1 LoRA state dict."""
    modules = modules_of(state)
    for module, params in modules.items():
        _check_plain(module, params)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for kohya, pieces in kohya_layout(num_double, num_single).items():
        present = [p for p in pieces if p in modules]
        if not present:
            continue
        used.update(present)
        if len(pieces) == 1:
            params = modules[pieces[0]]
            out[f"{kohya}.lora_down.weight"] = params["lora_down.weight"]
            out[f"{kohya}.lora_up.weight"] = params["lora_up.weight"]
            out[f"{kohya}.alpha"] = torch.tensor(_alpha(params, params["lora_down.weight"].shape[0]))
            continue
        ref = modules[present[0]]
        rank, in_features = ref["lora_down.weight"].shape
        alphas = {_alpha(modules[p], rank) for p in present}
        ranks = {int(modules[p]["lora_down.weight"].shape[0]) for p in present}
        if len(ranks) > 1 or len(alphas) > 1:
            raise FluxLoraError(f"the pieces of {kohya} have different ranks or alphas ({ranks}, {alphas})")
        if len(present) < len(pieces):
            missing = [p for p in pieces if p not in modules]
            raise FluxLoraError(f"{kohya}: {missing} have no LoRA while {present[0]} has; train all of a fused layer")
        downs = [modules[p]["lora_down.weight"] for p in pieces]
        ups = [modules[p]["lora_up.weight"] for p in pieces]
        rows = [int(u.shape[0]) for u in ups]
        k = len(pieces)
        down = torch.cat(downs, dim=0)
        up = torch.zeros(sum(rows), k * rank, dtype=ups[0].dtype, device=ups[0].device)
        start = 0
        for j, piece in enumerate(ups):
            up[start:start + rows[j], j * rank:(j + 1) * rank] = piece
            start += rows[j]
        out[f"{kohya}.lora_down.weight"] = down
        out[f"{kohya}.lora_up.weight"] = up
        out[f"{kohya}.alpha"] = torch.tensor(k * alphas.pop())
    for module, params in modules.items():
        if module.startswith(TE_PREFIX_OURS):
            name = TE_PREFIX_FILE + module[len(TE_PREFIX_OURS):]
            for param, value in params.items():
                out[f"{name}.{param}"] = value
            used.add(module)
    unknown = sorted(set(modules) - used)
    if unknown:
        raise FluxLoraError(f"these LoRA modules have no place in the kohya FLUX.1 layout: {unknown[:5]}")
    return out


def _block_diagonal(up: torch.Tensor, rows: list[int], rank: int) -> bool:
    start = 0
    for j, n in enumerate(rows):
        block = up[start:start + n]
        off = torch.cat([block[:, :j * rank], block[:, (j + 1) * rank:]], dim=1)
        if off.numel() and bool(off.abs().max() > 0):
            return False
        start += n
    return True


def from_kohya(state: dict[str, torch.Tensor], num_double: int, num_single: int, rank: int,
               row_sizes: Optional[dict[str, int]] = None) -> dict[str, torch.Tensor]:
    """A kohya FLUX.1 LoRA state dict -> the trainer's network state for LoRAs of rank ``rank``.

    ``row_sizes`` (trainer module name -> out_features) is needed for fused layers whose pieces differ in size
    (a single block's linear1); without it the rows are split evenly."""
    modules = modules_of(state)
    layout = kohya_layout(num_double, num_single)
    out: dict[str, torch.Tensor] = {}
    for module, params in modules.items():
        _check_plain(module, params)
        if module.startswith(TE_PREFIX_FILE) or module.startswith(TE_PREFIX_OURS):
            name = TE_PREFIX_OURS + module.split("_", 2)[2]
            out.update({f"{name}.{p}": v for p, v in params.items()})
            continue
        if module not in layout:
            raise FluxLoraError(f"{module} is not a module of this FLUX.1 model (a LoRA for another model?)")
        pieces = layout[module]
        down, up = params["lora_down.weight"], params["lora_up.weight"]
        file_rank = int(down.shape[0])
        alpha = _alpha(params, file_rank)
        k = len(pieces)
        if k == 1:
            out.update({f"{pieces[0]}.lora_down.weight": down, f"{pieces[0]}.lora_up.weight": up,
                        f"{pieces[0]}.alpha": torch.tensor(alpha)})
            continue
        rows = [row_sizes[p] for p in pieces] if row_sizes else [up.shape[0] // k] * k
        if sum(rows) != up.shape[0]:
            raise FluxLoraError(f"{module} has {up.shape[0]} output rows, this model's layer has {sum(rows)}")
        if file_rank == k * rank and _block_diagonal(up, rows, rank):
            starts = [sum(rows[:j]) for j in range(k)]
            for j, piece in enumerate(pieces):
                out[f"{piece}.lora_down.weight"] = down[j * rank:(j + 1) * rank].contiguous()
                out[f"{piece}.lora_up.weight"] = up[starts[j]:starts[j] + rows[j], j * rank:(j + 1) * rank].contiguous()
                out[f"{piece}.alpha"] = torch.tensor(alpha / k)
        elif file_rank == rank:
            for piece, piece_up in zip(pieces, up.split(rows, dim=0)):
                out[f"{piece}.lora_down.weight"] = down.clone()
                out[f"{piece}.lora_up.weight"] = piece_up.contiguous()
                out[f"{piece}.alpha"] = torch.tensor(alpha)
        else:
            raise FluxLoraError(
                f"{module} has rank {file_rank}; a network_dim of {rank} takes rank {rank} (one fused LoRA) or "
                f"{k * rank} (block-diagonal pieces): set network_dim to the file's"
            )
    return out


def metadata(variant: str, flow: dict, *, apply_t5_attn_mask: bool, t5xxl_max_token_length: int) -> dict[str, str]:
    """The keys a FLUX.1 LoRA's metadata has beyond (or instead of) the SD ones, as sd-scripts writes them
    (``flux_train_network.update_metadata``, ``sai_model_spec``). ``flow`` holds the flow-matching keys.
    FLUX.1 files carry no ``modelspec.prediction_type``."""
    if variant not in ARCHITECTURE:
        raise ValueError(f"unknown FLUX.1 variant {variant!r}")
    values = {
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_model_type": "flux",
        "ss_apply_t5_attn_mask": apply_t5_attn_mask,
        "ss_t5xxl_max_token_length": t5xxl_max_token_length,
        "modelspec.architecture": ARCHITECTURE[variant],
        "modelspec.implementation": IMPLEMENTATION,
    }
    for key in ("guidance_scale", "timestep_sampling", "sigmoid_scale", "model_prediction_type",
                "discrete_flow_shift", "weighting_scheme", "logit_mean", "logit_std", "mode_scale"):
        if key in flow:
            values[f"ss_{key}"] = flow[key]
    return {k: str(v) for k, v in values.items()}


METADATA_KEYS_TO_DROP = ("modelspec.prediction_type", "ss_v_parameterization")


def flux_metadata(base: dict[str, str], variant: str, flow: dict, *, apply_t5_attn_mask: bool,
                  t5xxl_max_token_length: int) -> dict[str, str]:
    """The trainer's SD metadata (metadata.build_metadata) made a FLUX.1 LoRA's: the FLUX.1 keys win, the
    SD-only keys go."""
    out = {k: v for k, v in base.items() if k not in METADATA_KEYS_TO_DROP}
    out.update(metadata(variant, flow, apply_t5_attn_mask=apply_t5_attn_mask,
                        t5xxl_max_token_length=t5xxl_max_token_length))
    return out


def row_sizes(transformer) -> dict[str, int]:
    """The trainer's LoRA module name -> out_features of every Linear of a FluxTransformer2DModel: what
    :func:`from_kohya` needs to split a single block's linear1 (q, k, v and the wider MLP input)."""
    return {ours(name): int(module.out_features) for name, module in transformer.named_modules()
            if isinstance(module, torch.nn.Linear)}


def file_state(network_state: dict[str, torch.Tensor], transformer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a FLUX.1 LoRA file (kohya layout, ``dtype``, contiguous, on the CPU) from the network's
    state (lycoris names on diffusers' modules)."""
    cfg = transformer.config
    kohya = to_kohya(network_state, cfg.num_layers, cfg.num_single_layers)
    return {k: v.detach().to("cpu", dtype=dtype).contiguous() for k, v in kohya.items()}

