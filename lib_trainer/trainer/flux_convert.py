"""FLUX.1 transformer weights from BFL key names to diffusers' ``FluxTransformer2DModel`` names, at any width.

diffusers' own converter (``single_file_utils.convert_flux_transformer_checkpoint_to_diffusers``) splits the single
blocks' fused ``linear1`` with the full model's sizes written in (3072 wide, MLP x4), so it cannot read the tiny
test models; this one takes the sizes from the tensors and produces the same keys and values (a test holds it
against diffusers' converter at the real width). The mapping, per BFL -> diffusers:

- ``img_in`` -> ``x_embedder``, ``txt_in`` -> ``context_embedder``, ``time_in`` / ``vector_in`` / ``guidance_in``
  (``in_layer``, ``out_layer``) -> ``time_text_embed.{timestep,text,guidance}_embedder.linear_{1,2}``
- double block N -> ``transformer_blocks.N``: ``img_mod.lin`` -> ``norm1.linear``, ``txt_mod.lin`` ->
  ``norm1_context.linear``, ``img_attn.qkv`` -> ``attn.to_{q,k,v}`` (thirds), ``txt_attn.qkv`` ->
  ``attn.add_{q,k,v}_proj``, ``img_attn.proj`` -> ``attn.to_out.0``, ``txt_attn.proj`` -> ``attn.to_add_out``,
  ``{img,txt}_attn.norm.{query,key}_norm.scale`` -> ``attn.norm_{q,k}`` / ``attn.norm_added_{q,k}``,
  ``img_mlp.{0,2}`` -> ``ff.net.{0.proj,2}``, ``txt_mlp.{0,2}`` -> ``ff_context.net.{0.proj,2}``
- single block N -> ``single_transformer_blocks.N``: ``linear1`` -> ``attn.to_{q,k,v}`` + ``proj_mlp`` (rows
  hidden, hidden, hidden, rest), ``linear2`` -> ``proj_out``, ``modulation.lin`` -> ``norm.linear``,
  ``norm.{query,key}_norm.scale`` -> ``attn.norm_{q,k}``
- ``final_layer.linear`` -> ``proj_out``, ``final_layer.adaLN_modulation.1`` -> ``norm_out.linear`` with its two
  halves swapped (BFL: shift, scale; diffusers: scale, shift).
"""
from __future__ import annotations

import re

import torch

_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")

_BLOCK = re.compile(r"^(double|single)_blocks\.(\d+)\.(.+)$")


class FluxKeyError(RuntimeError):
    pass


def _split_param(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def single_linear1_split(hidden_size: int, rows: int) -> list[int]:
    """Row counts of q, k, v and the MLP input inside a single block's fused linear1."""
    if rows <= 3 * hidden_size:
        raise FluxKeyError(f"single_blocks linear1 has {rows} rows, fewer than q, k, v of width {hidden_size}")
    return [hidden_size, hidden_size, hidden_size, rows - 3 * hidden_size]


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-named transformer state dict (no prefix) -> diffusers names. Unknown keys raise FluxKeyError."""
    if "img_in.weight" not in state:
        raise FluxKeyError("no img_in.weight: not a FLUX.1 transformer in BFL key names")
    hidden = int(state["img_in.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        module, param = _split_param(key)
        if module in _TOP:
            out[f"{_TOP[module]}.{param}"] = value
            continue
        if module == "final_layer.adaLN_modulation.1":
            out[f"norm_out.linear.{param}"] = swap_halves(value)
            continue
        match = _BLOCK.match(key)
        if not match:
            unknown.append(key)
            continue
        kind, index, rest = match[1], match[2], match[3]
        module, param = _split_param(rest)
        if kind == "double":
            base = f"transformer_blocks.{index}."
            if rest in _DOUBLE_NORMS:
                out[base + _DOUBLE_NORMS[rest]] = value
            elif module in _DOUBLE:
                out[f"{base}{_DOUBLE[module]}.{param}"] = value
            elif module in _DOUBLE_QKV:
                for name, part in zip(_DOUBLE_QKV[module], value.chunk(3, dim=0)):
                    out[f"{base}{name}.{param}"] = part
            else:
                unknown.append(key)
        else:
            base = f"single_transformer_blocks.{index}."
            if rest in _SINGLE_NORMS:
                out[base + _SINGLE_NORMS[rest]] = value
            elif module in _SINGLE:
                out[f"{base}{_SINGLE[module]}.{param}"] = value
            elif module == "linear1":
                sizes = single_linear1_split(hidden, int(value.shape[0]))
                for name, part in zip(SINGLE_LINEAR1, value.split(sizes, dim=0)):
                    out[f"{base}{name}.{param}"] = part
            else:
                unknown.append(key)
    if unknown:
        raise FluxKeyError(f"keys this FLUX.1 converter does not know: {unknown[:5]} ({len(unknown)} in all)")
    return out
