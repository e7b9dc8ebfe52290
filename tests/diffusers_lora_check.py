"""Load a LoRA file the trainer wrote with diffusers' own ``load_lora_weights`` and draw with it (run as a program).

``python -m tests.diffusers_lora_check MODEL LORA ARCH`` prints one JSON line: how many of the pipeline's layers
diffusers turned into LoRA layers, and how much the picture changed. It needs diffusers' PEFT backend (peft and
transformers >= 4.34), which the WebUI 1.10 environment does not have: tests/test_trainer_e2e.py runs it with
the packages of ``.ci/setup``'s side folder (``LORA_CHECK_DEPS``) first on the path.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LORA_CHECK_DEPS = Path(__file__).resolve().parents[1] / ".lora-check-deps"


def main(model_path: str, lora_path: str, arch: str) -> dict:
    import diffusers
    import torch
    from diffusers.utils import USE_PEFT_BACKEND
    from peft.tuners.lora import LoraLayer

    from lib_trainer.trainer.models import load_model
    from lib_trainer.trainer.sampling import build_pipeline

    if not USE_PEFT_BACKEND:
        raise SystemExit(f"diffusers {diffusers.__version__} found no PEFT backend: the check would prove nothing")
    torch.set_num_threads(1)
    pipe = build_pipeline(load_model(model_path, v_prediction=arch == "sd2-v"), "euler")

    def draw():
        generator = torch.Generator().manual_seed(7)
        return pipe("tt_dog, dog", num_inference_steps=3, width=64, height=64, generator=generator,
                    guidance_scale=5.0, output_type="np").images[0]

    before = draw()
    # a folder and the file's name: diffusers 0.31 offline refuses a bare file path ("you must specify a
    # `weight_name`"), and the tests run offline
    pipe.load_lora_weights(os.path.dirname(os.path.abspath(lora_path)), weight_name=os.path.basename(lora_path),
                           adapter_name="train_tools")
    after = draw()
    components = [pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    layers = [name for c in components if c is not None for name, m in c.named_modules() if isinstance(m, LoraLayer)]
    return {"diffusers": diffusers.__version__, "lora_layers": len(layers),
            "max_change": float(abs(after - before).max())}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
