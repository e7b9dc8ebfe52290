"""Load a base model offline: a WebUI single-file checkpoint (LDM key layout) or a diffusers folder.

The architecture (sd1 / sd2 / sdxl) is read from the keys. The shipped diffusers configs in model_configs/
give everything the keys cannot tell (head counts, activation functions, VAE scaling); sizes are re-read from
the tensor shapes, so a real SD1.5 file and the tiny test models go through exactly the same path. The
conversion of the keys is diffusers' own single-file converter.

A single file is read part by part (UNet, VAE, each text encoder) into models built without weights: the shapes
come from the file's header, only one part's tensors are in memory at a time, and each is cast into its model
tensor by tensor, so loading needs little more memory than the models themselves (the whole fp16 file and the
fp32 models it becomes were in memory at once before).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lib_trainer.common.files import hash_file_into

CONFIG_DIR = Path(__file__).with_name("model_configs")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    arch: str  # "sd1" | "sd2" | "sdxl"
    unet: Any
    vae: Any
    text_encoders: list  # one (sd1/sd2) or two (sdxl)
    tokenizers: list
    scheduler_config: dict
    v_prediction: bool
    name: str
    model_hash: str  # sd-scripts' ss_sd_model_hash / WebUI-style short hash
    new_model_hash: str  # sha256 of the file (ss_new_sd_model_hash)
    source_keys: list = field(default_factory=list)


def set_attention(model: LoadedModel, attention: str) -> None:
    """The UNet's and the VAE's attention: "sdpa" is PyTorch's scaled_dot_product_attention (diffusers gives
    every attention layer its AttnProcessor2_0 whenever torch has it, so it is what a loaded model already has;
    on CUDA it picks the flash or memory-efficient kernels), "eager" the plain matmul-softmax-matmul (slower,
    more memory; for comparisons). The text encoders keep the attention their transformers version has."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention {attention!r}: use sdpa or eager")
    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    model.unet.set_attn_processor(processor())
    model.vae.set_attn_processor(processor())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError names neither the file nor the likely cause
            if not path.is_file():
                raise
            raise ModelLoadError(
                f"{path.name} is not a readable .safetensors file ({exc}); it may be incomplete or damaged: "
                "download it again or pick another checkpoint"
            ) from None
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return _load_pickle_checkpoint(path, mmap=False)
    raise ModelLoadError(f"{path.name}: unsupported checkpoint type {suffix!r}; use .safetensors or .ckpt")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    **({"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2} if hasattr(torch, "float8_e5m2") else {}),
}


class CheckpointParts:
    """A single-file checkpoint opened without reading its tensors.

    ``shapes`` maps every key to a tensor on the meta device (shape and dtype, no data) for the structure
    inference; ``part(prefix)`` reads the tensors of one part. A .safetensors file is read with plain reads at
    its header's offsets into memory of the process's own, which is given back as the tensors are cast into their
    models: safetensors' own reader maps the whole file, and every page once read stays resident (and counts) as
    long as the file is open. A .ckpt is memory-mapped (``torch.load(mmap=True)``; old pickles without it are read
    whole, as before), so its tensors borrow the file's pages and are copied before they are kept.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict] = {}
        self._data_offset = 0
        self._tensors: Optional[dict[str, torch.Tensor]] = None
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            from lib_trainer.common.safetensors_header import NotSafetensors, read_header

            try:
                header = read_header(path)
                self._entries = header.entries
                self._data_offset = header.data_offset
                self.shapes = {
                    k: torch.empty(e["shape"], dtype=_SAFETENSORS_DTYPES[e["dtype"]], device="meta")
                    for k, e in self._entries.items()
                }
            except (NotSafetensors, KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(
                    f"{path.name} is not a readable .safetensors file ({exc}); it may be incomplete or damaged: "
                    "download it again or pick another checkpoint"
                ) from None
            self.borrowed = False
        elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
            self._tensors = _load_pickle_checkpoint(path, mmap=True)
            self.shapes = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in self._tensors.items()}
            self.borrowed = True
        else:
            raise ModelLoadError(f"{path.name}: unsupported checkpoint type {suffix!r}; use .safetensors or .ckpt")

    def part_shapes(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.shapes.items() if k.startswith(prefix)}

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        keys = [k for k in self.shapes if k.startswith(prefix)]
        if self._tensors is not None:
            return {k: self._tensors[k] for k in keys}
        out: dict[str, torch.Tensor] = {}
        with open(self.path, "rb") as fh:
            for key in sorted(keys, key=lambda k: self._entries[k]["data_offsets"][0]):  # one forward pass
                out[key] = self._read(fh, key)
        return {k: out[k] for k in keys}

    def _read(self, fh, key: str) -> torch.Tensor:
        entry = self._entries[key]
        start, end = entry["data_offsets"]
        meta = self.shapes[key]
        if end - start != meta.numel() * meta.element_size():
            raise ModelLoadError(f"{self.path.name}: the size of {key} does not match its shape; the file is damaged")
        raw = torch.empty(end - start, dtype=torch.uint8)
        fh.seek(self._data_offset + start)
        if fh.readinto(memoryview(raw.numpy())) != end - start:
            raise ModelLoadError(
                f"{self.path.name} ends early (at {key}); it is incomplete: download it again or pick another checkpoint"
            )
        return raw.view(meta.dtype).reshape(meta.shape)  # safetensors stores little-endian, as torch does here

    def close(self) -> None:
        self._tensors = None

    def __enter__(self) -> "CheckpointParts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_pickle_checkpoint(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    def load(**kwargs):
        data = torch.load(str(path), map_location="cpu", weights_only=True, **kwargs)
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}

    try:
        if not mmap:
            return load()
        try:
            return load(mmap=True)
        except RuntimeError as exc:  # the legacy (pre-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return load()
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} cannot be read safely ({exc.__class__.__name__}: {exc}); "
            "convert it to .safetensors (the WebUI's checkpoint merger can) and try again"
        ) from None


def detect_arch(keys) -> str:
    keys = set(keys)
    if any(k.startswith(SDXL_TE2_PREFIX) for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in keys:
        return "sdxl"
    if any(k.startswith(SD2_TE_PREFIX) for k in keys):
        return "sd2"
    if any(k.startswith(SD1_TE_PREFIX) for k in keys):
        return "sd1"
    if any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelLoadError("the checkpoint has a UNet but no text encoder this trainer knows (SD1, SD2 or SDXL)")
    raise ModelLoadError(
        "this file is not a Stable Diffusion checkpoint (no model.diffusion_model.* keys); "
        "pick a base model from models/Stable-diffusion"
    )


def base_configs(arch: str) -> dict:
    return json.loads((CONFIG_DIR / f"{arch}.json").read_text(encoding="utf-8"))


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys for m in [rx.match(k)] if m})


def infer_unet_config(sd: dict, arch: str, base: dict) -> dict:
    p = UNET_PREFIX
    keys = [k for k in sd if k.startswith(p)]
    cfg = copy.deepcopy(base)
    ops = _indices(keys, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight")
    if not ops:
        raise ModelLoadError("cannot read the UNet's structure (no downsampling layers found)")
    lpb = ops[0] - 1
    levels = len(ops) + 1
    channels, has_attn, depth = [], [], []
    for level in range(levels):
        first = 1 + level * (lpb + 1)
        channels.append(int(sd[f"{p}input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        blocks = _indices(keys, re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.")
        has_attn.append(bool(blocks))
        depth.append(len(blocks))
    mid_depth = len(_indices(keys, re.escape(f"{p}middle_block.1.transformer_blocks.") + r"(\d+)\."))
    cfg["in_channels"] = int(sd[f"{p}input_blocks.0.0.weight"].shape[1])
    cfg["out_channels"] = int(sd[f"{p}out.2.weight"].shape[0])
    cfg["layers_per_block"] = lpb
    cfg["block_out_channels"] = channels
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    first_attn = next(i for i, a in enumerate(has_attn) if a)
    attn_prefix = f"{p}input_blocks.{1 + first_attn * (lpb + 1)}.1."
    cfg["cross_attention_dim"] = int(sd[attn_prefix + "transformer_blocks.0.attn2.to_k.weight"].shape[1])
    cfg["use_linear_projection"] = sd[attn_prefix + "proj_in.weight"].ndim == 2
    if arch == "sd1":
        cfg["attention_head_dim"] = 8  # SD1 has 8 heads everywhere (diffusers calls the head count head_dim)
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]  # SD2/SDXL: 64 channels per head
    if arch == "sdxl":
        # diffusers takes the middle block's depth from the last level
        cfg["transformer_layers_per_block"] = [d if d else 1 for d in depth[:-1]] + [mid_depth]
        adm_in = int(sd[f"{p}label_emb.0.0.weight"].shape[1])
        pooled = int(sd[SDXL_TE2_PREFIX + "text_projection"].shape[1])
        cfg["projection_class_embeddings_input_dim"] = adm_in
        cfg["addition_time_embed_dim"] = (adm_in - pooled) // 6
    return cfg


def infer_vae_config(sd: dict, base: dict) -> dict:
    p = VAE_PREFIX
    keys = [k for k in sd if k.startswith(p)]
    cfg = copy.deepcopy(base)
    levels = _indices(keys, re.escape(p) + r"encoder\.down\.(\d+)\.")
    blocks = _indices(keys, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")
    if not levels or not blocks:
        raise ModelLoadError("the checkpoint has no VAE (first_stage_model.*); use a checkpoint with a baked-in VAE")
    cfg["block_out_channels"] = [int(sd[f"{p}encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["layers_per_block"] = len(blocks)
    cfg["latent_channels"] = int(sd[f"{p}decoder.conv_in.weight"].shape[1])
    cfg["in_channels"] = int(sd[f"{p}encoder.conv_in.weight"].shape[1])
    cfg["out_channels"] = int(sd[f"{p}decoder.conv_out.weight"].shape[0])
    return cfg


def _clip_config(base: dict, hidden: int, layers: int, intermediate: int, vocab: int, positions: int, projection: Optional[int]):
    from transformers import CLIPTextConfig

    values = {k: v for k, v in base.items() if k not in ("architectures", "_comment")}
    values.update(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate, vocab_size=vocab,
        max_position_embeddings=positions, num_attention_heads=max(1, hidden // 64),  # CLIP: 64 channels per head
    )
    if projection is not None:
        values["projection_dim"] = projection
    return CLIPTextConfig(**values)


def empty_model(build):
    """``build()`` with its parameters on the meta device (no memory, no random init); buffers are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _load_into(model, state: dict, what: str, copy: bool = False):
    """Give an empty model (see empty_model) the tensors of ``state``, each cast to the dtype the model declares.

    ``state`` is emptied as it goes, so a part's source tensors are freed one by one while their casts are made
    (peak: the part in its model's dtype, not the part twice). ``copy`` copies tensors that need no cast too (ones
    that borrow a memory-mapped file)."""
    own = model.state_dict()
    # position_ids is a buffer some transformers versions keep in the state dict and others not
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in own and not k.endswith("position_ids")]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"the {what} of this checkpoint does not match its detected architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]}); is the file complete?"
        )
    cast: dict[str, torch.Tensor] = {}
    for key in list(state):
        tensor = state.pop(key)
        if key not in own:
            continue
        target = own[key].dtype
        if copy and tensor.dtype == target:
            cast[key] = tensor.clone(memory_format=torch.contiguous_format)
        else:
            cast[key] = tensor.to(dtype=target, memory_format=torch.contiguous_format)
        del tensor
    model.load_state_dict(cast, strict=False, assign=True)
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise ModelLoadError(f"the {what} of this checkpoint has no weights for {empty[:3]}; is the file complete?")
    return model


def _hf_clip_te(ckpt: CheckpointParts, prefix: str, base: dict, with_projection: bool):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    shapes = convert_ldm_clip_checkpoint(ckpt.part_shapes(prefix), remove_prefix=prefix)
    emb = shapes["text_model.embeddings.token_embedding.weight"]
    layers = len(_indices(shapes, r"text_model\.encoder\.layers\.(\d+)\."))
    cfg = _clip_config(
        base, int(emb.shape[1]), layers, int(shapes["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        int(emb.shape[0]), int(shapes["text_model.embeddings.position_embedding.weight"].shape[0]), None,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = empty_model(lambda: cls(cfg))
    state = convert_ldm_clip_checkpoint(ckpt.part(prefix), remove_prefix=prefix)
    return _load_into(model, state, "text encoder", copy=ckpt.borrowed)


def _open_clip_te(ckpt: CheckpointParts, prefix: str, base: dict, drop_last_layer: bool, with_projection: bool):
    """OpenCLIP (SD2, SDXL's second encoder). SD2 is used up to its penultimate layer, like the WebUI does."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sub = ckpt.part_shapes(prefix)
    n_layers = len(_indices(sub, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\."))
    hidden = int(sub[prefix + "token_embedding.weight"].shape[1])
    layers = n_layers - 1 if drop_last_layer else n_layers
    cfg = _clip_config(
        base, hidden, layers, int(sub[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        int(sub[prefix + "token_embedding.weight"].shape[0]), int(sub[prefix + "positional_embedding"].shape[0]),
        int(sub[prefix + "text_projection"].shape[1]) if prefix + "text_projection" in sub else None,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = empty_model(lambda: cls(cfg))
    state = convert_open_clip_checkpoint(model, ckpt.part(prefix), prefix=prefix)
    for key in [k for k in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)) and int(m.group(1)) >= layers]:
        del state[key]
    if not with_projection:
        state.pop("text_projection.weight", None)
    return _load_into(model, state, "text encoder", copy=ckpt.borrowed)


def file_hashes(path: Path) -> tuple[str, str]:
    """(legacy short hash as sd-scripts' ss_sd_model_hash, full sha256 as ss_new_sd_model_hash)."""
    sha = hashlib.sha256()
    legacy = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        legacy.update(fh.read(0x10000))
    hash_file_into(sha, path)
    return legacy.hexdigest()[:8], sha.hexdigest()


def load_single_file(path: Path, v_prediction: Optional[bool] = None) -> LoadedModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from .tokenizer import load_clip_tokenizer

    with CheckpointParts(path) as ckpt:
        shapes = ckpt.shapes
        arch = detect_arch(shapes.keys())
        base = base_configs(arch)

        unet_cfg = infer_unet_config(shapes, arch, base["unet"])
        unet = empty_model(lambda: UNet2DConditionModel.from_config(unet_cfg))
        _load_into(unet, convert_ldm_unet_checkpoint(ckpt.part(UNET_PREFIX), unet.config), "UNet", copy=ckpt.borrowed)

        vae_cfg = infer_vae_config(shapes, base["vae"])
        vae = empty_model(lambda: AutoencoderKL.from_config(vae_cfg))
        _load_into(vae, convert_ldm_vae_checkpoint(ckpt.part(VAE_PREFIX), vae.config), "VAE", copy=ckpt.borrowed)

        if arch == "sd1":
            tes = [_hf_clip_te(ckpt, SD1_TE_PREFIX, base["text_encoder"], with_projection=False)]
            toks = [load_clip_tokenizer(base["tokenizer"]["pad_token"])]
        elif arch == "sd2":
            tes = [_open_clip_te(ckpt, SD2_TE_PREFIX, base["text_encoder"], drop_last_layer=True, with_projection=False)]
            toks = [load_clip_tokenizer(base["tokenizer"]["pad_token"])]
        else:
            tes = [
                _hf_clip_te(ckpt, SDXL_TE1_PREFIX, base["text_encoder"], with_projection=False),
                _open_clip_te(ckpt, SDXL_TE2_PREFIX, base["text_encoder_2"], drop_last_layer=False, with_projection=True),
            ]
            toks = [load_clip_tokenizer(base["tokenizer"]["pad_token"]), load_clip_tokenizer(base["tokenizer_2"]["pad_token"])]

        if v_prediction is None:
            v_prediction = "v_pred" in shapes  # some v-prediction checkpoints carry this marker key
        keys = list(shapes.keys())
    legacy, full = file_hashes(path)
    return LoadedModel(
        arch=arch, unet=unet, vae=vae, text_encoders=tes, tokenizers=toks,
        scheduler_config=dict(base["scheduler"]), v_prediction=bool(v_prediction), name=path.name,
        model_hash=legacy, new_model_hash=full, source_keys=keys,
    )


def load_diffusers_folder(path: Path, v_prediction: Optional[bool] = None) -> LoadedModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if not (path / "unet").is_dir() or not (path / "vae").is_dir():
        raise ModelLoadError(f"{path} is a folder but not a diffusers model (no unet/ and vae/ inside)")

    def part(cls, name: str):
        kwargs: dict = {}
        if cls is not CLIPTokenizer:
            weights = [f.name for f in (path / name).glob("*.safetensors")]
            if not weights:  # .bin weights are pickles, which old torch versions unpickle unchecked (like .ckpt)
                raise ModelLoadError(
                    f"{path.name}/{name} has no .safetensors weights; only safetensors are read from diffusers "
                    "folders (pickled .bin files can run code): convert the folder or pick a single-file checkpoint"
                )
            kwargs["use_safetensors"] = True
            if all(w.endswith(".fp16.safetensors") for w in weights):  # a folder of fp16 "variant" files only
                kwargs["variant"] = "fp16"
        try:
            return cls.from_pretrained(path / name, local_files_only=True, **kwargs)
        except Exception as exc:  # a missing config, a half-copied file: name the part, not a hub id
            raise ModelLoadError(
                f"{path.name}/{name} cannot be loaded ({exc.__class__.__name__}: {str(exc)[:300]}); the diffusers "
                "folder is incomplete or damaged: copy it again or pick a single-file checkpoint"
            ) from None

    unet = part(UNet2DConditionModel, "unet")
    vae = part(AutoencoderKL, "vae")
    tes = [part(CLIPTextModel, "text_encoder")]
    # SD2's text encoder is OpenCLIP's (gelu), SD1's is OpenAI's CLIP (quick_gelu)
    arch = "sdxl" if (path / "text_encoder_2").is_dir() else ("sd2" if tes[0].config.hidden_act == "gelu" else "sd1")
    toks = [part(CLIPTokenizer, "tokenizer")]
    if arch == "sdxl":
        tes.append(part(CLIPTextModelWithProjection, "text_encoder_2"))
        toks.append(part(CLIPTokenizer, "tokenizer_2"))
    sched_path = path / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text()) if sched_path.is_file() else base_configs(arch)["scheduler"]
    if v_prediction is None:
        v_prediction = sched.get("prediction_type") == "v_prediction"
    digest = folder_hash(path, ["unet", "vae", "text_encoder", "text_encoder_2"])
    return LoadedModel(
        arch=arch, unet=unet, vae=vae, text_encoders=tes, tokenizers=toks, scheduler_config=sched,
        v_prediction=bool(v_prediction), name=path.name, model_hash=digest[:8], new_model_hash=digest,
    )


def folder_hash(path: Path, parts: list[str]) -> str:
    """sha256 over the weight files of a diffusers folder's parts (names and bytes), wherever the folder lies."""
    sha = hashlib.sha256()
    for part in parts:
        for file in sorted((path / part).glob("*")) if (path / part).is_dir() else []:
            if file.suffix not in (".safetensors", ".bin"):
                continue
            sha.update(f"{part}/{file.name}\0".encode())
            hash_file_into(sha, file)
    return sha.hexdigest()


def load_model(path_or_name: str, v_prediction: Optional[bool] = None) -> LoadedModel:
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return load_diffusers_folder(path, v_prediction)
    if path.is_file():
        return load_single_file(path, v_prediction)
    raise ModelLoadError(
        f"base model {path_or_name!r} not found; pick a checkpoint that exists "
        "(models are never downloaded: give a file path or a local diffusers folder)"
    )
