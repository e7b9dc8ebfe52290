"""FLUX.1 file layouts: what each file is, dev vs schnell, the parts inside, quantized files refused by name."""
from __future__ import annotations

import pytest
import torch

from lib_trainer.common.safetensors_header import read_header
from lib_trainer.demo import tiny_flux as tf
from lib_trainer.trainer import flux_files as ff
from tests.flux_fixtures import tiny_flux  # noqa: F401 — fixture by name


def test_each_file_of_the_split_set_and_the_all_in_one_file_is_recognised(tiny_flux):
    dev = tiny_flux["dev"]
    cfg = tf.TINY_FLUX_CONFIG["transformer"]
    info = ff.inspect_file(dev.transformer)
    assert (info.kind, info.variant, info.layout, info.transformer_prefix, info.parts) == (
        "flux", "dev", "bfl", "", ("transformer",))
    assert (info.num_double_blocks, info.num_single_blocks, info.hidden_size, info.storage_dtype) == (
        cfg["depth"], cfg["depth_single_blocks"], cfg["hidden_size"], "BF16")
    aio = ff.inspect_file(dev.all_in_one)
    assert (aio.kind, aio.transformer_prefix, aio.parts) == (
        "flux", "model.diffusion_model.", ("transformer", "ae", "clip_l", "t5xxl"))
    assert [ff.inspect_file(p).kind for p in (dev.ae, dev.clip_l, dev.t5xxl, dev.t5xxl_fp8)] == [
        "ae", "clip_l", "t5xxl", "t5xxl"]
    assert ff.inspect_file(dev.ae).storage_dtype == "F32"
    assert ff.inspect_file(dev.t5xxl_fp8).storage_dtype == "F8_E4M3"
    assert ff.is_flux_checkpoint(read_header(dev.all_in_one).entries)
    assert ff.is_flux_checkpoint(read_header(dev.transformer).entries)
    assert not ff.is_flux_checkpoint(read_header(dev.ae).entries)


def test_dev_has_the_guidance_input_and_schnell_not(tiny_flux):
    assert ff.inspect_file(tiny_flux["dev"].transformer).variant == "dev"
    assert ff.inspect_file(tiny_flux["schnell"].transformer).variant == "schnell"
    assert ff.inspect_file(tiny_flux["schnell"].all_in_one).variant == "schnell"


def test_a_diffusers_named_transformer_file_and_an_sd_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"transformer_blocks.0.attn.norm_added_k.weight": torch.ones(4),
               "x_embedder.weight": torch.ones(8, 64)}, str(tmp_path / "d.safetensors"))
    info = ff.inspect_file(tmp_path / "d.safetensors")
    assert (info.kind, info.layout, info.variant, info.hidden_size) == ("flux", "diffusers", "schnell", 8)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 4, 3, 3)}, str(tmp_path / "sd.safetensors"))
    assert ff.inspect_file(tmp_path / "sd.safetensors").kind == "other"
    assert not ff.is_flux_checkpoint(["model.diffusion_model.input_blocks.0.0.weight"])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    assert ff.inspect_file(tmp_path / "junk.safetensors").kind == "other"


def test_nf4_and_gguf_files_are_refused_naming_the_file_to_use(tmp_path):
    from safetensors.torch import save_file

    parts = tf.build_parts(variant="dev", seed=1)
    save_file(tf.nf4_like(parts.transformer), str(tmp_path / "flux1-dev-bnb-nf4-v2.safetensors"))
    info = ff.inspect_file(tmp_path / "flux1-dev-bnb-nf4-v2.safetensors")
    assert (info.kind, info.variant, info.quantization) == ("flux", "dev", "nf4")
    with pytest.raises(ff.FluxFileError) as err:
        ff.refuse_quantized(info)
    message = str(err.value)
    assert "flux1-dev-bnb-nf4-v2.safetensors is a 4-bit NF4 (bitsandbytes) model" in message
    assert "flux1-dev.safetensors (bf16) or flux1-dev-fp8-e4m3fn.safetensors (fp8)" in message

    gguf = tf.write_gguf_stub(tmp_path / "flux1-schnell-Q4_K_S.gguf")
    with pytest.raises(ff.FluxFileError, match=r"flux1-schnell-Q4_K_S.gguf is a GGUF-quantized model.*flux1-dev"):
        ff.check_part(ff.inspect_file(gguf), "transformer")
    renamed = tf.write_gguf_stub(tmp_path / "model.safetensors")  # told by its magic, not its name
    assert ff.inspect_file(renamed).quantization == "gguf"
    t5 = tf.write_gguf_stub(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    with pytest.raises(ff.FluxFileError, match="t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors"):
        ff.refuse_quantized(ff.inspect_file(t5))


def test_a_missing_or_wrong_part_names_the_file_to_pick(tiny_flux):
    dev = tiny_flux["dev"]
    with pytest.raises(ff.FluxFileError, match=r"flux1-dev-tiny.safetensors is a FLUX.1 transformer without it; "
                                               r"ae must come from the FLUX.1 AE \(ae.safetensors in models/VAE\)"):
        ff.check_part(ff.inspect_file(dev.transformer), "ae")
    with pytest.raises(ff.FluxFileError, match=r"clip_l.safetensors is a CLIP-L text encoder; t5xxl must come"):
        ff.check_part(ff.inspect_file(dev.clip_l), "t5xxl")
    ff.check_part(ff.inspect_file(dev.all_in_one), "t5xxl")


def test_fp8_tensors_are_upcast_per_tensor_and_scaled_fp8_uses_its_scales(tmp_path):
    from safetensors.torch import save_file

    state = {"a.weight": torch.randn(8, 4) * 3, "a.bias": torch.randn(8), "b.weight": torch.randn(4, 4) / 50}
    save_file(tf.to_fp8(state), str(tmp_path / "fp8.safetensors"))
    save_file(tf.to_fp8(state, scaled=True), str(tmp_path / "scaled.safetensors"))
    plain = ff.read_part(tmp_path / "fp8.safetensors", dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in plain.values())
    assert torch.equal(plain["a.weight"], state["a.weight"].to(torch.float8_e4m3fn).float())
    assert torch.equal(plain["a.bias"], state["a.bias"])  # vectors were never fp8
    assert ff.inspect_file(tmp_path / "scaled.safetensors").scaled_fp8
    scaled = ff.read_part(tmp_path / "scaled.safetensors", dtype=torch.float32)
    assert set(scaled) == set(state)  # no .scale_weight, no scaled_fp8 marker
    for key in ("a.weight", "b.weight"):  # e4m3fn keeps 3 mantissa bits: a relative error <= 2**-4
        assert torch.allclose(scaled[key], state[key], rtol=2 ** -4, atol=1e-6)
    kept = ff.read_part(tmp_path / "fp8.safetensors", keep_fp8=True)
    assert kept["a.weight"].dtype == torch.float8_e4m3fn


def test_only_the_prefix_is_read_from_an_all_in_one_file(tiny_flux):
    files = tiny_flux["dev"]
    clip = ff.read_part(files.all_in_one, ff.CLIP_L_PREFIX)
    alone = ff.read_part(files.clip_l)
    assert clip.keys() == alone.keys()
    assert all(torch.equal(clip[k], alone[k]) for k in clip)


def test_chroma_fill_and_control_models_are_refused_from_the_header(tmp_path):
    from safetensors.torch import save_file

    bfl = tf.build_parts(variant="schnell", seed=1).transformer
    cases = {
        "chroma": {**{k: v for k, v in bfl.items() if "_mod." not in k and "modulation" not in k},
                   "distilled_guidance_layer.in_proj.weight": torch.zeros(4, 4)},
        "fill": {**bfl, "img_in.weight": torch.zeros(bfl["img_in.weight"].shape[0], 384)},
        "control": {**bfl, "img_in.weight": torch.zeros(bfl["img_in.weight"].shape[0], 128)},
    }
    words = {"chroma": "is a Chroma model", "fill": "is FLUX.1 Fill", "control": "is a FLUX.1 Depth / Canny model"}
    for name, state in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path))
        info = ff.inspect_file(path)
        assert info.kind == "flux" and info.derived == name
        with pytest.raises(ff.FluxFileError, match=f"{name}.safetensors {words[name]}.*pick flux1-dev"):
            ff.check_part(info, "transformer")
    assert ff.inspect_file(tmp_path / "fill.safetensors").in_channels == 384
    save_file(bfl, str(tmp_path / "plain.safetensors"))
    plain = ff.inspect_file(tmp_path / "plain.safetensors")
    assert plain.derived is None and plain.in_channels == 64
    ff.check_part(plain, "transformer")


def test_plain_reads_give_safetensors_own_tensors_and_name_a_truncated_file(tiny_flux, tmp_path):
    from safetensors.torch import load_file

    files = tiny_flux["schnell"]
    for path in (files.all_in_one, files.t5xxl_fp8, files.ae):
        ours, theirs = ff.read_part(path, keep_fp8=True), load_file(str(path))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours), path.name
    cast = ff.read_part(files.all_in_one, ff.T5_PREFIX, dtype=torch.bfloat16)
    reference = load_file(str(files.t5xxl))
    assert all(cast[k].dtype == torch.bfloat16 and torch.equal(cast[k], reference[k].to(torch.bfloat16)) for k in cast)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(files.clip_l.read_bytes()[:-100])
    with pytest.raises(ff.FluxFileError, match="cut.safetensors ends early .*download it again"):
        ff.read_part(cut)


def test_forge_s_vae_and_text_encoder_selection_is_told_apart_by_the_headers(tiny_flux, tmp_path):
    from safetensors.torch import save_file

    from lib_trainer.demo.tiny_model import TINY_CONFIGS, build_state_dict

    dev = tiny_flux["dev"]
    assert ff.assign_parts([dev.t5xxl_fp8, dev.ae, dev.clip_l]) == {
        "t5xxl": dev.t5xxl_fp8, "ae": dev.ae, "clip_l": dev.clip_l}
    assert ff.assign_parts([]) == {}
    with pytest.raises(ff.FluxFileError, match="t5xxl_fp16.safetensors and t5xxl_fp8_e4m3fn.safetensors are both "
                                               "t5xxl; keep one of them"):
        ff.assign_parts([dev.t5xxl, dev.clip_l, dev.t5xxl_fp8])
    sd = build_state_dict(TINY_CONFIGS["sd1"], seed=0)
    prefix = "first_stage_model."
    save_file({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, str(tmp_path / "sd-vae.safetensors"))
    assert ff.inspect_file(tmp_path / "sd-vae.safetensors").kind == "other"  # 4 latent channels
    with pytest.raises(ff.FluxFileError, match="sd-vae.safetensors is not a FLUX.1 AE or text encoder"):
        ff.assign_parts([dev.ae, tmp_path / "sd-vae.safetensors"])
    gguf = tf.write_gguf_stub(tmp_path / "t5-v1_1-xxl-encoder-Q5_K_M.gguf")
    with pytest.raises(ff.FluxFileError, match="GGUF-quantized model.*t5xxl_fp16.safetensors"):
        ff.assign_parts([gguf])
