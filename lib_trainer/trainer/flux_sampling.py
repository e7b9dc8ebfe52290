"""Sample pictures from a FLUX.1 model during training (the modules being trained, LoRA hooks live), with
diffusers' FluxPipeline and the settings Forge draws FLUX.1 with: CFG 1 (no negative prompt), the distilled
guidance as dev's guidance input (Forge's "Distilled CFG Scale", 3.5), Euler on the flow-matching schedule with
FLUX.1's resolution-dependent shift for dev (Forge's "Euler" / "Simple"), 4 steps for schnell.

Prompts come from sampling.read_prompt_file (sd-scripts' syntax); ``--l`` (CFG) and ``--n`` (negative prompt) have
no meaning for a guidance-distilled model and are ignored, the distilled guidance is ``guidance``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Optional

import torch

from .flux_text import encode_prompts
from .sampling import SamplePrompt, save_sample

SCHNELL_STEPS = 4  # schnell is distilled to few steps; more do not help
DISTILLED_GUIDANCE = 3.5


def build_flux_pipeline(model):
    """A FluxPipeline over a flux_model.LoadedFlux's modules (nothing is loaded or downloaded)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**model.scheduler_config), vae=model.vae,
        text_encoder=model.clip_l, tokenizer=model.clip_tokenizer, text_encoder_2=model.t5,
        tokenizer_2=model.t5_tokenizer, transformer=model.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def infotext(prompt: SamplePrompt, steps: int, guidance: Optional[float], seed: int) -> str:
    """The PNG's parameters, in the words Forge's infotext uses for FLUX.1."""
    distilled = f", Distilled CFG Scale: {guidance}" if guidance is not None else ""
    return (f"{prompt.prompt}\nSteps: {steps}, Sampler: Euler, Schedule type: Simple, CFG scale: 1{distilled}, "
            f"Seed: {seed}, Size: {prompt.width}x{prompt.height}")


def draw_flux_samples(model, prompts: list[SamplePrompt], *, out_dir: Path, stem: str, default_seed: int,
                      autocast: Callable = contextlib.nullcontext, guidance: float = DISTILLED_GUIDANCE,
                      apply_t5_attn_mask: bool = False) -> list[Path]:
    """One PNG per prompt in ``out_dir`` (``<stem>_NN.png``), the same seed giving the same picture. ``autocast``
    is a context factory (the accelerator's), called with no arguments; ``apply_t5_attn_mask`` as in training
    (T5's own mask; the transformer draws unmasked, as Forge does)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_flux_pipeline(model)
    dev = model.variant == "dev"
    paths = []
    for index, p in enumerate(prompts):
        seed = p.seed if p.seed is not None else default_seed + index
        steps = p.steps if dev else min(p.steps, SCHNELL_STEPS)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad(), autocast():
            # the conditioning is the training's own (flux_text): the pipeline's text path needs a transformers
            # newer than the WebUI 1.10's 4.30.2 (its T5 tokenizer has no added_tokens_encoder there)
            conds = encode_prompts(model, [p.prompt], apply_t5_attn_mask=apply_t5_attn_mask)
            image = pipe(prompt_embeds=conds.t5_out, pooled_prompt_embeds=conds.pooled, width=p.width,
                         height=p.height, num_inference_steps=steps, guidance_scale=guidance,
                         generator=generator).images[0]
        paths.append(save_sample(image, out_dir / f"{stem}_{index:02d}.png",
                                 infotext(p, steps, guidance if dev else None, seed)))
    return paths
