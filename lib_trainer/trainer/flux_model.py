"""Build FLUX.1's four parts as diffusers / transformers modules from the files Forge users have, offline.

The transformer (``FluxTransformer2DModel``), the 16-channel AE (``AutoencoderKL``), CLIP-L (``CLIPTextModel``) and
T5-XXL (``T5EncoderModel``) come from a transformer-only file plus ``ae`` / ``clip_l`` / ``t5xxl`` files, or from an
all-in-one file (an explicitly given part wins over the one inside, as Forge's "VAE / Text Encoder" selector does).
The shipped configs in ``model_configs/flux.json`` give what the keys cannot tell; every size is re-read from the
tensor shapes, so the real model and the tiny test models go through the same path. Modules are built without
allocating their weights first and take the file's tensors as they are read (one part of a 17 GB file at a time),
fp8 tensors upcast per tensor. T5 is always returned frozen (eval mode, no gradients).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .flux_convert import bfl_to_diffusers
from .flux_files import (CLIP_L_PREFIX, FOLDER_PARTS, T5_PREFIX, VAE_PREFIX, FluxFileError, FluxFileInfo, check_part,
                         inspect_file, read_part)

CONFIG_FILE = Path(__file__).with_name("model_configs") / "flux.json"
PARTS = ("transformer", "ae", "clip_l", "t5xxl")
_EMBEDDED_PREFIX = {"ae": VAE_PREFIX, "clip_l": CLIP_L_PREFIX, "t5xxl": T5_PREFIX}
_FP8 = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)

PathLike = Union[str, Path]


@dataclass
class PartSource:
    path: Path            # a file, or a diffusers folder's subfolder
    prefix: str
    info: FluxFileInfo
    layout: str = "bfl"   # the key names of a transformer or AE: "bfl" | "diffusers"


@dataclass
class LoadedFlux:
    variant: str  # "dev" (guidance-distilled: takes a guidance input) | "schnell"
    transformer: Any
    vae: Any
    clip_l: Any
    t5: Any
    clip_tokenizer: Any
    t5_tokenizer: Any
    scheduler_config: dict
    t5_max_length: int  # sd-scripts' t5xxl_max_token_length default: 512 for dev, 256 for schnell
    name: str
    model_hash: str
    new_model_hash: str
    sources: dict = field(default_factory=dict)  # part -> PartSource

    arch = "flux"

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)


def base_configs() -> dict:
    return json.loads(CONFIG_FILE.read_text(encoding="utf-8"))


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys for m in [rx.match(k)] if m})


# ---------------------------------------------------------------------------------------------- which file holds what

def resolve_sources(model: PathLike, ae: Optional[PathLike] = None, clip_l: Optional[PathLike] = None,
                    t5xxl: Optional[PathLike] = None) -> dict[str, PartSource]:
    """Where each part comes from; FluxFileError (quantized file, missing part, wrong file) names what to pick."""
    model = Path(model).expanduser()
    if not model.exists():
        raise FluxFileError(f"FLUX.1 model {str(model)!r} not found; pick a file that exists (nothing is downloaded)")
    info = inspect_file(model)
    check_part(info, "transformer")
    folder = model.is_dir()
    if folder:  # a diffusers folder: every part in its own subfolder, diffusers' names
        sources = {"transformer": PartSource(model / FOLDER_PARTS["transformer"], "", info, "diffusers")}
    else:
        sources = {"transformer": PartSource(model, info.transformer_prefix, info, info.layout)}
    given = {"ae": ae, "clip_l": clip_l, "t5xxl": t5xxl}
    for part, path in given.items():
        if path:
            path = Path(path).expanduser()
            if not path.is_file():
                raise FluxFileError(f"the {part} file {str(path)!r} was not found")
            part_info = inspect_file(path)
            check_part(part_info, part)
            prefix = _EMBEDDED_PREFIX[part] if part_info.kind == "flux" else _own_prefix(part_info, part)
            layout = part_info.layout if part_info.kind == "ae" else "bfl"
            sources[part] = PartSource(path, prefix, part_info, layout)
        elif part in info.parts and folder:
            sources[part] = PartSource(model / FOLDER_PARTS[part], "", info, "diffusers")
        elif part in info.parts:
            sources[part] = PartSource(model, _EMBEDDED_PREFIX[part], info)
        else:
            check_part(info, part)  # raises: names the file to pick for this part
    return sources


def _own_prefix(info: FluxFileInfo, part: str) -> str:
    """A separate encoder file saved with the all-in-one prefix (some tools extract it that way) keeps it."""
    from lib_trainer.common.safetensors_header import read_header

    prefix = _EMBEDDED_PREFIX[part]
    if part != "ae" and any(k.startswith(prefix) for k in read_header(info.path).entries):
        return prefix
    return ""


# ---------------------------------------------------------------------------------------------- building modules

def _assign(model, state: dict, what: str, ignore: tuple = ()):
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(ignore)]
    unexpected = [k for k in unexpected if not k.endswith(ignore)]
    if missing or unexpected:
        raise FluxFileError(
            f"the {what} weights do not fit a FLUX.1 {what} (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "is the file complete, and is it the right part?"
        )
    return model


def _rope_axes(head_dim: int) -> list[int]:
    """FLUX.1 splits each head's 128 channels 16 / 56 / 56 between the (index, row, column) axes; a smaller head
    keeps the proportion (an eighth for the index axis), every axis even as rotary embeddings need."""
    if head_dim == 128:
        return [16, 56, 56]
    first = head_dim // 8
    rest = (head_dim - first) // 2
    axes = [first, rest, head_dim - first - rest]
    if any(a % 2 or a <= 0 for a in axes):
        raise FluxFileError(f"a head width of {head_dim} cannot be split into even rotary axes")
    return axes


def transformer_config(state: dict, base: dict) -> dict:
    """diffusers' FluxTransformer2DModel config for a diffusers-named state dict."""
    keys = list(state)
    hidden, in_channels = (int(n) for n in state["x_embedder.weight"].shape)
    head_dim = int(state["transformer_blocks.0.attn.norm_q.weight"].shape[0])
    if in_channels != base["in_channels"]:
        raise FluxFileError(
            f"this transformer takes {in_channels} input channels, FLUX.1 dev/schnell take {base['in_channels']}: "
            "Fill, Depth, Canny and other variants cannot be trained here; pick flux1-dev or flux1-schnell"
        )
    mlp = int(state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0])
    if mlp != 4 * hidden:
        raise FluxFileError(f"the MLP is {mlp} wide for a {hidden}-wide model; FLUX.1's is 4 x its width")
    cfg = dict(base)
    cfg.update(
        in_channels=in_channels,
        num_layers=_count(keys, r"transformer_blocks\.(\d+)\."),
        num_single_layers=_count(keys, r"single_transformer_blocks\.(\d+)\."),
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=int(state["context_embedder.weight"].shape[1]),
        pooled_projection_dim=int(state["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state,
        axes_dims_rope=_rope_axes(head_dim),
    )
    return cfg


def _storage(state: dict, dtype: torch.dtype) -> dict:
    """``dtype`` for every floating tensor; an fp8 dtype stores only the matrices in fp8 (sd-scripts' fp8_base),
    vectors (biases, norms) in bf16. Cast in place, one tensor at a time, so that a full-size model is never held
    twice."""
    for key in list(state):
        value = state.pop(key)
        if value.is_floating_point():
            value = value.to(dtype if dtype not in _FP8 or value.ndim >= 2 else torch.bfloat16)
        state[key] = value
    return state


def build_transformer(state: dict, dtype: torch.dtype = torch.float32, layout: str = "bfl"):
    """FluxTransformer2DModel from a transformer state dict in BFL (or diffusers) names, without a prefix.

    ``state`` is consumed: its tensors move into the model (cast one by one), so it is left empty or cast."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    if layout == "bfl":
        converted = bfl_to_diffusers(state)
        state.clear()  # the fused tensors live on only in their pieces: each is freed once its pieces are cast
        state = converted
    cfg = transformer_config(state, base_configs()["transformer"])
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(cfg)
    return _assign(model, _storage(state, dtype), "transformer")


def build_ae(state: dict, layout: str = "bfl", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = dict(base_configs()["vae"])
    down, block = ("down", "block") if layout == "bfl" else ("down_blocks", "resnets")  # BFL's / diffusers' names
    keys = list(state)
    levels = _count(keys, rf"encoder\.{down}\.(\d+)\.")
    cfg["block_out_channels"] = [int(state[f"encoder.{down}.{i}.{block}.0.conv2.weight"].shape[0])
                                 for i in range(levels)]
    cfg["layers_per_block"] = _count(keys, rf"encoder\.{down}\.0\.{block}\.(\d+)\.")
    latent = int(state["decoder.conv_in.weight"].shape[1])
    if latent != cfg["latent_channels"]:
        raise FluxFileError(f"this VAE has {latent} latent channels, FLUX.1's AE has {cfg['latent_channels']}: it is "
                            "a Stable Diffusion VAE; pick ae.safetensors")
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    model = AutoencoderKL.from_config(cfg)
    if layout == "bfl":
        state = convert_ldm_vae_checkpoint(state, model.config)
    return _assign(model, _storage(state, dtype), "AE").to(dtype)


def build_clip_l(state: dict, dtype: torch.dtype = torch.float32):
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    values = {k: v for k, v in base_configs()["text_encoder"].items() if k != "architectures"}
    emb = state["text_model.embeddings.token_embedding.weight"]
    hidden = int(emb.shape[1])
    values.update(
        vocab_size=int(emb.shape[0]), hidden_size=hidden, num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=int(state["text_model.embeddings.position_embedding.weight"].shape[0]),
        intermediate_size=int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count(state, r"text_model\.encoder\.layers\.(\d+)\."),
    )
    with init_empty_weights():
        model = CLIPTextModel(CLIPTextConfig(**values))
    state = {k: v for k, v in state.items() if k not in ("text_projection.weight", "logit_scale")}
    return _assign(model, _storage(state, dtype), "CLIP-L", ignore=("position_ids",))


def build_t5(state: dict, dtype: torch.dtype = torch.float32):
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    values = {k: v for k, v in base_configs()["text_encoder_2"].items() if k != "architectures"}
    shared = state["shared.weight"]
    bias = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = int(bias.shape[1])
    values.update(
        vocab_size=int(shared.shape[0]), d_model=int(shared.shape[1]), num_heads=heads,
        d_kv=int(state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) // heads,
        d_ff=int(state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
        num_layers=_count(state, r"encoder\.block\.(\d+)\."), relative_attention_num_buckets=int(bias.shape[0]),
    )
    with init_empty_weights():
        model = T5EncoderModel(T5Config(**values))
    state = dict(state)
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    _assign(model, _storage(state, dtype), "T5")
    model.encoder.embed_tokens = model.shared  # assigning loads untied copies; T5 ties them
    return freeze(model)


def freeze(module):
    module.requires_grad_(False)
    return module.eval()


# ---------------------------------------------------------------------------------------------- the whole model

def load_flux(model: PathLike, *, ae: Optional[PathLike] = None, clip_l: Optional[PathLike] = None,
              t5xxl: Optional[PathLike] = None, t5_tokenizer: Optional[PathLike] = None,
              dtype: torch.dtype = torch.float32, t5_dtype: Optional[torch.dtype] = None,
              transformer_dtype: Optional[torch.dtype] = None, t5xxl_max_token_length: Optional[int] = None,
              hashes: bool = True) -> LoadedFlux:
    """Every part of a FLUX.1 model: ``model`` is a FLUX.1 file or a diffusers folder. ``transformer_dtype`` may be
    an fp8 dtype (an fp8 base); ``t5_dtype`` defaults to ``dtype``. ``t5_tokenizer`` is a path or None (looked
    for: see t5_tokenizer.find_t5_tokenizer)."""
    from .t5_tokenizer import find_t5_tokenizer, load_t5_tokenizer
    from .tokenizer import load_clip_tokenizer

    model = Path(model).expanduser()
    sources = resolve_sources(model, ae, clip_l, t5xxl)
    main = sources["transformer"]
    variant = main.info.variant
    base = base_configs()
    # the tokenizer is looked for before minutes of reading weights, so that a missing one fails at once
    tokenizer_path = find_t5_tokenizer(t5_tokenizer, base_model=model)
    max_length = t5xxl_max_token_length or base["tokenizer_2"]["t5xxl_max_token_length"][variant]

    def part(name: str, read_dtype: torch.dtype) -> dict:
        # read straight into the dtype the module keeps: the file's tensors and an fp32 copy never coexist
        src = sources[name]
        return read_part(src.path, src.prefix, dtype=read_dtype)

    target = transformer_dtype or dtype
    keep_fp8 = target in _FP8 and main.info.storage_dtype.startswith("F8") and not main.info.scaled_fp8
    # an fp8 base from a bf16 / fp16 file: read in bf16, its matrices cast to fp8 one by one
    read_dtype = None if keep_fp8 else (torch.bfloat16 if target in _FP8 else target)
    state = read_part(main.path, main.prefix, dtype=read_dtype, keep_fp8=keep_fp8)
    transformer = build_transformer(state, target, main.layout)
    del state
    vae = build_ae(part("ae", dtype), sources["ae"].layout, dtype)
    clip = build_clip_l(part("clip_l", dtype), dtype)
    t5 = build_t5(part("t5xxl", t5_dtype or dtype), t5_dtype or dtype)

    model_hash, new_hash = ("", "")
    if hashes and model.is_dir():
        from .models import folder_hash

        new_hash = folder_hash(model, list(FOLDER_PARTS.values()))
        model_hash = new_hash[:8]
    elif hashes:
        from .models import file_hashes

        model_hash, new_hash = file_hashes(main.path)
    return LoadedFlux(
        variant=variant, transformer=transformer, vae=vae, clip_l=clip, t5=t5,
        clip_tokenizer=load_clip_tokenizer(base["tokenizer"]["pad_token"]),
        t5_tokenizer=load_t5_tokenizer(tokenizer_path, max_length),
        scheduler_config=dict(base["scheduler"][variant]), t5_max_length=max_length, name=model.name,
        model_hash=model_hash, new_model_hash=new_hash, sources=sources,
    )
