"""FLUX.1 loading: the split set and the all-in-one file give the same modules, the key conversion agrees with
diffusers' own at the real width, fp8 storage is upcast, T5 is frozen, and unusable files are refused by name."""
from __future__ import annotations

import pytest
import torch

from lib_trainer.demo import tiny_flux as tf
from lib_trainer.trainer import flow_matching as fm
from lib_trainer.trainer.flux_convert import bfl_to_diffusers
from lib_trainer.trainer.flux_files import FluxFileError
from lib_trainer.trainer.flux_model import load_flux
from tests.flux_fixtures import load_tiny, tiny_flux  # noqa: F401 — fixture by name

PARTS = ("transformer", "vae", "clip_l", "t5")


@pytest.fixture(scope="module")
def loaded(tiny_flux):
    dev = tiny_flux["dev"]
    return {
        "split": load_tiny(dev),
        "aio": load_flux(dev.all_in_one, t5_tokenizer=dev.tokenizer_2, hashes=False),
    }


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_split_set_and_the_all_in_one_file_load_to_identical_weights(loaded):
    for part in PARTS:
        assert _same(getattr(loaded["split"], part), getattr(loaded["aio"], part)), part


def test_the_modules_have_the_file_s_sizes_and_the_loaded_values(loaded, tiny_flux):
    cfg = tf.TINY_FLUX_CONFIG["transformer"]
    model = loaded["split"]
    c = model.transformer.config
    assert (c.num_layers, c.num_single_layers, c.attention_head_dim, c.num_attention_heads) == (
        cfg["depth"], cfg["depth_single_blocks"], cfg["head_dim"], cfg["hidden_size"] // cfg["head_dim"])
    assert (c.joint_attention_dim, c.pooled_projection_dim, c.guidance_embeds) == (
        cfg["context_in_dim"], cfg["vec_in_dim"], True)
    assert sum(c.axes_dims_rope) == cfg["head_dim"]
    assert model.vae.config.latent_channels == 16 and len(model.vae.config.block_out_channels) == 4
    assert (model.vae.config.scaling_factor, model.vae.config.shift_factor) == (0.3611, 0.1159)
    parts = tf.build_parts(variant="dev", seed=3)
    qkv = parts.transformer["double_blocks.1.img_attn.qkv.weight"].to(torch.bfloat16).float()
    h = cfg["hidden_size"]
    attn = model.transformer.transformer_blocks[1].attn
    assert torch.equal(attn.to_k.weight, qkv[h:2 * h]) and torch.equal(attn.to_v.weight, qkv[2 * h:])
    linear1 = parts.transformer["single_blocks.0.linear1.weight"].to(torch.bfloat16).float()
    assert torch.equal(model.transformer.single_transformer_blocks[0].proj_mlp.weight, linear1[3 * h:])
    assert model.variant == "dev" and model.t5_max_length == 512
    assert model.scheduler_config["use_dynamic_shifting"] is True


def test_t5_is_frozen(loaded):
    t5 = loaded["split"].t5
    assert not any(p.requires_grad for p in t5.parameters()) and not t5.training
    assert t5.shared.weight is t5.encoder.embed_tokens.weight


def test_schnell_has_no_guidance_input_and_a_shorter_t5_context(tiny_flux):
    model = load_tiny(tiny_flux["schnell"])
    assert model.variant == "schnell" and not model.guidance_embeds
    assert model.transformer.time_text_embed.__class__.__name__ == "CombinedTimestepTextProjEmbeddings"
    assert model.t5_max_length == 256 and model.scheduler_config["shift"] == 1.0


def test_fp8_t5_is_upcast_per_tensor(tiny_flux, loaded):
    dev = tiny_flux["dev"]
    fp8 = load_tiny(dev, t5xxl=dev.t5xxl_fp8)
    reference = loaded["split"].t5.state_dict()
    for key, value in fp8.t5.state_dict().items():
        expected = reference[key]
        if expected.ndim >= 2:
            expected = expected.to(torch.float8_e4m3fn).float()
        assert value.dtype == torch.float32 and torch.equal(value, expected), key


def test_an_fp8_base_keeps_the_transformer_s_matrices_in_fp8(tiny_flux):
    model = load_tiny(tiny_flux["dev"], transformer_dtype=torch.float8_e4m3fn)
    state = model.transformer.state_dict()
    assert state["transformer_blocks.0.attn.to_q.weight"].dtype == torch.float8_e4m3fn
    assert state["transformer_blocks.0.attn.to_q.bias"].dtype == torch.bfloat16
    assert model.vae.dtype == torch.float32


def test_an_explicit_part_wins_over_the_one_inside_the_file(tiny_flux):
    dev, schnell = tiny_flux["dev"], tiny_flux["schnell"]
    model = load_flux(dev.all_in_one, ae=schnell.ae, t5_tokenizer=dev.tokenizer_2, hashes=False)
    assert model.sources["ae"].path == schnell.ae and model.sources["clip_l"].path == dev.all_in_one
    assert _same(model.vae, load_tiny(schnell).vae)


def test_unusable_files_are_refused_with_what_to_pick(tiny_flux, tmp_path):
    from safetensors.torch import save_file

    dev = tiny_flux["dev"]
    with pytest.raises(FluxFileError, match=r"ae must come from the FLUX.1 AE \(ae.safetensors in models/VAE\)"):
        load_flux(dev.transformer, clip_l=dev.clip_l, t5xxl=dev.t5xxl, t5_tokenizer=dev.tokenizer_2)
    nf4 = tmp_path / "flux1-dev-bnb-nf4.safetensors"
    save_file(tf.nf4_like(tf.build_parts(variant="dev", seed=1).transformer), str(nf4))
    with pytest.raises(FluxFileError, match="flux1-dev-bnb-nf4.safetensors is a 4-bit NF4"):
        load_flux(nf4, ae=dev.ae, clip_l=dev.clip_l, t5xxl=dev.t5xxl)
    with pytest.raises(FluxFileError, match="ae.safetensors is an AE; clip_l must come from CLIP-L"):
        load_flux(dev.transformer, ae=dev.ae, clip_l=dev.ae, t5xxl=dev.t5xxl)
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    sd_vae = write_tiny_checkpoint("sd1", tmp_path / "sd1.safetensors")
    with pytest.raises(FluxFileError, match="sd1.safetensors is not a FLUX.1 file"):
        load_flux(sd_vae)


class _RowValues:
    """Stands in for tiny_flux's builder: every tensor holds its row index (int16, expanded over the columns), so
    a full-width model costs almost no memory and any wrong slice shows."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def linear(self, name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        rows = torch.arange(out_features, dtype=torch.int16)
        self.tensors[f"{name}.weight"] = rows[:, None].expand(out_features, in_features)
        if bias:
            self.tensors[f"{name}.bias"] = rows

    def constant(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = torch.arange(tensor.shape[0], dtype=torch.int16)


def test_the_key_conversion_equals_diffusers_own_at_flux_width():
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    builder = _RowValues()
    tf._transformer(builder, tf.FLUX_WIDTH_CONFIG["transformer"], guidance=True)
    ours = bfl_to_diffusers(dict(builder.tensors))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(builder.tensors))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_transformer_runs_on_packed_latents(loaded):
    model = loaded["split"]
    torch.manual_seed(0)
    latents = torch.randn(2, 16, 8, 6)
    batch = fm.prepare_batch(fm.FlowMatchingConfig(), latents, model.guidance_embeds, torch.Generator().manual_seed(1))
    text = torch.randn(2, 5, model.transformer.config.joint_attention_dim)
    pooled = torch.randn(2, model.transformer.config.pooled_projection_dim)
    with torch.no_grad():
        out = model.transformer(hidden_states=batch.packed, encoder_hidden_states=text, pooled_projections=pooled,
                                timestep=batch.sigmas, img_ids=batch.img_ids, txt_ids=fm.text_ids(5),
                                guidance=batch.guidance).sample
    assert out.shape == batch.packed.shape == (2, 12, 64) and torch.isfinite(out).all()
    assert fm.batch_loss(fm.FlowMatchingConfig(), batch, out).shape == (2,)
    image = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = model.vae.encode(image).latent_dist.mean
        assert z.shape == (1, 16, 8, 6)
        assert model.vae.decode(z).sample.shape == image.shape


def test_text_conditioning_and_the_t5_mask(loaded):
    from lib_trainer.trainer.flux_text import encode_prompts

    model = loaded["split"]
    short = encode_prompts(model, ["a photo of sks dog"], apply_t5_attn_mask=True, t5_max_length=8)
    long = encode_prompts(model, ["a photo of sks dog"], apply_t5_attn_mask=True, t5_max_length=16)
    assert short.pooled.shape == (1, tf.TINY_FLUX_CONFIG["clip_l"]["width"])
    assert short.t5_out.shape == (1, 8, tf.TINY_FLUX_CONFIG["t5"]["d_model"]) and short.txt_ids.shape == (8, 3)
    real = int(short.t5_attn_mask.sum())
    assert real == 6  # 5 pieces and </s>
    # masked, the real tokens' encoding does not depend on how much padding follows them
    assert torch.allclose(short.t5_out[:, :real], long.t5_out[:, :real], atol=1e-5)
    unmasked = encode_prompts(model, ["a photo of sks dog"], apply_t5_attn_mask=False, t5_max_length=16)
    assert not torch.allclose(unmasked.t5_out[:, :real], long.t5_out[:, :real], atol=1e-3)


def test_a_diffusers_folder_loads_the_same_weights_as_the_files(tiny_flux, loaded, tmp_path):
    from lib_trainer.trainer.flux_files import inspect_file

    folder = tf.write_tiny_flux_folder(tmp_path / "FLUX.1-dev", "dev", seed=3)
    info = inspect_file(folder)
    assert (info.kind, info.variant, info.layout, info.parts) == (
        "flux", "dev", "diffusers", ("transformer", "ae", "clip_l", "t5xxl"))
    model = load_flux(folder, hashes=True)  # its own tokenizer_2/ is found
    assert model.name == "FLUX.1-dev" and len(model.new_model_hash) == 64 and model.variant == "dev"
    for part in PARTS:
        assert _same(getattr(model, part), getattr(loaded["split"], part)), part
    schnell = inspect_file(tf.write_tiny_flux_folder(tmp_path / "FLUX.1-schnell", "schnell", seed=3))
    assert schnell.variant == "schnell"
