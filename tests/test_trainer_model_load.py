"""The single-file loader reads a checkpoint part by part into empty models (no second copy of the weights in
memory); the weights it gives must be exactly those of the straightforward load (the whole file in memory,
models built with their random init, load_state_dict copying into them), for every architecture, for fp16 and
fp32 files, and for .ckpt pickles (memory-mapped) as well as .safetensors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ARCHS = ("sd1", "sd2-v", "sdxl")


def straightforward_load(path: Path, loaded) -> list[dict[str, torch.Tensor]]:
    """The state dicts of (UNet, VAE, text encoders...) loaded the plain way, with the configs the loader chose."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    from lib_trainer.trainer import models as M

    sd = M.read_state_dict(path)
    unet = UNet2DConditionModel.from_config(loaded.unet.config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, unet.config))
    vae = AutoencoderKL.from_config(loaded.vae.config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vae.config))
    prefixes = {"sd1": [M.SD1_TE_PREFIX], "sd2": [M.SD2_TE_PREFIX], "sdxl": [M.SDXL_TE1_PREFIX, M.SDXL_TE2_PREFIX]}
    encoders = []
    for prefix, loaded_te in zip(prefixes[loaded.arch], loaded.text_encoders):
        te = type(loaded_te)(loaded_te.config)
        sub = {k: v for k, v in sd.items() if k.startswith(prefix)}
        if prefix in (M.SD1_TE_PREFIX, M.SDXL_TE1_PREFIX):
            state = convert_ldm_clip_checkpoint(sub, remove_prefix=prefix)
        else:
            state = convert_open_clip_checkpoint(te, sub, prefix=prefix)
            layers = te.config.num_hidden_layers
            state = {k: v for k, v in state.items()
                     if not (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)) or int(m.group(1)) < layers}
            if not hasattr(te, "text_projection"):
                state.pop("text_projection.weight", None)
        te.load_state_dict(state, strict=False)
        encoders.append(te)
    return [m.state_dict() for m in (unet, vae, *encoders)]


def assert_same_weights(loaded, reference: list[dict[str, torch.Tensor]]) -> None:
    parts = [loaded.unet, loaded.vae, *loaded.text_encoders]
    assert len(parts) == len(reference)
    for part, ref in zip(parts, reference):
        own = part.state_dict()
        assert own.keys() == ref.keys()
        for key in own:
            assert own[key].dtype == ref[key].dtype, key
            assert own[key].is_contiguous(), key
            assert torch.equal(own[key], ref[key]), key


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_part_by_part_load_gives_the_straightforward_weights(tmp_path, arch, dtype):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.models import load_single_file

    path = write_tiny_checkpoint(arch, tmp_path / f"{arch}.safetensors", dtype=dtype)
    loaded = load_single_file(path)
    assert {p.dtype for p in loaded.unet.parameters()} == {torch.float32}
    assert not any(t.is_meta for m in [loaded.unet, loaded.vae, *loaded.text_encoders] for t in m.state_dict().values())
    assert_same_weights(loaded, straightforward_load(path, loaded))


def test_a_ckpt_file_is_memory_mapped_and_its_weights_copied(tmp_path):
    """A .ckpt's tensors borrow the mapped file; the models own copies (the file can go away after loading)."""
    from lib_trainer.demo.tiny_model import build_tiny_state_dict
    from lib_trainer.trainer.models import load_single_file

    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": build_tiny_state_dict("sd1", dtype=torch.float32)}, path)
    loaded = load_single_file(path)
    reference = straightforward_load(path, loaded)
    path.unlink()
    assert_same_weights(loaded, reference)
    assert loaded.unet.conv_in.weight.untyped_storage().data_ptr() != reference[0]["conv_in.weight"].untyped_storage().data_ptr()


def test_a_part_that_does_not_fit_is_named(tmp_path):
    from safetensors.torch import save_file

    from lib_trainer.demo.tiny_model import build_tiny_state_dict
    from lib_trainer.trainer.models import ModelLoadError, load_single_file

    sd = build_tiny_state_dict("sd1")
    del sd["first_stage_model.decoder.conv_out.bias"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelLoadError, match=r"the VAE of this checkpoint does not match.*decoder\.conv_out\.bias"):
        load_single_file(tmp_path / "broken.safetensors")


def test_a_truncated_file_says_it_is_incomplete(tmp_path):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.models import ModelLoadError, load_single_file

    path = write_tiny_checkpoint("sd1", tmp_path / "whole.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cut.safetensors ends early .*incomplete"):
        load_single_file(cut)


def test_attention_is_sdpa_by_default_and_eager_on_request(tmp_path):
    """diffusers gives every attention layer SDPA (AttnProcessor2_0) when torch has it; attention = "eager" puts the
    plain processor in, which computes the same UNet output up to rounding."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.models import load_single_file, set_attention
    from lib_trainer.trainer.schema import ConfigError, TrainConfig, validate

    loaded = load_single_file(write_tiny_checkpoint("sd1", tmp_path / "sd1.safetensors"))
    processors = lambda: [type(p) for m in (loaded.unet, loaded.vae) for p in m.attn_processors.values()]  # noqa: E731
    assert processors() and set(processors()) == {AttnProcessor2_0}

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, loaded.unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        sdpa = loaded.unet(sample, 500, context).sample
        set_attention(loaded, "eager")
        assert set(processors()) == {AttnProcessor}
        eager = loaded.unet(sample, 500, context).sample
        set_attention(loaded, "sdpa")
        again = loaded.unet(sample, 500, context).sample
    assert torch.allclose(eager, sdpa, atol=1e-5, rtol=1e-4) and torch.equal(again, sdpa)

    with pytest.raises(ValueError):
        set_attention(loaded, "xformers")
    with pytest.raises(ConfigError, match="attention=flash"):
        validate(TrainConfig(pretrained_model_name_or_path="m", train_data_dir="d", output_dir="o", attention="flash"))
