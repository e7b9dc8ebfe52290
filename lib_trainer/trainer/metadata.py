"""Metadata written into every LoRA file: sd-scripts' ``ss_*`` keys and Stability's ``modelspec.*`` keys.

The WebUI's Lora cards and Civitai read these (training tags, base model, resolution, clip skip ...).
Every value is a string, as the safetensors format requires.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Optional

import torch

from .schema import TrainConfig

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def modelspec_architecture(arch: str, v_prediction: bool) -> str:
    if arch == "sd1":
        base = "stable-diffusion-v1"
    elif arch == "sd2":
        base = "stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512"
    else:
        base = "stable-diffusion-xl-v1-base"
    return base + "/lora"


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """sd-scripts' sshs_model_hash (sha256 of the tensor bytes after the header) and sshs_legacy_hash."""
    from safetensors.torch import save

    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header_len:]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def _s(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def build_metadata(
    cfg: TrainConfig,
    *,
    arch: str,
    v_prediction: bool,
    model_name: str,
    model_hash: str,
    new_model_hash: str,
    session_id: int,
    started_at: float,
    num_train_images: int,
    num_reg_images: int,
    batches_per_epoch: int,
    epochs: int,
    max_train_steps: int,
    dataset_dirs: dict,
    reg_dataset_dirs: dict,
    tag_frequency: dict,
    bucket_info: Optional[dict],
    optimizer_desc: str,
    mixed_precision: str,
    lr_scheduler: str,
    lr_warmup_steps: int,
    learning_rates_used: bool,
    bucket_no_upscale: bool,
    network_args: dict[str, str],
    train_unet: bool,
    train_text_encoder: bool,
) -> dict[str, str]:
    """The metadata of what was trained: where the trainer did otherwise than a key asks (a warning says so),
    the values are those used, e.g. ``lr_scheduler`` and ``mixed_precision`` as the run used them,
    ``learning_rates_used`` False for an optimizer that sets its own step size (recorded as None, as sd-scripts
    does)."""
    w, h = cfg.resolution_wh
    md: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": cfg.output_name,
        "ss_learning_rate": cfg.learning_rate if learning_rates_used else None,
        "ss_text_encoder_lr": (cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate)
        if learning_rates_used else None,
        "ss_unet_lr": (cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate) if learning_rates_used else None,
        "ss_num_train_images": num_train_images,
        "ss_num_reg_images": num_reg_images,
        "ss_num_batches_per_epoch": batches_per_epoch,
        "ss_num_epochs": epochs,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "ss_max_train_steps": max_train_steps,
        "ss_lr_warmup_steps": lr_warmup_steps,
        "ss_lr_scheduler": lr_scheduler,
        "ss_network_module": cfg.network_module,
        "ss_network_dim": cfg.network_dim,
        "ss_network_alpha": cfg.network_alpha,
        "ss_network_args": network_args,
        "ss_network_train_unet_only": train_unet and not train_text_encoder,
        "ss_network_train_text_encoder_only": train_text_encoder and not train_unet,
        "ss_mixed_precision": mixed_precision,  # "no" where fp16/bf16 needed a GPU that was not there
        "ss_full_fp16": False,  # the network always trains in fp32 (full_fp16 / full_bf16 get a warning)
        "ss_v2": arch == "sd2",
        "ss_v_parameterization": v_prediction,
        "ss_base_model_version": BASE_MODEL_VERSION[arch],
        "ss_clip_skip": cfg.clip_skip,
        "ss_max_token_length": cfg.max_token_length,
        "ss_cache_latents": cfg.cache_latents,
        "ss_seed": cfg.seed,
        "ss_noise_offset": cfg.noise_offset,
        "ss_min_snr_gamma": cfg.min_snr_gamma,
        "ss_training_comment": cfg.training_comment,
        "ss_optimizer": optimizer_desc,
        "ss_max_grad_norm": cfg.max_grad_norm,
        "ss_caption_dropout_rate": cfg.caption_dropout_rate,
        "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout_rate,
        "ss_prior_loss_weight": cfg.prior_loss_weight,
        "ss_min_timestep": cfg.min_timestep,
        "ss_max_timestep": cfg.max_timestep,
        "ss_batch_size_per_device": cfg.train_batch_size,
        "ss_total_batch_size": cfg.train_batch_size * cfg.gradient_accumulation_steps,
        "ss_resolution": f"({w}, {h})",
        "ss_enable_bucket": cfg.enable_bucket,
        "ss_min_bucket_reso": cfg.min_bucket_reso,
        "ss_max_bucket_reso": cfg.max_bucket_reso,
        "ss_bucket_no_upscale": bucket_no_upscale,
        "ss_keep_tokens": cfg.keep_tokens,
        "ss_shuffle_caption": cfg.shuffle_caption,
        "ss_flip_aug": cfg.flip_aug,
        "ss_color_aug": False,
        "ss_dataset_dirs": dataset_dirs,
        "ss_reg_dataset_dirs": reg_dataset_dirs,
        "ss_tag_frequency": tag_frequency,
        "ss_sd_model_name": model_name,
        "ss_sd_model_hash": model_hash,
        "ss_new_sd_model_hash": new_model_hash,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(arch, v_prediction),
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if arch == "sdxl" else "diffusers"
        ),
        "modelspec.title": cfg.output_name,
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
    }
    if bucket_info is not None:
        md["ss_bucket_info"] = bucket_info
    if cfg.clip_skip is not None:
        md["modelspec.encoder_layer"] = cfg.clip_skip
    if cfg.training_comment:
        md["modelspec.description"] = cfg.training_comment
    return {k: _s(v) for k, v in md.items()}


def finalize_metadata(
    base: dict[str, str], tensors: dict[str, torch.Tensor], *, epoch: int, step: int, finished: bool
) -> dict[str, str]:
    md = dict(base)
    md["ss_epoch"] = str(epoch)
    md["ss_steps"] = str(step)
    md["ss_training_finished_at"] = str(time.time()) if finished else "None"
    md["sshs_model_hash"], md["sshs_legacy_hash"] = safetensors_hashes(tensors, md)
    return md
