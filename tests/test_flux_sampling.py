"""FLUX.1 samples during training: drawn by diffusers' FluxPipeline from the loaded modules, one seed one picture,
Forge's FLUX.1 settings in the infotext, and the network's change visible in them."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lib_trainer.trainer.flux_sampling import draw_flux_samples
from lib_trainer.trainer.sampling import SamplePrompt
from tests.flux_fixtures import load_tiny, lora_network, tiny_flux  # noqa: F401 — fixture by name


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_samples_are_seeded_pictures_with_forge_s_flux_settings(tiny_flux, tmp_path):
    model = load_tiny(tiny_flux["dev"])
    prompts = [SamplePrompt("a photo of sks dog", width=64, height=48, steps=3, seed=5),
               SamplePrompt("a photo of sks dog", width=64, height=48, steps=3)]
    first = draw_flux_samples(model, prompts, out_dir=tmp_path / "a", stem="e1", default_seed=5)
    again = draw_flux_samples(model, prompts[:1], out_dir=tmp_path / "b", stem="e1", default_seed=0)
    assert [p.name for p in first] == ["e1_00.png", "e1_01.png"]
    assert Image.open(first[0]).size == (64, 48)
    assert np.array_equal(_pixels(first[0]), _pixels(again[0]))  # seed 5 both times
    assert np.abs(_pixels(first[0]) - _pixels(first[1])).max() > 0  # seeds 5 and 6
    info = Image.open(first[1]).text["parameters"]
    assert info == ("a photo of sks dog\nSteps: 3, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
                    "Distilled CFG Scale: 3.5, Seed: 6, Size: 64x48")

    network = lora_network(model.transformer, model.clip_l, dim=4, alpha=4.0, seed=1, apply_text_encoder=False)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_up" in name:
                param.mul_(20)  # a change large enough to see in 8-bit pixels
    with_lora = draw_flux_samples(model, prompts[:1], out_dir=tmp_path / "c", stem="e1", default_seed=0)
    assert np.abs(_pixels(with_lora[0]) - _pixels(first[0])).max() > 8


def test_schnell_samples_take_at_most_four_steps_and_no_guidance(tiny_flux, tmp_path):
    model = load_tiny(tiny_flux["schnell"])
    [path] = draw_flux_samples(model, [SamplePrompt("a red circle", width=32, height=32, steps=20, seed=1)],
                               out_dir=tmp_path, stem="s", default_seed=0)
    assert Image.open(path).text["parameters"] == (
        "a red circle\nSteps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 1, Size: 32x32")
