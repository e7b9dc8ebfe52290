"""Tiny, randomly initialised Stable Diffusion checkpoints in the original single-file layout.

The tensors are generated directly under the LDM / CompVis (SD1, SD2) and sgm (SDXL) key names that WebUI
checkpoints use, so this module needs only torch and safetensors: no diffusers, no transformers, nothing
downloaded. Architecturally the models are shaped like the real ones (same blocks, same attention placement, same
text-encoder vocabulary and context length) with every width shrunk, so that a LoRA over them has the same attention
and text-encoder target modules as over the full-size model. The channel multipliers differ from the real ones, so
which ResBlocks carry a `skip_connection` (a LoCon target) differs slightly.

    python -m lib_trainer.demo.tiny_model --arch sd1 OUT.safetensors [--seed N] [--dtype fp16|fp32]

The configs below are only what the builder uses; consumers must infer configs from the checkpoint.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
from typing import Any

import torch

ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")

_VOCAB_SIZE = 49408
_CONTEXT_LENGTH = 77

# UNet and VAE parameters use the names of the LDM / sgm yaml configs ("unet_config.params",
# "first_stage_config.params.ddconfig"). attention_resolutions holds downsampling factors, as in LDM.
_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2, 2],  # four levels keep the x8 downscale
    "num_res_blocks": 2,
    "z_channels": 4,
    "double_z": True,
    "attn_resolutions": [],
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": {
        "unet": {
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 32,
            "channel_mult": [1, 1, 2, 2],
            "num_res_blocks": 2,
            "attention_resolutions": [4, 2, 1],
            "transformer_depth": 1,
            "num_heads": 8,
            "context_dim": 64,
            "use_linear_in_transformer": False,
        },
        "vae": _VAE,
        "scale_factor": 0.18215,
        "text_encoders": [
            {"layout": "hf_clip", "prefix": "cond_stage_model.transformer.", "width": 64, "layers": 12},
        ],
    },
    "sd2": {
        "unet": {
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 64,  # >= the 64 head channels of SD2 / SDXL
            "channel_mult": [1, 1, 1, 1],
            "num_res_blocks": 2,
            "attention_resolutions": [4, 2, 1],
            "transformer_depth": 1,
            "num_head_channels": 64,
            "context_dim": 64,
            "use_linear_in_transformer": True,
        },
        "vae": _VAE,
        "scale_factor": 0.18215,
        "text_encoders": [
            {"layout": "open_clip", "prefix": "cond_stage_model.model.", "width": 64, "layers": 4,
             "projection_dim": 64},
        ],
    },
    "sdxl": {
        "unet": {
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 64,
            "channel_mult": [1, 1, 1],
            "num_res_blocks": 2,
            "attention_resolutions": [4, 2],
            "transformer_depth": [0, 1, 2],  # the middle block uses the last entry, as in sgm
            "num_head_channels": 64,
            "context_dim": 128,  # te1 width + te2 width
            "use_linear_in_transformer": True,
            "num_classes": "sequential",
            "adm_in_channels": 64 + 6 * 256,  # te2 pooled projection + 6 size/crop embeddings of 256
        },
        "vae": _VAE,
        "scale_factor": 0.13025,
        "text_encoders": [
            {"layout": "hf_clip", "prefix": "conditioner.embedders.0.transformer.", "width": 64, "layers": 12},
            # Ten blocks so that `resblocks.9`, which tools probe to recognise SDXL base, exists.
            {"layout": "open_clip", "prefix": "conditioner.embedders.1.model.", "width": 64, "layers": 10,
             "projection_dim": 64},
        ],
    },
}
TINY_CONFIGS["sd2-v"] = TINY_CONFIGS["sd2"]  # same weights; v-prediction only changes how the model is used


class _Builder:
    """Appends deterministically initialised tensors to an ordered state dict."""

    def __init__(self, seed: int, dtype: torch.dtype, device: str = "cpu") -> None:
        # Full-size models are billions of numbers: drawn on a GPU they take seconds instead of minutes (other
        # values than the CPU generator's, same distributions). The tensors always end up on the CPU.
        self.device = device
        self.generator = torch.Generator(device).manual_seed(seed)
        self.dtype = dtype
        self.tensors: dict[str, torch.Tensor] = {}

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.tensors:
            raise ValueError(f"duplicate key {name}")
        self.tensors[name] = (tensor.to(self.dtype) if tensor.is_floating_point() else tensor).cpu()

    def _uniform(self, shape: tuple[int, ...], bound: float) -> torch.Tensor:
        return (torch.rand(shape, generator=self.generator, device=self.device) * 2 - 1) * bound

    def _normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device) * std + mean

    def dense(self, weight_key: str, bias_key: str | None, shape: tuple[int, ...]) -> None:
        """Linear or conv weight (out, in, *kernel) at PyTorch's default scale U(+-1/sqrt(fan_in)).

        Also used for the layers LDM initialises to zero: zero there makes every prompt and LoRA draw the same image.
        """
        bound = 1.0 / math.sqrt(math.prod(shape[1:]))
        self._put(weight_key, self._uniform(shape, bound))
        if bias_key is not None:
            self._put(bias_key, self._uniform((shape[0],), bound))

    def linear(self, name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        self.dense(f"{name}.weight", f"{name}.bias" if bias else None, (out_features, in_features))

    def conv(self, name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        self.dense(f"{name}.weight", f"{name}.bias", (out_channels, in_channels, kernel, kernel))

    def norm(self, name: str, channels: int, bias_mean: float = 0.0) -> None:
        self._put(f"{name}.weight", torch.ones(channels))
        if bias_mean:
            self._put(f"{name}.bias", self._normal((channels,), 0.05, bias_mean))
        else:
            self._put(f"{name}.bias", torch.zeros(channels))

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> None:
        self._put(name, self._normal(shape, std))

    def constant(self, name: str, tensor: torch.Tensor) -> None:
        self._put(name, tensor)


# --- UNet (ldm.modules.diffusionmodules.openaimodel / sgm ... openaimodel) ----------------------------------------

def _res_block(b: _Builder, p: str, ch_in: int, ch_out: int, emb_dim: int) -> None:
    b.norm(p + "in_layers.0", ch_in)
    b.conv(p + "in_layers.2", ch_out, ch_in, 3)
    b.linear(p + "emb_layers.1", ch_out, emb_dim)
    b.norm(p + "out_layers.0", ch_out)
    b.conv(p + "out_layers.3", ch_out, ch_out, 3)
    if ch_in != ch_out:
        b.conv(p + "skip_connection", ch_out, ch_in, 1)


def _attention(b: _Builder, p: str, dim: int, context_dim: int) -> None:
    b.linear(p + "to_q", dim, dim, bias=False)
    b.linear(p + "to_k", dim, context_dim, bias=False)
    b.linear(p + "to_v", dim, context_dim, bias=False)
    b.linear(p + "to_out.0", dim, dim)


def _spatial_transformer(b: _Builder, p: str, ch: int, depth: int, context_dim: int, linear: bool) -> None:
    # The inner width equals the channel count for every SD model (heads * head_dim == ch).
    b.norm(p + "norm", ch)
    proj = b.linear if linear else (lambda name, out_ch, in_ch: b.conv(name, out_ch, in_ch, 1))
    proj(p + "proj_in", ch, ch)
    for d in range(depth):
        t = f"{p}transformer_blocks.{d}."
        _attention(b, t + "attn1.", ch, ch)
        b.linear(t + "ff.net.0.proj", ch * 4 * 2, ch)  # GEGLU: value and gate
        b.linear(t + "ff.net.2", ch, ch * 4)
        _attention(b, t + "attn2.", ch, context_dim)
        for n in ("norm1", "norm2", "norm3"):
            b.norm(t + n, ch)
    proj(p + "proj_out", ch, ch)


def _unet(b: _Builder, cfg: dict[str, Any], p: str = "model.diffusion_model.") -> None:
    mc = cfg["model_channels"]
    mults = cfg["channel_mult"]
    nrb = cfg["num_res_blocks"]
    depth = cfg["transformer_depth"]
    depths = [depth] * len(mults) if isinstance(depth, int) else list(depth)
    ctx = cfg["context_dim"]
    linear = cfg["use_linear_in_transformer"]
    attn_ds = set(cfg["attention_resolutions"])
    emb = mc * 4

    b.linear(p + "time_embed.0", emb, mc)
    b.linear(p + "time_embed.2", emb, emb)
    if cfg.get("adm_in_channels"):
        b.linear(p + "label_emb.0.0", emb, cfg["adm_in_channels"])
        b.linear(p + "label_emb.0.2", emb, emb)

    b.conv(p + "input_blocks.0.0", mc, cfg["in_channels"], 3)
    skip_channels = [mc]
    ch, ds, idx = mc, 1, 1
    for level, mult in enumerate(mults):
        for _ in range(nrb):
            _res_block(b, f"{p}input_blocks.{idx}.0.", ch, mc * mult, emb)
            ch = mc * mult
            if ds in attn_ds and depths[level] > 0:
                _spatial_transformer(b, f"{p}input_blocks.{idx}.1.", ch, depths[level], ctx, linear)
            skip_channels.append(ch)
            idx += 1
        if level != len(mults) - 1:
            b.conv(f"{p}input_blocks.{idx}.0.op", ch, ch, 3)
            skip_channels.append(ch)
            idx += 1
            ds *= 2

    _res_block(b, p + "middle_block.0.", ch, ch, emb)
    _spatial_transformer(b, p + "middle_block.1.", ch, depths[-1], ctx, linear)
    _res_block(b, p + "middle_block.2.", ch, ch, emb)

    idx = 0
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(nrb + 1):
            _res_block(b, f"{p}output_blocks.{idx}.0.", ch + skip_channels.pop(), mc * mult, emb)
            ch = mc * mult
            sub = 1
            if ds in attn_ds and depths[level] > 0:
                _spatial_transformer(b, f"{p}output_blocks.{idx}.1.", ch, depths[level], ctx, linear)
                sub = 2
            if level and i == nrb:
                b.conv(f"{p}output_blocks.{idx}.{sub}.conv", ch, ch, 3)
                ds //= 2
            idx += 1

    b.norm(p + "out.0", ch)
    b.conv(p + "out.2", cfg["out_channels"], mc, 3)


# --- VAE (ldm.modules.diffusionmodules.model Encoder / Decoder) ---------------------------------------------------

def _vae_res_block(b: _Builder, p: str, ch_in: int, ch_out: int) -> None:
    b.norm(p + "norm1", ch_in)
    b.conv(p + "conv1", ch_out, ch_in, 3)
    b.norm(p + "norm2", ch_out)
    b.conv(p + "conv2", ch_out, ch_out, 3)
    if ch_in != ch_out:
        b.conv(p + "nin_shortcut", ch_out, ch_in, 1)


def _vae_mid(b: _Builder, p: str, ch: int) -> None:
    _vae_res_block(b, p + "block_1.", ch, ch)
    b.norm(p + "attn_1.norm", ch)
    for n in ("q", "k", "v", "proj_out"):  # 1x1 convs in LDM, 4-D weights
        b.conv(f"{p}attn_1.{n}", ch, ch, 1)
    _vae_res_block(b, p + "block_2.", ch, ch)


def _vae(b: _Builder, cfg: dict[str, Any], p: str = "first_stage_model.", quant_convs: bool = True) -> None:
    """The LDM KL autoencoder; ``quant_convs`` False leaves out quant_conv / post_quant_conv (FLUX.1's AE)."""
    ch, mults, nrb, z = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["z_channels"]

    b.conv(p + "encoder.conv_in", ch, cfg["in_channels"], 3)
    block_in = ch
    for i, mult in enumerate(mults):
        for j in range(nrb):
            _vae_res_block(b, f"{p}encoder.down.{i}.block.{j}.", block_in, ch * mult)
            block_in = ch * mult
        if i != len(mults) - 1:
            b.conv(f"{p}encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _vae_mid(b, p + "encoder.mid.", block_in)
    b.norm(p + "encoder.norm_out", block_in)
    b.conv(p + "encoder.conv_out", 2 * z if cfg.get("double_z", True) else z, block_in, 3)

    block_in = ch * mults[-1]
    b.conv(p + "decoder.conv_in", block_in, z, 3)
    _vae_mid(b, p + "decoder.mid.", block_in)
    for i in reversed(range(len(mults))):
        for j in range(nrb + 1):
            _vae_res_block(b, f"{p}decoder.up.{i}.block.{j}.", block_in, ch * mults[i])
            block_in = ch * mults[i]
        if i != 0:
            b.conv(f"{p}decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    b.norm(p + "decoder.norm_out", block_in)
    b.conv(p + "decoder.conv_out", cfg["out_ch"], block_in, 3)

    if quant_convs:
        b.conv(p + "quant_conv", 2 * z, 2 * z, 1)
        b.conv(p + "post_quant_conv", z, z, 1)


# --- Text encoders ------------------------------------------------------------------------------------------------

# The final LayerNorm gets a clearly non-zero bias: with a zero bias every token's mean is 0 and the WebUI's emphasis
# normalisation (rescaling by the ratio of means) divides 0 by 0.
_FINAL_LN_BIAS_MEAN = 0.1


def _hf_clip(b: _Builder, cfg: dict[str, Any]) -> None:
    """transformers CLIPTextModel names (SD1's and SDXL's CLIP ViT-L text tower)."""
    p = cfg["prefix"] + "text_model."
    w = cfg["width"]
    b.normal(p + "embeddings.token_embedding.weight", (_VOCAB_SIZE, w), 0.02)
    b.normal(p + "embeddings.position_embedding.weight", (_CONTEXT_LENGTH, w), 0.01)
    b.constant(p + "embeddings.position_ids", torch.arange(_CONTEXT_LENGTH, dtype=torch.int64)[None])
    for i in range(cfg["layers"]):
        layer = f"{p}encoder.layers.{i}."
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            b.linear(f"{layer}self_attn.{n}", w, w)
        b.norm(layer + "layer_norm1", w)
        b.linear(layer + "mlp.fc1", 4 * w, w)
        b.linear(layer + "mlp.fc2", w, 4 * w)
        b.norm(layer + "layer_norm2", w)
    b.norm(p + "final_layer_norm", w, bias_mean=_FINAL_LN_BIAS_MEAN)


def _open_clip(b: _Builder, cfg: dict[str, Any]) -> None:
    """open_clip text tower names (SD2's ViT-H and SDXL's ViT-bigG), q/k/v packed in nn.MultiheadAttention."""
    p = cfg["prefix"]
    w = cfg["width"]
    b.normal(p + "positional_embedding", (_CONTEXT_LENGTH, w), 0.01)
    b.normal(p + "text_projection", (w, cfg["projection_dim"]), w ** -0.5)  # used as x @ text_projection
    b.constant(p + "logit_scale", torch.tensor(math.log(1 / 0.07)))
    b.normal(p + "token_embedding.weight", (_VOCAB_SIZE, w), 0.02)
    for i in range(cfg["layers"]):
        block = f"{p}transformer.resblocks.{i}."
        b.norm(block + "ln_1", w)
        b.dense(block + "attn.in_proj_weight", block + "attn.in_proj_bias", (3 * w, w))  # packed q, k, v
        b.linear(block + "attn.out_proj", w, w)
        b.norm(block + "ln_2", w)
        b.linear(block + "mlp.c_fc", 4 * w, w)
        b.linear(block + "mlp.c_proj", w, 4 * w)
    b.norm(p + "ln_final", w, bias_mean=_FINAL_LN_BIAS_MEAN)


# --- Public API ---------------------------------------------------------------------------------------------------

def build_state_dict(config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float16,
                     device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors under the original single-file key names for a builder config shaped like
    ``TINY_CONFIGS[arch]`` (any sizes: the benchmarks build full-size models with it). ``device`` is where the
    random numbers are drawn ("cuda" is much faster for full-size models); the tensors are returned on the CPU."""
    b = _Builder(seed, dtype, device)
    _unet(b, config["unet"])
    _vae(b, config["vae"])
    for te in config["text_encoders"]:
        (_hf_clip if te["layout"] == "hf_clip" else _open_clip)(b, te)
    return b.tensors


def build_tiny_state_dict(arch: str, seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A tiny random checkpoint of `arch` (sd1, sd2, sd2-v, sdxl) in the original single-file key layout.

    Deterministic for a given seed. Floating tensors are `dtype` (fp16 by default, like pruned WebUI checkpoints);
    `...embeddings.position_ids` stays int64 as in real checkpoints.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return build_state_dict(TINY_CONFIGS[arch], seed, dtype)


def write_tiny_checkpoint(
    arch: str, path: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.float16
) -> pathlib.Path:
    """Write `build_tiny_state_dict(arch, seed)` as .safetensors atomically; returns the path written."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    state_dict = build_tiny_state_dict(arch, seed, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state_dict, tmp, metadata={"train_tools_tiny": arch, "modelspec.resolution": "64x64"})
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib_trainer.demo.tiny_model",
        description="Write a tiny random Stable Diffusion checkpoint in the original single-file layout.",
    )
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp16")
    parser.add_argument("output", type=pathlib.Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    path = write_tiny_checkpoint(args.arch, args.output, args.seed, _DTYPES[args.dtype])
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
