"""Tiny FLUX.1 files for the Flux tests, built once per session (``from tests.flux_fixtures import tiny_flux``).

``tiny_flux`` maps "dev" and "schnell" to a ``TinyFluxFiles`` (transformer-only file, ae, clip_l, t5xxl fp16 and
fp8, the all-in-one file and a tokenizer_2 folder); ``load_tiny(files, **kwargs)`` loads the split set;
``lora_network`` puts a LoRA on a FLUX.1 transformer (and CLIP-L) the way the trainer does.
"""
from __future__ import annotations

import pytest
import torch

from lib_trainer.trainer import flux_lora as fl


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    from lib_trainer.demo.tiny_flux import write_tiny_flux

    return {variant: write_tiny_flux(tmp_path_factory.mktemp(f"flux-{variant}"), variant, seed=3)
            for variant in ("dev", "schnell")}


def load_tiny(files, **kwargs):
    from lib_trainer.trainer.flux_model import load_flux

    for key, value in (("ae", files.ae), ("clip_l", files.clip_l), ("t5xxl", files.t5xxl),
                       ("t5_tokenizer", files.tokenizer_2), ("hashes", False)):
        kwargs.setdefault(key, value)
    return load_flux(files.transformer, **kwargs)


def lora_network(transformer, clip, dim: int = 4, alpha: float = 2.0, seed: int = 0, random_ups: bool = True,
                 apply_text_encoder: bool = True):
    """A lycoris LoRA on FLUX.1's blocks (and CLIP-L), as the trainer makes one; ``random_ups`` gives the ups
    random (trained-like) values instead of lycoris' zeros."""
    import logging

    from lycoris import kohya as lycoris_kohya
    from lycoris.config import PRESET

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    PRESET["train_tools_flux_test"] = {
        "enable_conv": False, "unet_target_module": fl.TARGET_MODULES, "unet_target_name": [],
        "text_encoder_target_module": fl.TEXT_ENCODER_MODULES, "text_encoder_target_name": [],
        "module_algo_map": {}, "name_algo_map": {}, "use_fnmatch": False,
    }
    network = lycoris_kohya.create_network(1.0, dim, alpha, None, clip, transformer, algo="lora",
                                           preset="train_tools_flux_test", conv_dim=0, conv_alpha=1, bypass_mode=True)
    network.apply_to(clip, transformer, apply_text_encoder=apply_text_encoder, apply_unet=True)
    if random_ups:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in network.named_parameters():
                if "lora_up" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return network
