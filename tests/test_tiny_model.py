"""The tiny checkpoints convert with diffusers' own single-file converters and give usable, prompt-dependent outputs."""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lib_trainer.demo.tiny_model import ARCHS, TINY_CONFIGS, build_tiny_state_dict, write_tiny_checkpoint

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Two different tokenised prompts (BOS, a few tokens, EOS, padding) of the full 77-token context.
PROMPTS = torch.tensor([
    [49406, 320, 1929, 539, 320, 2368, 49407] + [49407] * 70,
    [49406, 1125, 4558, 530, 518, 2117, 2800, 49407] + [49407] * 69,
])
# transformers 4.30 keeps `position_ids` as a persistent buffer; open_clip checkpoints do not carry it.
_BUFFERS = frozenset({"text_model.embeddings.position_ids"})


@functools.lru_cache(maxsize=None)
def _state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Shared between tests: treat as read-only."""
    return build_tiny_state_dict(arch, seed)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch: str) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in _state_dict(arch).items()}


def _original_config(arch: str) -> dict[str, Any]:
    cfg = TINY_CONFIGS[arch]
    return {"model": {"params": {
        "unet_config": {"params": cfg["unet"]},
        "first_stage_config": {"params": {"ddconfig": cfg["vae"]}},
        "scale_factor": cfg["scale_factor"],
    }}}


def _unet_config(arch: str, checkpoint: dict[str, torch.Tensor]) -> dict[str, Any]:
    config = sfu.create_unet_diffusers_config_from_ldm(_original_config(arch), checkpoint)
    if arch == "sdxl":
        # diffusers recognises SDXL's size/crop conditioning only by the real context widths (2048 / 1280).
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    return config


def _load(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], allowed_missing: frozenset[str] = frozenset()
) -> torch.nn.Module:
    result = model.load_state_dict(state_dict, strict=False)
    assert set(result.missing_keys) <= allowed_missing, result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys
    return model.eval()


def _assert_finite_and_distinct(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a.std() > 1e-3 and a.abs().max() < 1e4
    assert (a - b).norm() > 0.01 * a.norm()  # the inputs make a difference


def _text_encoders(arch: str, checkpoint: dict[str, torch.Tensor]) -> list[torch.nn.Module]:
    models = []
    for te in TINY_CONFIGS[arch]["text_encoders"]:
        width = te["width"]
        config = CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, hidden_size=width, intermediate_size=4 * width,
            num_hidden_layers=te["layers"], num_attention_heads=width // 64,
            hidden_act="quick_gelu" if te["layout"] == "hf_clip" else "gelu",
            projection_dim=te.get("projection_dim", width),
        )
        if te["layout"] == "hf_clip":
            state = sfu.convert_ldm_clip_checkpoint(checkpoint, remove_prefix=te["prefix"])
            models.append(_load(CLIPTextModel(config), state))
        elif "conditioner" in te["prefix"]:
            model = CLIPTextModelWithProjection(config)
            state = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=te["prefix"])
            models.append(_load(model, state, _BUFFERS))
        else:
            model = CLIPTextModel(config)
            state = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=te["prefix"])
            models.append(_load(model, state, _BUFFERS))
    return models


def test_unet_converts_and_depends_on_the_prompt(arch: str, checkpoint: dict[str, torch.Tensor]) -> None:
    config = _unet_config(arch, checkpoint)
    unet = _load(UNet2DConditionModel(**config), sfu.convert_ldm_unet_checkpoint(checkpoint, config))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    contexts = torch.randn(2, 77, config["cross_attention_dim"], generator=gen)
    extra = {}
    if arch == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 64, generator=gen),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        }
    with torch.no_grad():
        a, b = (unet(latents, 500, encoder_hidden_states=c[None], **extra).sample for c in contexts)
    assert a.shape == latents.shape
    _assert_finite_and_distinct(a, b)


def test_vae_converts_and_keeps_the_x8_downscale(arch: str, checkpoint: dict[str, torch.Tensor]) -> None:
    config = sfu.create_vae_diffusers_config_from_ldm(_original_config(arch), checkpoint)
    vae = _load(AutoencoderKL(**config), sfu.convert_ldm_vae_checkpoint(checkpoint, config))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
        decoded = vae.decode(latents).sample
    assert latents.shape == (2, 4, 8, 8)
    assert decoded.shape == images.shape
    _assert_finite_and_distinct(latents[0], latents[1])
    _assert_finite_and_distinct(decoded[0], decoded[1])


def test_text_encoders_convert_and_tell_prompts_apart(arch: str, checkpoint: dict[str, torch.Tensor]) -> None:
    for model in _text_encoders(arch, checkpoint):
        with torch.no_grad():
            out = model(PROMPTS, output_hidden_states=True)
        hidden = out.last_hidden_state  # after the final LayerNorm
        _assert_finite_and_distinct(hidden[0], hidden[1])
        penultimate = out.hidden_states[-2]  # what SD2 / SDXL condition on
        _assert_finite_and_distinct(penultimate[0], penultimate[1])
        # The WebUI's emphasis rescales by original_mean / new_mean: a zero mean would give NaN.
        assert hidden.mean().abs() > 1e-2


def test_layers_ldm_zero_initialises_are_random(arch: str, checkpoint: dict[str, torch.Tensor]) -> None:
    suffixes = (".proj_out.weight", ".out_layers.3.weight", "diffusion_model.out.2.weight")
    zero_init = [k for k in checkpoint if k.startswith("model.diffusion_model.") and k.endswith(suffixes)]
    assert len(zero_init) > 10
    for key in zero_init:
        assert checkpoint[key].abs().mean() > 1e-3, key


_LORA_LINEARS = (".proj_in", ".proj_out", ".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2")


def test_sd1_has_the_lora_targets_of_sd15() -> None:
    state_dict = _state_dict("sd1")
    modules = [k[: -len(".weight")] for k in state_dict if k.endswith(".weight")]
    assert sum(m.endswith(".proj_in") for m in modules) == 16  # Transformer2D blocks
    unet_targets = [m for m in modules if m.startswith("model.diffusion_model.") and m.endswith(_LORA_LINEARS)]
    assert len(unet_targets) == 192
    te_targets = [m for m in modules if ".encoder.layers." in m and m.endswith(("_proj", ".fc1", ".fc2"))]
    assert len(te_targets) == 72
    assert state_dict["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4
    assert _state_dict("sd2")["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2


def test_diffusers_recognises_sdxl_base() -> None:
    assert sfu.infer_diffusers_model_type(_state_dict("sdxl")) == "xl_base"


def test_deterministic_for_a_seed() -> None:
    a, b, c = _state_dict("sd1"), build_tiny_state_dict("sd1"), build_tiny_state_dict("sd1", 1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.diffusion_model.out.2.weight"], c["model.diffusion_model.out.2.weight"])
    sd2, sd2v = _state_dict("sd2"), _state_dict("sd2-v")
    assert all(torch.equal(sd2[k], sd2v[k]) for k in sd2)


def test_dtypes() -> None:
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    for dtype in (torch.float16, torch.float32):
        state_dict = build_tiny_state_dict("sd1", dtype=dtype) if dtype != torch.float16 else _state_dict("sd1")
        assert {v.dtype for k, v in state_dict.items() if k != position_ids} == {dtype}
        assert state_dict[position_ids].dtype == torch.int64


def test_write_and_cli(tmp_path: Path) -> None:
    from safetensors import safe_open

    written = write_tiny_checkpoint("sd2-v", tmp_path / "nested" / "tiny.safetensors", seed=5)
    assert written == tmp_path / "nested" / "tiny.safetensors"
    assert [p.name for p in written.parent.iterdir()] == ["tiny.safetensors"]  # no temp file left behind

    out = tmp_path / "cli.safetensors"
    subprocess.run(
        [sys.executable, "-m", "lib_trainer.demo.tiny_model", "--arch", "sd1", str(out), "--seed", "3"],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )
    assert 1 << 20 < out.stat().st_size < 64 << 20
    expected = build_tiny_state_dict("sd1", 3)
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"train_tools_tiny": "sd1", "modelspec.resolution": "64x64"}  # hosts read its size
        assert set(f.keys()) == set(expected)
        key = "model.diffusion_model.out.2.weight"
        assert torch.equal(f.get_tensor(key), expected[key])
