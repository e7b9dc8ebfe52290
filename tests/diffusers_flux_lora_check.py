"""Load a FLUX.1 LoRA file in the kohya layout with diffusers' own ``FluxPipeline.load_lora_weights`` and draw with
it (run as a program, like tests/diffusers_lora_check.py for SD).

``python -m tests.diffusers_flux_lora_check LORA EXPECTED SEED`` builds the FLUX.1-width random model of
``tiny_flux.FLUX_WIDTH_CONFIG`` (seed SEED: diffusers' kohya converter splits single blocks' linear1 at FLUX.1's own
3072 / 12288 rows, so a narrower model cannot be checked), loads LORA and prints one JSON line: diffusers' version,
how many layers became LoRA layers, the largest difference between the change each one applies (B @ A x its
scaling) and the change EXPECTED holds for it (the trainer's network state in its own module names, with alphas),
and how much the picture changed. It needs diffusers' PEFT backend: the test runs it with ``.lora-check-deps``
first on the path.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile


def build_pipeline(seed: int):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from lib_trainer.demo import tiny_flux
    from lib_trainer.trainer import flux_model
    from lib_trainer.trainer.t5_tokenizer import load_t5_tokenizer
    from lib_trainer.trainer.tokenizer import load_clip_tokenizer

    parts = tiny_flux.build_parts(tiny_flux.FLUX_WIDTH_CONFIG, "dev", seed)
    base = flux_model.base_configs()
    folder = tiny_flux.write_t5_tokenizer(tempfile.mkdtemp(prefix="flux_lora_check_tok_"))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**base["scheduler"]["dev"]),
        vae=flux_model.build_ae(parts.ae), text_encoder=flux_model.build_clip_l(parts.clip_l),
        tokenizer=load_clip_tokenizer(base["tokenizer"]["pad_token"]),
        text_encoder_2=flux_model.build_t5(parts.t5xxl), tokenizer_2=load_t5_tokenizer(folder),
        transformer=flux_model.build_transformer(parts.transformer, torch.float32),
    )


def _expected_deltas(path: str) -> dict:
    from safetensors.torch import load_file

    state = load_file(path)
    modules = {k.split(".")[0] for k in state}
    out = {}
    for module in modules:
        down, up = state[f"{module}.lora_down.weight"].float(), state[f"{module}.lora_up.weight"].float()
        out[module] = up @ down * (float(state[f"{module}.alpha"]) / down.shape[0])
    return out


def main(lora_path: str, expected_path: str, seed: str) -> dict:
    import diffusers
    import torch
    from diffusers.utils import USE_PEFT_BACKEND
    from peft.tuners.lora import LoraLayer

    if not USE_PEFT_BACKEND:
        raise SystemExit(f"diffusers {diffusers.__version__} found no PEFT backend: the check would prove nothing")
    torch.set_num_threads(1)
    pipe = build_pipeline(int(seed))

    def draw():
        generator = torch.Generator().manual_seed(7)
        return pipe("a photo of sks dog", num_inference_steps=2, width=64, height=64, generator=generator,
                    guidance_scale=3.5, max_sequence_length=8, output_type="np").images[0]

    before = draw()
    # a folder and the file's name: diffusers 0.31 offline refuses a bare file path ("you must specify a
    # `weight_name`"), and the tests run offline
    pipe.load_lora_weights(os.path.dirname(os.path.abspath(lora_path)), weight_name=os.path.basename(lora_path),
                           adapter_name="train_tools")
    after = draw()
    expected = _expected_deltas(expected_path)
    layers, worst = 0, 0.0
    for prefix, component in (("lora_unet_", pipe.transformer), ("lora_te_", pipe.text_encoder)):
        for name, module in component.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            layers += 1
            ours = prefix + name.replace(".", "_")
            adapter = "train_tools"
            delta = module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()
            delta = delta * module.scaling[adapter]
            reference = expected.pop(ours, None)
            if reference is None:
                raise SystemExit(f"diffusers made a LoRA layer at {name}, which the network does not train")
            worst = max(worst, float((delta - reference).abs().max() / reference.abs().max()))
    return {"diffusers": diffusers.__version__, "lora_layers": layers, "not_loaded": sorted(expected),
            "max_relative_delta_error": worst, "max_change": float(abs(after - before).max())}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
