"""Recognise the FLUX.1 files Forge and ComfyUI users have, from their safetensors header alone, and read them.

The layouts (key names as Black Forest Labs, Forge's loader, ComfyUI and sd-scripts' ``flux_utils`` use them):

- transformer-only (``flux1-dev.safetensors``, ``flux1-schnell.safetensors``, ``*-fp8-e4m3fn``): BFL keys,
  ``double_blocks.N.img_attn.qkv.weight``, ``single_blocks.N.linear1.weight``, ``img_in``, ``txt_in``, ``time_in``,
  ``vector_in``, ``final_layer``; dev also has ``guidance_in.*`` (its guidance-distillation input), schnell not.
  Some files carry the same keys under ``model.diffusion_model.``; a diffusers transformer saved as one file has
  ``transformer_blocks.N.attn.to_q.weight`` and ``time_text_embed.guidance_embedder.*`` instead.
- all-in-one (ComfyUI's and Forge's checkpoint save, e.g. ``flux1-dev-fp8.safetensors`` of Comfy-Org):
  ``model.diffusion_model.*`` + ``vae.*`` (BFL AE keys) + ``text_encoders.clip_l.transformer.text_model.*`` +
  ``text_encoders.t5xxl.transformer.{encoder.*,shared.weight}``.
- ``ae.safetensors`` (models/VAE): BFL AE keys (``encoder.down.N.block.M.*``, no quant convs), 16 latent channels.
- ``clip_l.safetensors`` (models/text_encoder): transformers ``CLIPTextModel`` keys (``text_model.*``).
- ``t5xxl_fp16.safetensors`` / ``t5xxl_fp8_e4m3fn.safetensors``: transformers ``T5EncoderModel`` keys
  (``encoder.block.N.layer.*``, ``shared.weight``), fp16 or fp8 storage; ComfyUI's ``*_scaled`` files keep a
  ``scaled_fp8`` marker and a ``<layer>.scale_weight`` per fp8 weight (weight = fp8 value x scale).
- refused as not FLUX.1 dev/schnell, from the header: FLUX.1 Fill / Depth / Canny (``img_in`` takes 384 or 128
  channels instead of 64) and Chroma (schnell-derived, ``distilled_guidance_layer.*`` instead of the blocks'
  modulation layers; Forge loads it as a Flux model).
- refused: bitsandbytes NF4/FP4 files (Forge's ``flux1-dev-bnb-nf4*``: ``<weight>.absmax``, ``.quant_map``,
  ``.quant_state.bitsandbytes__nf4``) and GGUF files (``*.gguf``, magic ``GGUF``): 4-bit weights cannot be trained.

Standard library only for the inspection (the tab lists models with it); tensors are read with plain reads at the
header's offsets (torch only).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional, Union

from lib_trainer.common.safetensors_header import NotSafetensors, read_header

PathLike = Union[str, "os.PathLike[str]"]

BFL_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"
DIFFUSERS_MARKER = "transformer_blocks.0.attn.norm_added_k.weight"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
SCALED_FP8_MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".scale_input")
FLUX_LATENT_CHANNELS = 16
FLUX_IN_CHANNELS = 4 * FLUX_LATENT_CHANNELS  # 2x2 patches of the 16 latent channels
CHROMA_MARKER = "distilled_guidance_layer."
FLUX_SUFFIXES = (".safetensors", ".sft")

# What someone who picked a quantized file should pick instead.
_FULL_FILES = {
    "dev": "flux1-dev.safetensors (bf16) or flux1-dev-fp8-e4m3fn.safetensors (fp8)",
    "schnell": "flux1-schnell.safetensors (bf16) or flux1-schnell-fp8-e4m3fn.safetensors (fp8)",
    None: "flux1-dev.safetensors / flux1-schnell.safetensors (bf16) or their fp8-e4m3fn versions",
}
_T5_FILES = "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors"
_BNB_MARKERS = ("bitsandbytes__nf4", "bitsandbytes__fp4")
_BNB_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")


class FluxFileError(RuntimeError):
    """A Flux file that cannot be used; the message names the file and what to use instead."""


@dataclass(frozen=True)
class FluxFileInfo:
    path: Path
    kind: str                      # "flux" (has a transformer) | "ae" | "clip_l" | "t5xxl" | "other"
    variant: Optional[str] = None  # "dev" | "schnell" for kind "flux"
    layout: str = ""               # transformer: "bfl" | "diffusers"; ae: "bfl" | "diffusers"
    transformer_prefix: str = ""   # "" or "model.diffusion_model."
    parts: tuple = ()              # what the file holds: of "transformer", "ae", "clip_l", "t5xxl"
    storage_dtype: str = ""        # the safetensors dtype most weights have: "BF16", "F16", "F8_E4M3", ...
    scaled_fp8: bool = False       # ComfyUI's scaled fp8: weights need their .scale_weight
    quantization: Optional[str] = None  # "nf4" | "fp4" | "bnb" | "gguf": refused
    num_double_blocks: int = 0
    num_single_blocks: int = 0
    hidden_size: int = 0
    in_channels: int = 0           # the transformer's input width: 64 for dev/schnell, 384 Fill, 128 Depth/Canny
    derived: Optional[str] = None  # "chroma" | "fill" | "control" (Depth, Canny): not trainable here
    dtype_counts: dict = field(default_factory=dict, compare=False)

    @property
    def is_quantized(self) -> bool:
        return self.quantization is not None


def _major_dtype(entries: dict, keys: Iterable[str]) -> tuple[str, dict]:
    counts: dict[str, int] = {}
    for key in keys:
        dtype = entries[key].get("dtype", "")
        counts[dtype] = counts.get(dtype, 0) + 1
    major = max(counts, key=counts.get) if counts else ""
    return major, counts


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys for m in [rx.match(k)] if m})


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _bnb_kind(keys: Iterable[str]) -> Optional[str]:
    kind = None
    for key in keys:
        if _BNB_MARKERS[0] in key:
            return "nf4"
        if _BNB_MARKERS[1] in key:
            return "fp4"
        if key.endswith(_BNB_SUFFIXES):
            kind = "bnb"
    return kind


def _transformer_prefix(keys: set) -> Optional[tuple[str, str]]:
    for prefix in ("", UNET_PREFIX):
        if prefix + BFL_MARKER in keys:
            return prefix, "bfl"
        if prefix + DIFFUSERS_MARKER in keys:
            return prefix, "diffusers"
    return None


# A diffusers folder (black-forest-labs/FLUX.1-dev as huggingface_hub downloads it): part -> subfolder.
FOLDER_PARTS = {"transformer": "transformer", "ae": "vae", "clip_l": "text_encoder", "t5xxl": "text_encoder_2"}


def folder_weight_files(folder: PathLike) -> list[Path]:
    """The .safetensors shards of one part of a diffusers folder; ``*.fp16.safetensors`` variant files only when
    the folder has nothing else."""
    files = sorted(Path(folder).glob("*.safetensors"))
    plain = [f for f in files if not f.name.endswith(".fp16.safetensors")]
    return plain or files


def _folder_entries(folder: Path) -> dict:
    entries: dict = {}
    for shard in folder_weight_files(folder):
        entries.update(read_header(shard).entries)
    return entries


def inspect_file(path: PathLike) -> FluxFileInfo:
    """What a file (or a diffusers folder) is, from its headers (no tensor is read). Raises OSError when it
    cannot be read."""
    path = Path(path)
    if path.is_dir():
        return _inspect_folder(path)
    if path.suffix.lower() == ".gguf" or _is_gguf(path):
        return FluxFileInfo(path=path, kind="flux", quantization="gguf")
    try:
        header = read_header(path)
    except NotSafetensors:
        return FluxFileInfo(path=path, kind="other")
    return _inspect_entries(path, header.entries)


def _inspect_folder(path: Path) -> FluxFileInfo:
    try:
        entries = _folder_entries(path / FOLDER_PARTS["transformer"])
    except NotSafetensors:
        entries = {}
    if DIFFUSERS_MARKER not in entries:
        return FluxFileInfo(path=path, kind="other")
    info = _inspect_entries(path, entries)
    parts = tuple(part for part, sub in FOLDER_PARTS.items() if folder_weight_files(path / sub))
    return replace(info, parts=parts)


def _inspect_entries(path: Path, entries: dict) -> FluxFileInfo:
    keys = set(entries)
    quantization = _bnb_kind(keys)
    scaled = SCALED_FP8_MARKER in keys

    found = _transformer_prefix(keys)
    if found is not None:
        prefix, layout = found
        tkeys = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        if layout == "bfl":
            dev = "guidance_in.in_layer.weight" in tkeys or "guidance_in.in_layer.weight.absmax" in tkeys
            doubles = _indices(tkeys, r"double_blocks\.(\d+)\.")
            singles = _indices(tkeys, r"single_blocks\.(\d+)\.")
            hidden_key = prefix + "img_in.weight"
            derived = "chroma" if any(k.startswith(CHROMA_MARKER) for k in tkeys) else None
        else:
            dev = "time_text_embed.guidance_embedder.linear_1.weight" in tkeys
            doubles = _indices(tkeys, r"transformer_blocks\.(\d+)\.")
            singles = _indices(tkeys, r"single_transformer_blocks\.(\d+)\.")
            hidden_key = prefix + "x_embedder.weight"
            derived = "chroma" if any(k.startswith(CHROMA_MARKER) for k in tkeys) else None
        shape = entries.get(hidden_key, {}).get("shape") or [0, 0]
        in_channels = int(shape[1]) if len(shape) > 1 else 0
        if derived is None and quantization is None and in_channels and in_channels != FLUX_IN_CHANNELS:
            derived = "fill" if in_channels == 6 * FLUX_IN_CHANNELS else "control"
        parts = ["transformer"]
        if any(k.startswith(VAE_PREFIX) for k in keys):
            parts.append("ae")
        if CLIP_L_PREFIX + "text_model.final_layer_norm.weight" in keys:
            parts.append("clip_l")
        if T5_PREFIX + "encoder.final_layer_norm.weight" in keys:
            parts.append("t5xxl")
        weights = [k for k in keys if k.startswith(prefix) and k.endswith(".weight")]
        major, counts = _major_dtype(entries, weights)
        return FluxFileInfo(
            path=path, kind="flux", variant="dev" if dev else "schnell", layout=layout, transformer_prefix=prefix,
            parts=tuple(parts), storage_dtype=major, scaled_fp8=scaled, quantization=quantization,
            num_double_blocks=len(doubles), num_single_blocks=len(singles), hidden_size=int(shape[0]),
            in_channels=in_channels, derived=derived, dtype_counts=counts,
        )

    major, counts = _major_dtype(entries, [k for k in keys if k.endswith(".weight")])
    common = dict(path=path, storage_dtype=major, scaled_fp8=scaled, quantization=quantization, dtype_counts=counts)
    if "decoder.conv_in.weight" in keys and "encoder.conv_in.weight" in keys:
        layout = "diffusers" if "decoder.up_blocks.0.resnets.0.norm1.weight" in keys else "bfl"
        latent = (entries["decoder.conv_in.weight"].get("shape") or [0, 0])[1]
        if latent != FLUX_LATENT_CHANNELS:  # a Stable Diffusion VAE (4 channels) beside the AE in models/VAE
            return FluxFileInfo(kind="other", layout=layout, **common)
        return FluxFileInfo(kind="ae", layout=layout, parts=("ae",), **common)
    if "text_model.final_layer_norm.weight" in keys or CLIP_L_PREFIX + "text_model.final_layer_norm.weight" in keys:
        return FluxFileInfo(kind="clip_l", parts=("clip_l",), **common)
    if "encoder.final_layer_norm.weight" in keys or T5_PREFIX + "encoder.final_layer_norm.weight" in keys:
        return FluxFileInfo(kind="t5xxl", parts=("t5xxl",), **common)
    return FluxFileInfo(kind="other", **common)


def is_flux_checkpoint(keys: Iterable[str]) -> bool:
    """True for the keys of a Flux transformer (BFL or diffusers names, with or without model.diffusion_model.)."""
    return _transformer_prefix(set(keys)) is not None


def refuse_quantized(info: FluxFileInfo) -> None:
    """FluxFileError for a quantized file, naming the file to use instead; nothing for any other file."""
    if not info.is_quantized:
        return
    name = info.path.name
    kind = {"nf4": "4-bit NF4 (bitsandbytes)", "fp4": "4-bit FP4 (bitsandbytes)", "bnb": "bitsandbytes-quantized",
            "gguf": "GGUF-quantized"}[info.quantization]
    if info.kind == "t5xxl" or (info.kind == "flux" and info.quantization == "gguf" and "t5" in name.lower()):
        instead = _T5_FILES
    else:
        instead = _FULL_FILES[info.variant]
    raise FluxFileError(
        f"{name} is a {kind} model: its weights cannot be trained or read back at full precision. "
        f"Pick the file it was made from instead: {instead} (an fp8 base is trained in fp8 with fp8_base = true)"
    )


_DERIVED = {
    "chroma": "a Chroma model (derived from FLUX.1-schnell, with other modulation layers)",
    "fill": "FLUX.1 Fill (inpainting: its input has the masked picture as extra channels)",
    "control": "a FLUX.1 Depth / Canny model (its input has the control picture as extra channels)",
}


def refuse_derived(info: FluxFileInfo) -> None:
    """FluxFileError for Chroma and the FLUX.1 tools (Fill, Depth, Canny): LoRAs here are for dev and schnell."""
    if info.derived is None:
        return
    raise FluxFileError(
        f"{info.path.name} is {_DERIVED[info.derived]}; FLUX.1 LoRAs are trained on FLUX.1-dev or FLUX.1-schnell: "
        f"pick {_FULL_FILES[None]}"
    )


ENCODER_PARTS = ("ae", "clip_l", "t5xxl")


def assign_parts(paths: Iterable[PathLike]) -> dict[str, Path]:
    """Which of the files Forge's "VAE / Text Encoder" selector holds is the AE, CLIP-L and T5 (its list does not
    say): part -> path, from each file's header. FluxFileError for a file that is none of them (an SD VAE, a
    quantized T5: named with what to pick) and for two files of one part."""
    found: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        info = inspect_file(path)
        refuse_quantized(info)
        if info.kind not in ENCODER_PARTS:
            raise FluxFileError(
                f"{path.name} is not a FLUX.1 AE or text encoder; the VAE / Text Encoder selection takes "
                f"ae.safetensors, clip_l.safetensors and {_T5_FILES}"
            )
        if info.kind in found:
            raise FluxFileError(f"{found[info.kind].name} and {path.name} are both {info.kind}; keep one of them")
        found[info.kind] = path
    return found


def check_part(info: FluxFileInfo, part: str) -> None:
    """FluxFileError unless ``info``'s file can provide ``part`` ("transformer", "ae", "clip_l", "t5xxl")."""
    refuse_quantized(info)
    if part == "transformer":
        refuse_derived(info)
    if part in info.parts:
        if part == "transformer" and info.kind == "flux" and info.layout == "bfl" and info.num_single_blocks == 0:
            raise FluxFileError(f"{info.path.name} has no single_blocks: it is not a complete FLUX.1 transformer")
        return
    wanted = {"transformer": "a FLUX.1 model (models/Stable-diffusion or models/unet)",
              "ae": "the FLUX.1 AE (ae.safetensors in models/VAE)",
              "clip_l": "CLIP-L (clip_l.safetensors in models/text_encoder)",
              "t5xxl": f"T5-XXL ({_T5_FILES} in models/text_encoder)"}[part]
    what = {"flux": "a FLUX.1 transformer without it", "ae": "an AE", "clip_l": "a CLIP-L text encoder",
            "t5xxl": "a T5 text encoder", "other": "not a FLUX.1 file"}[info.kind]
    raise FluxFileError(f"{info.path.name} is {what}; {part} must come from {wanted}")


# ---------------------------------------------------------------------------------------------- reading tensors

def _is_fp8(tensor) -> bool:
    import torch

    return tensor.dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None))


def _torch_dtypes() -> dict:
    import torch

    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
             "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
             "BOOL": "bool"}
    return {code: getattr(torch, name) for code, name in names.items() if hasattr(torch, name)}


def _iter_tensors(path: Path, keys: list[str], header):
    """(key, tensor) for ``keys`` in file order, each read with a plain read at the header's offsets into memory
    of its own: safetensors' reader maps the file, and every page it touched stays resident while it is open (a
    17 GB all-in-one file would count whole, on top of the converted weights)."""
    import torch

    dtypes = _torch_dtypes()
    entries = header.entries
    with open(path, "rb") as fh:
        for key in sorted(keys, key=lambda k: entries[k]["data_offsets"][0]):
            entry = entries[key]
            dtype = dtypes.get(entry["dtype"])
            if dtype is None:
                raise FluxFileError(f"{path.name}: {key} has the dtype {entry['dtype']}, which cannot be read here")
            start, end = entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
            raw = torch.empty(end - start, dtype=torch.uint8)
            fh.seek(header.data_offset + start)
            if fh.readinto(memoryview(raw.numpy())) != end - start:
                raise FluxFileError(f"{path.name} ends early (at {key}): it is incomplete; download it again")
            tensor = raw.view(dtype).reshape(shape)  # safetensors stores little-endian, as torch does here
            yield key, tensor


def read_part(path: PathLike, prefix: str = "", dtype=None, keep_fp8: bool = False) -> dict:
    """The tensors under ``prefix`` (stripped), one at a time from the file (an all-in-one file is never read whole).

    Floating tensors become ``dtype`` as each is read (None keeps the file's). fp8 weights are upcast per tensor
    (to ``dtype``, bf16 when None; multiplied by their ``.scale_weight`` in ComfyUI's scaled files) unless
    ``keep_fp8`` (an fp8 base kept in fp8)."""
    import torch

    path = Path(path)
    if path.is_dir():  # one part of a diffusers folder: its shards together
        shards = folder_weight_files(path)
        if not shards:
            raise FluxFileError(f"{path} has no .safetensors weights (.bin pickles are not read); download them")
        merged: dict = {}
        for shard in shards:
            merged.update(read_part(shard, prefix, dtype, keep_fp8))
        return merged
    try:
        header = read_header(path)
    except NotSafetensors as exc:
        raise FluxFileError(f"{path.name} is not a readable .safetensors file ({exc}); download it again") from None
    names = [k for k in header.entries if k.startswith(prefix)]
    scale_keys = [k for k in names if k.endswith(".scale_weight")]
    scales = dict(_iter_tensors(path, scale_keys, header)) if not keep_fp8 else {}
    wanted = [k for k in names if not k.endswith(SCALE_SUFFIXES) and k[len(prefix):] != SCALED_FP8_MARKER]
    out: dict = {}
    for key, tensor in _iter_tensors(path, wanted, header):
        if _is_fp8(tensor) and not keep_fp8:
            target = dtype or torch.bfloat16
            tensor = tensor.to(target)
            scale = scales.get(key[: -len(".weight")] + ".scale_weight") if key.endswith(".weight") else None
            if scale is not None:
                tensor = tensor * scale.to(target)
        elif dtype is not None and tensor.is_floating_point() and not _is_fp8(tensor):
            tensor = tensor.to(dtype)
        out[key[len(prefix):]] = tensor
    return out
