"""The toy base model's architecture, and the way between its trainable diffusers modules and the SD1 file.

The toy model is a real SD1 model in everything but size: the single-file LDM layout every SD1 consumer reads
(``model.diffusion_model.*``, a KL-f8 VAE with four levels under ``first_stage_model.*``, a CLIP-L-shaped text
encoder under ``cond_stage_model.transformer.text_model.*`` with the real 49408-token vocabulary and 77 positions),
with small widths and a 6-layer text encoder. It is pretrained on the toy world (``lib_trainer.demo.pretrain``) at
64 px: 8x8 latents.

Training happens on the diffusers modules the trainer's own loader builds from such a file; ``ldm_key_map``
derives the way back (diffusers name -> LDM name and shape) by converting a checkpoint whose every tensor carries its
own number and seeing where each number lands, so no conversion table is written by hand.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from lib_trainer.demo.tiny_model import build_state_dict

TOY_SIZE = 64  # pixels; the model's native resolution
MODEL_FILE = Path(__file__).with_name("models") / "toy-sd1.safetensors"
MODEL_NOTES = MODEL_FILE.with_suffix(".json")

TOY_CONFIG: dict[str, Any] = {
    "unet": {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 64,
        "channel_mult": [1, 1, 2, 2],  # SD1's four levels (8x8 down to 1x1 latents at 64 px)
        "num_res_blocks": 2,
        "attention_resolutions": [4, 2, 1],  # as SD1: cross-attention on the first three levels
        "transformer_depth": 1,
        "num_heads": 8,
        "context_dim": 128,
        "use_linear_in_transformer": False,
    },
    "vae": {
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2, 4],  # four levels: the x8 downscale every SD1 consumer assumes
        "num_res_blocks": 2,
        "z_channels": 4,
        "double_z": True,
        "attn_resolutions": [],
    },
    "scale_factor": 0.18215,
    "text_encoders": [
        {"layout": "hf_clip", "prefix": "cond_stage_model.transformer.", "width": 128, "layers": 6},
    ],
}

PARTS = ("unet", "vae", "text_encoder")


def toy_config() -> dict[str, Any]:
    return copy.deepcopy(TOY_CONFIG)


def _save(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_random(path: Path, seed: int = 0, config: dict[str, Any] | None = None) -> Path:
    """An untrained toy checkpoint (fp32): where pretraining starts."""
    state = build_state_dict(config or TOY_CONFIG, seed, torch.float32)
    return _save(state, path, {"train_tools_toy": "untrained"})


def load_parts(path: Path):
    """The checkpoint through the trainer's own loader: a LoadedModel (diffusers UNet, VAE, CLIP text model)."""
    from lib_trainer.trainer.models import load_single_file

    return load_single_file(Path(path))


def parts_of(model) -> dict[str, torch.nn.Module]:
    return {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoders[0]}


_ID_STRIDE = 1000  # tensor number * 1000 + (element index mod 1000): exact in fp32 for < 16 000 tensors


def ldm_key_map(config: dict[str, Any] | None = None) -> dict[tuple[str, str], tuple[str, tuple[int, ...]]]:
    """``(part, diffusers key) -> (LDM key, LDM shape)`` for every floating tensor of a model of ``config``.

    A checkpoint is built whose tensor number i holds ``i * 1000 + (element index mod 1000)``, loaded by the
    trainer's loader (diffusers' converters), and each loaded tensor is traced back by its first value and checked
    element by element (reshapes are allowed, any other change is an error). Worked out once per config."""
    return dict(_ldm_key_map(json.dumps(config or TOY_CONFIG, sort_keys=True)))


@functools.lru_cache(maxsize=4)
def _ldm_key_map(config_json: str) -> dict[tuple[str, str], tuple[str, tuple[int, ...]]]:
    config = json.loads(config_json)
    template = build_state_dict(config, 0, torch.float32)
    numbered: dict[str, torch.Tensor] = {}
    names: list[str] = []
    for key, tensor in template.items():
        if not tensor.is_floating_point():
            numbered[key] = tensor
            continue
        index = len(names) + 1
        names.append(key)
        pattern = torch.arange(tensor.numel(), dtype=torch.float64) % _ID_STRIDE
        numbered[key] = (pattern + index * _ID_STRIDE).to(torch.float32).reshape(tensor.shape)
    with tempfile.TemporaryDirectory(prefix="train_tools_keymap_") as tmp:
        path = _save(numbered, Path(tmp) / "numbered.safetensors", {})
        model = load_parts(path)
    mapping: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {}
    for part, module in parts_of(model).items():
        for key, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            index = int(round(float(tensor.reshape(-1)[0]))) // _ID_STRIDE
            ldm_key = names[index - 1]
            if not torch.equal(numbered[ldm_key].reshape(-1), tensor.reshape(-1)):
                raise ValueError(f"{part}.{key} is not a reshaped copy of {ldm_key}")
            mapping[(part, key)] = (ldm_key, tuple(template[ldm_key].shape))
    missing = set(names) - {ldm for ldm, _ in mapping.values()}
    if missing:
        raise ValueError(f"the loader uses no tensor for {sorted(missing)[:3]}")
    return mapping


def export_state_dict(parts: dict[str, torch.nn.Module], config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The modules' weights under their LDM names (integer buffers such as ``position_ids`` from the template)."""
    config = config or TOY_CONFIG
    template = build_state_dict(config, 0, torch.float32)
    out = {k: v for k, v in template.items() if not v.is_floating_point()}
    for (part, key), (ldm_key, shape) in ldm_key_map(config).items():
        tensor = parts[part].state_dict()[key]
        out[ldm_key] = tensor.detach().to("cpu", torch.float32).reshape(shape).to(dtype).contiguous()
    return out


def save_checkpoint(parts: dict[str, torch.nn.Module], path: Path, metadata: dict[str, Any],
                    config: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> Path:
    state = export_state_dict(parts, config, dtype)
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return _save(state, Path(path), text)


def rescale_latents(vae, channel_mean: torch.Tensor, channel_std: torch.Tensor, scaling_factor: float) -> None:
    """Make ``latents * scaling_factor`` zero-mean with unit std per channel without changing what the VAE draws.

    The encoder's mean outputs become ``c * (mean - m)``, its log-variances shift by ``2 log c``, and the decoder's
    first layer undoes both (``z = z' / c + m``), with ``c = 1 / (scaling_factor * std)``."""
    c = 1.0 / (scaling_factor * channel_std.double())
    m = channel_mean.double()
    z = c.numel()
    with torch.no_grad():
        q = vae.quant_conv
        w, b = q.weight.double(), q.bias.double()
        w[:z] *= c.view(-1, 1, 1, 1)
        b[:z] = (b[:z] - m) * c
        b[z:] += 2 * torch.log(c)
        q.weight.copy_(w)
        q.bias.copy_(b)
        p = vae.post_quant_conv
        w, b = p.weight.double(), p.bias.double()
        b += (w[:, :, 0, 0] * m.view(1, -1)).sum(dim=1)
        w /= c.view(1, -1, 1, 1)
        p.weight.copy_(w)
        p.bias.copy_(b)


def write_webui_yaml(checkpoint: Path, webui_config: str, clip_dir: str, config: dict[str, Any] | None = None) -> Path:
    """``<checkpoint>.yaml`` for A1111 from its own ``configs/v1-inference.yaml`` text (``webui_config``) with the
    toy's sizes, its FrozenCLIPEmbedder pointed at ``clip_dir`` (a local CLIP text config + tokenizer folder, see
    ``write_clip_folder``: A1111 would otherwise fetch ``openai/clip-vit-large-patch14``)."""
    config = config or TOY_CONFIG
    text = webui_config
    unet, vae = config["unet"], config["vae"]

    def sub(pattern: str, replacement: str) -> None:
        nonlocal text
        text, count = re.subn(pattern, replacement, text, count=1)
        if count != 1:
            raise ValueError(f"the WebUI's v1-inference.yaml has no {pattern!r}")

    sub(r"model_channels: 320", f"model_channels: {unet['model_channels']}")
    sub(r"channel_mult: \[ 1, 2, 4, 4 \]", "channel_mult: [ " + ", ".join(map(str, unet["channel_mult"])) + " ]")
    if vae["num_res_blocks"] != 2:
        raise ValueError("the VAE's num_res_blocks is written as the WebUI's 2")
    sub(r"num_res_blocks: 2", f"num_res_blocks: {unet['num_res_blocks']}")  # the UNet's comes first
    sub(r"num_heads: 8", f"num_heads: {unet['num_heads']}")
    sub(r"context_dim: 768", f"context_dim: {unet['context_dim']}")
    sub(r"ch: 128", f"ch: {vae['ch']}")
    sub(r"ch_mult:\n(\s+)- 1\n\s+- 2\n\s+- 4\n\s+- 4",
        "ch_mult:\n" + "\n".join(r"\g<1>- " + str(m) for m in vae["ch_mult"]))
    sub(r"(target: ldm\.modules\.encoders\.modules\.FrozenCLIPEmbedder)\s*$",
        r"\g<1>\n      params:\n        version: " + json.dumps(str(clip_dir)) + "\n")
    yaml = Path(checkpoint).with_suffix(".yaml")
    yaml.write_text(text, encoding="utf-8")
    return yaml


def write_clip_folder(folder: Path, config: dict[str, Any] | None = None) -> Path:
    """A transformers CLIPTextModel config of the toy's text encoder and the CLIP tokenizer, for A1111's yaml."""
    from lib_trainer.trainer.tokenizer import load_clip_tokenizer

    te = (config or TOY_CONFIG)["text_encoders"][0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": te["width"],
        "intermediate_size": 4 * te["width"], "num_hidden_layers": te["layers"],
        "num_attention_heads": max(1, te["width"] // 64), "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": te["width"],
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
    }), encoding="utf-8")
    load_clip_tokenizer().save_pretrained(str(folder))
    return folder

