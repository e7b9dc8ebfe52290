"""Sample images during training, from a prompt file in sd-scripts' syntax.

One prompt per line; ``#`` starts a comment line. Options after the prompt: ``--n`` negative prompt, ``--w`` /
``--h`` size, ``--s`` steps, ``--l`` CFG scale, ``--d`` seed. File names never contain the prompt; the prompt
and settings go into the PNG's text chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lib_trainer.common.i18n import tr


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    seed: Optional[int] = None


_OPTION = re.compile(r"\s--([a-z]+)\s+")


def parse_prompt_line(line: str, default_size: tuple[int, int]) -> Optional[SamplePrompt]:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = _OPTION.split(" " + line)
    prompt = SamplePrompt(prompt=parts[0].strip(), width=default_size[0], height=default_size[1])
    for name, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if name == "n":
                prompt.negative = value
            elif name == "w":
                prompt.width = int(value)
            elif name == "h":
                prompt.height = int(value)
            elif name == "s":
                prompt.steps = int(value)
            elif name == "l":
                prompt.cfg_scale = float(value)
            elif name == "d":
                prompt.seed = int(value)
        except ValueError:
            raise ValueError(tr("sample prompt option --{name} {value} is not a number", name=name,
                                value=repr(value))) from None
    prompt.width -= prompt.width % 8
    prompt.height -= prompt.height % 8
    return prompt


def read_prompt_file(path: str, default_size: tuple[int, int]) -> list[SamplePrompt]:
    text = Path(path).read_text(encoding="utf-8-sig")
    return [p for p in (parse_prompt_line(line, default_size) for line in text.splitlines()) if p is not None]


def make_scheduler(name: str, scheduler_config: dict, v_prediction: bool):
    import diffusers

    config = dict(scheduler_config, prediction_type="v_prediction" if v_prediction else "epsilon")
    table = {
        "ddim": ("DDIMScheduler", {}),
        "pndm": ("PNDMScheduler", {}),
        "lms": ("LMSDiscreteScheduler", {}),
        "k_lms": ("LMSDiscreteScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {}),
        "k_euler": ("EulerDiscreteScheduler", {}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "heun": ("HeunDiscreteScheduler", {}),
        "dpm_2": ("KDPM2DiscreteScheduler", {}),
        "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
        "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
        "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
        "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
        "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
        "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    }
    cls_name, extra = table[name]
    return getattr(diffusers, cls_name).from_config({**config, **extra})


def build_pipeline(model, sampler: str):
    """A diffusers pipeline over the models being trained (the network's hooks are live in them)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, model.scheduler_config, model.v_prediction)
    if model.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw_samples(model, prompts: list[SamplePrompt], *, sampler: str, out_dir: Path, stem: str,
                 clip_skip: Optional[int], default_seed: int, device: torch.device, autocast) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(model, sampler)
    paths = []
    for index, p in enumerate(prompts):
        seed = p.seed if p.seed is not None else default_seed + index
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs = dict(
            prompt=p.prompt, negative_prompt=p.negative or None, width=p.width, height=p.height,
            num_inference_steps=p.steps, guidance_scale=p.cfg_scale, generator=generator,
        )
        if clip_skip and clip_skip > 1 and model.arch != "sdxl":
            kwargs["clip_skip"] = clip_skip - 1  # diffusers counts the layers skipped, sd-scripts the layer used
        with torch.no_grad(), autocast():
            image = pipe(**kwargs).images[0]
        parameters = (f"{p.prompt}\nNegative prompt: {p.negative}\nSteps: {p.steps}, Sampler: {sampler}, "
                      f"CFG scale: {p.cfg_scale}, Seed: {seed}, Size: {p.width}x{p.height}")
        paths.append(save_sample(image, out_dir / f"{stem}_{index:02d}.png", parameters))
    return paths


def save_sample(image, path: Path, parameters: str) -> Path:
    """A sample picture with its WebUI-style ``parameters`` text, written whole (temporary file, then renamed)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path
