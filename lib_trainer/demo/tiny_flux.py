"""Tiny, randomly initialised FLUX.1 files in the layouts Forge and ComfyUI users have (see trainer/flux_files.py).

Like tiny_model.py for Stable Diffusion: the tensors are generated directly under the files' own key names (BFL
transformer and AE keys, transformers' CLIPTextModel and T5EncoderModel keys), with torch and safetensors only.
Shaped like the real model with every width shrunk: 16 latent channels packed 2x2 into the transformer's 64
inputs, a four-level (x8) AE, double and single blocks, the real CLIP vocabulary and context; the T5 tokenizer is a
small Unigram model made here with the ``tokenizers`` package, saved the way Forge ships FLUX.1's
(``tokenizer_2/tokenizer.json`` and its configs).

    python -m lib_trainer.demo.tiny_flux OUT_DIR [--variant dev|schnell] [--seed N]

writes the split set (transformer, ae, clip_l, t5xxl fp16 and fp8), the all-in-one file and ``tokenizer_2/``.
Full-size FLUX.1-shaped weights use the same builders with :data:`FLUX_DEV_CONFIG` (bench/ does).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import struct
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lib_trainer.demo.tiny_model import _Builder, _hf_clip, _vae

VARIANTS = ("dev", "schnell")
LATENT_CHANNELS = 16

TINY_FLUX_CONFIG: dict[str, Any] = {
    "transformer": {
        "hidden_size": 64, "head_dim": 32, "mlp_ratio": 4, "depth": 2, "depth_single_blocks": 2,
        "in_channels": 4 * LATENT_CHANNELS, "vec_in_dim": 64, "context_in_dim": 32,
    },
    # Four levels keep the x8 downscale; no quant convs (the FLUX.1 AE has none).
    "ae": {"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 2, "z_channels": LATENT_CHANNELS,
           "in_channels": 3, "out_ch": 3},
    "clip_l": {"width": 64, "layers": 2},
    "t5": {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 2, "num_buckets": 32},
}
# The real model's sizes (FLUX.1-dev: 12B transformer, 4.7B T5-XXL); bench/ builds random weights with them.
FLUX_DEV_CONFIG: dict[str, Any] = {
    "transformer": {
        "hidden_size": 3072, "head_dim": 128, "mlp_ratio": 4, "depth": 19, "depth_single_blocks": 38,
        "in_channels": 64, "vec_in_dim": 768, "context_in_dim": 4096,
    },
    "ae": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_channels": 16, "in_channels": 3, "out_ch": 3},
    "clip_l": {"width": 768, "layers": 12},
    "t5": {"d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240, "num_layers": 24, "num_buckets": 32},
}
# The real width with one block of each kind: diffusers' kohya-Flux LoRA converter only accepts 3072-wide models
# (it splits single blocks' linear1 as 3072 x 3 + 12288), so its check runs on this one (~480M parameters).
FLUX_WIDTH_CONFIG: dict[str, Any] = copy.deepcopy(TINY_FLUX_CONFIG)
FLUX_WIDTH_CONFIG["transformer"].update(hidden_size=3072, head_dim=128, depth=1, depth_single_blocks=1)


# --------------------------------------------------------------------------------------------- the transformer

def _modulation(b: _Builder, name: str, hidden: int, factor: int) -> None:
    b.linear(name, factor * hidden, hidden)


def _qk_norm(b: _Builder, prefix: str, head_dim: int) -> None:
    b.constant(prefix + "query_norm.scale", torch.ones(head_dim))
    b.constant(prefix + "key_norm.scale", torch.ones(head_dim))


def _transformer(b: _Builder, cfg: dict[str, Any], guidance: bool, p: str = "") -> None:
    """BFL's flux.model.Flux parameter names (qkv_bias = True, as in FLUX.1)."""
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    mlp = int(h * cfg["mlp_ratio"])
    b.linear(p + "img_in", h, cfg["in_channels"])
    b.linear(p + "time_in.in_layer", h, 256)
    b.linear(p + "time_in.out_layer", h, h)
    b.linear(p + "vector_in.in_layer", h, cfg["vec_in_dim"])
    b.linear(p + "vector_in.out_layer", h, h)
    if guidance:
        b.linear(p + "guidance_in.in_layer", h, 256)
        b.linear(p + "guidance_in.out_layer", h, h)
    b.linear(p + "txt_in", h, cfg["context_in_dim"])
    for i in range(cfg["depth"]):
        d = f"{p}double_blocks.{i}."
        for stream in ("img", "txt"):
            _modulation(b, f"{d}{stream}_mod.lin", h, 6)
            b.linear(f"{d}{stream}_attn.qkv", 3 * h, h)
            _qk_norm(b, f"{d}{stream}_attn.norm.", hd)
            b.linear(f"{d}{stream}_attn.proj", h, h)
            b.linear(f"{d}{stream}_mlp.0", mlp, h)
            b.linear(f"{d}{stream}_mlp.2", h, mlp)
    for i in range(cfg["depth_single_blocks"]):
        s = f"{p}single_blocks.{i}."
        b.linear(s + "linear1", 3 * h + mlp, h)
        b.linear(s + "linear2", h, h + mlp)
        _qk_norm(b, s + "norm.", hd)
        _modulation(b, s + "modulation.lin", h, 3)
    b.linear(p + "final_layer.linear", cfg["in_channels"], h)
    b.linear(p + "final_layer.adaLN_modulation.1", 2 * h, h)


# --------------------------------------------------------------------------------------------- AE, T5, CLIP-L

def _ae(b: _Builder, cfg: dict[str, Any], p: str = "") -> None:
    """BFL's flux.modules.autoencoder names: the LDM encoder/decoder without quant_conv / post_quant_conv."""
    _vae(b, cfg, p, quant_convs=False)


def _t5(b: _Builder, cfg: dict[str, Any], vocab_size: int, p: str = "") -> None:
    """transformers' T5EncoderModel names (T5 v1.1: gated GELU, no biases, relative position bias in block 0)."""
    d, inner, ff = cfg["d_model"], cfg["d_kv"] * cfg["num_heads"], cfg["d_ff"]
    b.normal(p + "shared.weight", (vocab_size, d), 1.0)
    for i in range(cfg["num_layers"]):
        blk = f"{p}encoder.block.{i}.layer."
        for n in ("q", "k", "v"):
            b.linear(f"{blk}0.SelfAttention.{n}", inner, d, bias=False)
        b.linear(f"{blk}0.SelfAttention.o", d, inner, bias=False)
        if i == 0:
            b.normal(f"{blk}0.SelfAttention.relative_attention_bias.weight", (cfg["num_buckets"], cfg["num_heads"]), 0.1)
        b.constant(f"{blk}0.layer_norm.weight", torch.ones(d))
        b.linear(f"{blk}1.DenseReluDense.wi_0", ff, d, bias=False)
        b.linear(f"{blk}1.DenseReluDense.wi_1", ff, d, bias=False)
        b.linear(f"{blk}1.DenseReluDense.wo", d, ff, bias=False)
        b.constant(f"{blk}1.layer_norm.weight", torch.ones(d))
    b.constant(p + "encoder.final_layer_norm.weight", torch.ones(d))


# --------------------------------------------------------------------------------------------- T5 tokenizer

_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
_WORDS = ("a photo of the and with in on dog cat person man woman style red green blue yellow white black circle "
          "square triangle background sks tt").split()


def t5_vocab() -> list[tuple[str, float]]:
    """A small Unigram vocabulary: T5's specials, '▁', ASCII characters (with and without '▁') and some words."""
    chars = [chr(c) for c in range(33, 127)]
    pieces = ["\u2581"] + [f"\u2581{w}" for w in _WORDS] + [f"\u2581{c}" for c in chars] + chars
    seen: list[str] = []
    for piece in pieces:
        if piece not in seen:
            seen.append(piece)
    # Whole words score best, then single characters: Unigram prefers the fewest, likeliest pieces.
    scored = [(s, 0.0) for s in _SPECIALS]
    scored += [(piece, -2.0 if len(piece) > 2 else -5.0 - 0.01 * i) for i, piece in enumerate(seen)]
    return scored


def write_t5_tokenizer(folder: os.PathLike[str] | str, model_max_length: int = 512) -> pathlib.Path:
    """``folder``/tokenizer.json + tokenizer_config.json + special_tokens_map.json, loadable by T5TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.Unigram(t5_vocab(), 2))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    config = {**specials, "extra_ids": 0, "model_max_length": model_max_length, "tokenizer_class": "T5Tokenizer",
              "clean_up_tokenization_spaces": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------- state dicts, files

@dataclass
class TinyFluxParts:
    transformer: dict  # BFL keys, no prefix
    ae: dict           # BFL AE keys
    clip_l: dict       # transformers CLIPTextModel keys (text_model.*)
    t5xxl: dict        # transformers T5EncoderModel keys


def build_parts(config: dict[str, Any] = TINY_FLUX_CONFIG, variant: str = "dev", seed: int = 0,
                dtype: torch.dtype = torch.float32, device: str = "cpu") -> TinyFluxParts:
    """Random tensors of every part; deterministic for a seed (each part has its own generator)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    parts = []
    for offset, build in enumerate((
        lambda b: _transformer(b, config["transformer"], guidance=variant == "dev"),
        lambda b: _ae(b, config["ae"]),
        lambda b: _hf_clip(b, {"prefix": "", **config["clip_l"]}),
        lambda b: _t5(b, config["t5"], vocab_size=len(t5_vocab())),
    )):
        b = _Builder(seed * 10 + offset, dtype, device)
        build(b)
        parts.append(b.tensors)
    return TinyFluxParts(*parts)


def to_fp8(state: dict, scaled: bool = False) -> dict:
    """fp8 (e4m3fn) storage as in ``*-fp8-e4m3fn`` files: matrices in fp8, vectors (norms, biases) kept.

    ``scaled`` writes ComfyUI's scaled fp8: weight / scale in fp8, ``<layer>.scale_weight`` and a ``scaled_fp8``
    marker."""
    out: dict = {}
    for key, value in state.items():
        if value.is_floating_point() and value.ndim >= 2:
            if scaled and key.endswith(".weight"):
                scale = value.float().abs().max().clamp(min=1e-12) / 448.0  # e4m3fn's largest value
                out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
                out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
            else:
                out[key] = value.to(torch.float8_e4m3fn)
        else:
            out[key] = value
    if scaled:
        out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return out


def all_in_one(parts: TinyFluxParts) -> dict:
    """ComfyUI's / Forge's single-file layout (CheckpointSave of a Flux model)."""
    out = {f"model.diffusion_model.{k}": v for k, v in parts.transformer.items()}
    out.update({f"vae.{k}": v for k, v in parts.ae.items()})
    out.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in parts.clip_l.items()})
    out.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in parts.t5xxl.items()})
    return out


def nf4_like(state: dict) -> dict:
    """The key layout of a bitsandbytes NF4 file (Forge's flux1-dev-bnb-nf4): packed 4-bit weights with their
    absmax / quant_map / quant_state entries. Random bytes: only the layout matters (it must be refused)."""
    out: dict = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            n = value.numel()
            out[key] = torch.randint(0, 255, ((n + 1) // 2, 1), dtype=torch.uint8)
            out[key + ".absmax"] = torch.rand(math.ceil(n / 64))
            out[key + ".quant_map"] = torch.linspace(-1, 1, 16)
            out[key + ".quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
        else:
            out[key] = value
    return out


def write_gguf_stub(path: os.PathLike[str] | str) -> pathlib.Path:
    """The header of an empty GGUF v3 file (magic, version, 0 tensors, 0 metadata): what the trainer refuses."""
    path = pathlib.Path(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    return path


def _save(state: dict, path: pathlib.Path, metadata: Optional[dict] = None) -> pathlib.Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path


@dataclass
class TinyFluxFiles:
    transformer: pathlib.Path  # BFL transformer-only (bf16)
    ae: pathlib.Path           # ae.safetensors (fp32, as BFL ships it)
    clip_l: pathlib.Path       # clip_l.safetensors (fp16)
    t5xxl: pathlib.Path        # t5xxl_fp16.safetensors
    t5xxl_fp8: pathlib.Path    # t5xxl_fp8_e4m3fn.safetensors
    all_in_one: pathlib.Path   # model.diffusion_model.* + vae.* + text_encoders.* (bf16 / fp16)
    tokenizer_2: pathlib.Path  # tokenizer folder as Forge ships FLUX.1's


def write_tiny_flux(folder: os.PathLike[str] | str, variant: str = "dev", seed: int = 0,
                    config: dict[str, Any] = TINY_FLUX_CONFIG) -> TinyFluxFiles:
    """Every layout of one tiny random model into ``folder`` (the all-in-one file holds the same tensors)."""
    folder = pathlib.Path(folder)
    parts = build_parts(config, variant, seed)
    stored = TinyFluxParts(
        transformer={k: v.to(torch.bfloat16) for k, v in parts.transformer.items()},
        ae=parts.ae,
        clip_l={k: v.to(torch.float16) if v.is_floating_point() else v for k, v in parts.clip_l.items()},
        t5xxl={k: v.to(torch.float16) for k, v in parts.t5xxl.items()},
    )
    meta = {"train_tools_tiny": f"flux-{variant}"}
    return TinyFluxFiles(
        transformer=_save(stored.transformer, folder / f"flux1-{variant}-tiny.safetensors", meta),
        ae=_save(stored.ae, folder / "ae.safetensors", meta),
        clip_l=_save(stored.clip_l, folder / "clip_l.safetensors", meta),
        t5xxl=_save(stored.t5xxl, folder / "t5xxl_fp16.safetensors", meta),
        t5xxl_fp8=_save(to_fp8(stored.t5xxl), folder / "t5xxl_fp8_e4m3fn.safetensors", meta),
        all_in_one=_save(all_in_one(stored), folder / f"flux1-{variant}-tiny-aio.safetensors", meta),
        tokenizer_2=write_t5_tokenizer(folder / "tokenizer_2"),
    )


def write_tiny_flux_folder(folder: os.PathLike[str] | str, variant: str = "dev", seed: int = 0,
                           config: dict[str, Any] = TINY_FLUX_CONFIG) -> pathlib.Path:
    """The same tiny model as :func:`write_tiny_flux` (same seed: same values) as a diffusers folder, the way
    black-forest-labs/FLUX.1-dev is downloaded: transformer/ in two shards, vae/, text_encoder/, text_encoder_2/,
    tokenizer_2/, with diffusers' and transformers' key names."""
    from lib_trainer.trainer.flux_convert import bfl_to_diffusers
    from lib_trainer.trainer.flux_model import build_ae

    folder = pathlib.Path(folder)
    parts = build_parts(config, variant, seed)
    transformer = bfl_to_diffusers({k: v.to(torch.bfloat16) for k, v in parts.transformer.items()})
    names = sorted(transformer)
    half = len(names) // 2
    for i, shard in enumerate((names[:half], names[half:]), start=1):
        shard_name = f"diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        _save({k: transformer[k] for k in shard}, folder / "transformer" / shard_name)
    _save(build_ae(dict(parts.ae)).state_dict(), folder / "vae" / "diffusion_pytorch_model.safetensors")
    _save({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in parts.clip_l.items()},
          folder / "text_encoder" / "model.safetensors")
    _save({k: v.to(torch.float16) for k, v in parts.t5xxl.items()}, folder / "text_encoder_2" / "model.safetensors")
    write_t5_tokenizer(folder / "tokenizer_2")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo.tiny_flux",
                                     description="Write tiny random FLUX.1 files in the layouts Forge users have.")
    parser.add_argument("--variant", choices=VARIANTS, default="dev")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("output", type=pathlib.Path, help="the folder to write into")
    args = parser.parse_args(argv)
    files = write_tiny_flux(args.output, args.variant, args.seed)
    for name, path in vars(files).items():
        size = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size
        print(f"{name}: {path} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
