"""FLUX.1 LoRA files in the kohya layout: sd-scripts' module names, the fused layers' exact change, the way back for
network_weights, the metadata, and diffusers' own FluxPipeline.load_lora_weights reading a file we write."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_trainer.demo import tiny_flux as tf
from lib_trainer.trainer import flux_lora as fl
from tests.flux_fixtures import lora_network

ROOT = Path(__file__).resolve().parents[1]
CFG = tf.TINY_FLUX_CONFIG["transformer"]
DEPTH, SINGLE = CFG["depth"], CFG["depth_single_blocks"]


def _state(network) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_network():
    from lib_trainer.trainer.flux_model import build_clip_l, build_transformer

    parts = tf.build_parts(variant="dev", seed=2)
    transformer = build_transformer(parts.transformer)
    return transformer, _state(lora_network(transformer, build_clip_l(parts.clip_l)))


def _delta(params: dict[str, torch.Tensor]) -> torch.Tensor:
    down, up = params["lora_down.weight"].double(), params["lora_up.weight"].double()
    return up @ down * (float(params["alpha"]) / down.shape[0])


def test_the_file_names_every_linear_layer_of_bfl_s_blocks_as_sd_scripts_does():
    # sd-scripts' lora_flux: "lora_unet_" + the BFL module path with "_" for ".", for every Linear inside a
    # DoubleStreamBlock or SingleStreamBlock (qkv fused, as BFL's model has it)
    bfl = tf.build_parts(variant="dev", seed=0).transformer
    expected = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k, v in bfl.items()
                if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight") and v.ndim == 2}
    layout = fl.kohya_layout(DEPTH, SINGLE)
    assert set(layout) == expected and len(expected) == 10 * DEPTH + 3 * SINGLE
    assert layout["lora_unet_double_blocks_1_img_attn_qkv"] == (
        "lora_unet_transformer_blocks_1_attn_to_q", "lora_unet_transformer_blocks_1_attn_to_k",
        "lora_unet_transformer_blocks_1_attn_to_v")
    assert layout["lora_unet_single_blocks_0_linear1"][-1] == "lora_unet_single_transformer_blocks_0_proj_mlp"


def test_the_trainer_s_targets_are_exactly_the_pieces_of_the_layout(tiny_network):
    _, state = tiny_network
    ours = {m for m in fl.modules_of(state) if m.startswith("lora_unet_")}
    pieces = {p for group in fl.kohya_layout(DEPTH, SINGLE).values() for p in group}
    assert ours == pieces and len(ours) == 14 * DEPTH + 6 * SINGLE
    assert len([m for m in fl.modules_of(state) if m.startswith("lora_te_")]) == 6 * tf.TINY_FLUX_CONFIG["clip_l"]["layers"]


def test_a_fused_layer_s_change_is_exactly_its_pieces_stacked(tiny_network):
    _, state = tiny_network
    ours, kohya = fl.modules_of(state), fl.modules_of(fl.to_kohya(state, DEPTH, SINGLE))
    for name, pieces in fl.kohya_layout(DEPTH, SINGLE).items():
        stacked = torch.cat([_delta(ours[p]) for p in pieces], dim=0)
        assert torch.allclose(_delta(kohya[name]), stacked, rtol=0, atol=1e-12), name
    qkv = kohya["lora_unet_double_blocks_0_txt_attn_qkv"]
    assert qkv["lora_down.weight"].shape == (12, CFG["hidden_size"]) and float(qkv["alpha"]) == 6.0  # 3 x (4, 2)
    linear1 = kohya["lora_unet_single_blocks_1_linear1"]
    assert linear1["lora_up.weight"].shape == (7 * CFG["hidden_size"], 16)
    te = [m for m in kohya if m.startswith("lora_te")]
    assert te and all(m.startswith("lora_te1_text_model_encoder_layers_") for m in te)


def test_network_weights_read_our_file_and_sd_scripts_dense_files_back(tiny_network):
    transformer, state = tiny_network
    rows = fl.row_sizes(transformer)
    back = fl.from_kohya(fl.file_state(state, transformer, torch.float32), DEPTH, SINGLE, rank=4, row_sizes=rows)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k].float(), state[k].float()) for k in state)

    # sd-scripts without split_qkv trains one rank-r LoRA on the fused layer: every piece then shares its down
    generator = torch.Generator().manual_seed(1)
    h = CFG["hidden_size"]
    dense = {"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(4, h, generator=generator),
             "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(7 * h, 4, generator=generator),
             "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(8.0)}
    pieces = fl.modules_of(fl.from_kohya(dense, DEPTH, SINGLE, rank=4, row_sizes=rows))
    order = fl.kohya_layout(DEPTH, SINGLE)["lora_unet_single_blocks_0_linear1"]
    assert [pieces[p]["lora_up.weight"].shape[0] for p in order] == [h, h, h, 4 * h]
    assert torch.allclose(torch.cat([_delta(pieces[p]) for p in order]), _delta(fl.modules_of(dense)[
        "lora_unet_single_blocks_0_linear1"]), rtol=0, atol=1e-12)


def test_files_that_do_not_fit_are_refused_with_what_to_do(tiny_network):
    _, state = tiny_network
    kohya = fl.to_kohya(state, DEPTH, SINGLE)
    with pytest.raises(fl.FluxLoraError, match="set network_dim to the file's"):
        fl.from_kohya(kohya, DEPTH, SINGLE, rank=8)
    with pytest.raises(fl.FluxLoraError, match="not a module of this FLUX.1 model"):
        fl.from_kohya(kohya, 1, 1, rank=4)
    loha = {"lora_unet_transformer_blocks_0_attn_to_q.hada_w1_a": torch.zeros(2, 2)}
    with pytest.raises(fl.FluxLoraError, match=r'network_module = "networks.lora" \(no LoHa, LoKr or DoRA\)'):
        fl.to_kohya(loha, DEPTH, SINGLE)
    partial = {k: v for k, v in state.items() if "transformer_blocks_0_attn_to_k." not in k}
    with pytest.raises(fl.FluxLoraError, match="train all of a fused layer"):
        fl.to_kohya(partial, DEPTH, SINGLE)


def test_metadata_says_flux_dev_or_schnell_with_the_flow_matching_keys():
    flow = {"timestep_sampling": "flux_shift", "guidance_scale": 1.0, "model_prediction_type": "raw",
            "discrete_flow_shift": 3.1582}
    meta = fl.metadata("dev", flow, apply_t5_attn_mask=True, t5xxl_max_token_length=512)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_base_model_version"] == "flux1"
    assert (meta["ss_timestep_sampling"], meta["ss_guidance_scale"], meta["ss_discrete_flow_shift"]) == (
        "flux_shift", "1.0", "3.1582")
    assert (meta["ss_apply_t5_attn_mask"], meta["ss_t5xxl_max_token_length"]) == ("True", "512")
    assert all(isinstance(v, str) for v in meta.values())
    assert fl.metadata("schnell", {}, apply_t5_attn_mask=False, t5xxl_max_token_length=256)[
        "modelspec.architecture"] == "flux-1-schnell/lora"
    with pytest.raises(ValueError, match="unknown FLUX.1 variant"):
        fl.metadata("pro", {}, apply_t5_attn_mask=False, t5xxl_max_token_length=256)
    sd = {"ss_network_dim": "4", "ss_v_parameterization": "False", "modelspec.prediction_type": "epsilon",
          "ss_base_model_version": "sd_v1", "modelspec.architecture": "stable-diffusion-v1/lora"}
    merged = fl.flux_metadata(sd, "dev", flow, apply_t5_attn_mask=True, t5xxl_max_token_length=512)
    assert merged == {"ss_network_dim": "4", **meta}


def test_diffusers_flux_load_lora_weights_applies_exactly_the_trained_change(tmp_path):
    """diffusers' FluxPipeline.load_lora_weights (its PEFT backend, from .ci/setup's side folder) splits our fused
    layers back into the trained pieces with the trained scale, and the picture changes."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from lib_trainer import deps
    from lib_trainer.trainer.flux_convert import bfl_to_diffusers
    from lib_trainer.trainer.flux_model import base_configs, build_clip_l, transformer_config
    from tests.diffusers_lora_check import LORA_CHECK_DEPS

    assert (LORA_CHECK_DEPS / "peft").is_dir(), f"{LORA_CHECK_DEPS} is missing: run `bash .ci/setup`"
    width = tf.FLUX_WIDTH_CONFIG
    shapes = _ShapeOnly()
    tf._transformer(shapes, width["transformer"], guidance=True)
    cfg = transformer_config(bfl_to_diffusers(shapes.tensors), base_configs()["transformer"])
    with init_empty_weights():  # only the LoRA's shapes are needed here; the check builds the real weights
        transformer = FluxTransformer2DModel.from_config(cfg)
    assert width["clip_l"] == tf.TINY_FLUX_CONFIG["clip_l"]  # so the tiny parts give the check's CLIP-L shapes
    clip = build_clip_l(tf.build_parts(tf.TINY_FLUX_CONFIG, "dev", 0).clip_l)
    state = _state(lora_network(transformer, clip, dim=4, alpha=2.0, seed=3))
    kohya = {k: v.to(torch.float16) for k, v in fl.to_kohya(state, 1, 1).items()}
    meta = fl.metadata("dev", {}, apply_t5_attn_mask=False, t5xxl_max_token_length=512)
    save_file(kohya, str(tmp_path / "flux_lora.safetensors"), metadata=meta)
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(tmp_path / "expected.safetensors"))

    env = deps.trainer_env(sys.executable)
    env.update(PYTHONPATH=os.pathsep.join([str(LORA_CHECK_DEPS), env["PYTHONPATH"]]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tests.diffusers_flux_lora_check", str(tmp_path / "flux_lora.safetensors"),
                           str(tmp_path / "expected.safetensors"), "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["not_loaded"] == [] and result["lora_layers"] == len(fl.modules_of(state)) == 14 + 6 + 12
    assert result["max_relative_delta_error"] < 2e-3  # the file is fp16: 11 significant bits
    assert result["max_change"] > 1e-3


class _ShapeOnly:
    """tiny_flux's builder, minus the numbers: meta tensors carry the shapes of a FLUX.1-width model for free."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def linear(self, name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        self.tensors[f"{name}.weight"] = torch.empty(out_features, in_features, device="meta")
        if bias:
            self.tensors[f"{name}.bias"] = torch.empty(out_features, device="meta")

    def constant(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = torch.empty(tensor.shape, device="meta")
