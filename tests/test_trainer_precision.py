"""Mixed precision, checked on the CPU.

On a GPU the trainer keeps the frozen UNet, VAE and text encoders in fp16/bf16 and the network's layers in fp32, and
runs the forwards under accelerate's autocast (with a GradScaler for fp16). CI has no GPU, and on a CPU the trainer
trains in fp32, so these tests switch the CPU run to the GPU's arrangement: ``training_precision`` is patched to keep
the requested precision, which gives the bf16 path exactly (accelerate autocasts bf16 on the CPU too), and for fp16
an Accelerator that autocasts in fp16 and scales the loss with torch's CPU GradScaler stands in for the CUDA one.
What is left to the GPU itself is the kernels, not the dtypes: a layer that meets a tensor of the other dtype fails
here the same way (the text encoders once ran outside autocast, so every fp16/bf16 run that trained them failed at
its first step)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.trainer_fixtures import (
    BNB_CHECK_DEPS,
    NETWORKS,
    fast_trainer,  # noqa: F401  (fixture)
    load_lora,
    make_config,
    make_dataset,
    tiny_sd1,  # noqa: F401  (fixture)
    tiny_sdxl,  # noqa: F401  (fixture)
    train,
)

pytestmark = pytest.mark.usefixtures("fast_trainer")


@pytest.fixture
def gpu_precision(monkeypatch):
    """The requested mixed precision is kept on the CPU; fp16 gets autocast and a GradScaler as on CUDA."""
    import accelerate
    from accelerate.state import AcceleratorState

    from lib_trainer.trainer import train as train_mod

    class CpuFp16Accelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            # accelerate keeps one precision per process; a trainer process has one run, these tests have many
            AcceleratorState._reset_state()
            super().__init__(*args, **kwargs)
            if self.mixed_precision == "fp16" and self.scaler is None:  # accelerate has one only on CUDA/MPS/NPU
                self.native_amp = True
                self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    monkeypatch.setattr(train_mod, "training_precision", lambda requested, cuda: requested)
    monkeypatch.setattr(accelerate, "Accelerator", CpuFp16Accelerator)
    yield
    AcceleratorState._reset_state()  # the next in-process run starts in fp32 again


def trained_ok(result, dtype: str) -> dict:
    result.assert_ok()
    assert result.one("start")["dtype"] == dtype
    losses = [e["loss"] for e in result.of("step")]
    assert losses and all(math.isfinite(v) for v in losses)
    tensors, metadata = load_lora(result.final)
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert metadata["ss_mixed_precision"] == result.cfg.mixed_precision
    return tensors


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bf16_trains_unet_and_text_encoder_with_every_network(gpu_precision, tiny_sd1, tmp_path, network):
    cfg = make_config(tmp_path, tiny_sd1, mixed_precision="bf16", max_train_steps=2, gradient_checkpointing=True,
                      **NETWORKS[network])
    tensors = trained_ok(train(cfg), "bfloat16")
    assert any(k.startswith("lora_te_") for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)


def test_bf16_sdxl_with_both_text_encoders_and_samples(gpu_precision, tiny_sdxl, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tt_dog, dog --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    cfg = make_config(tmp_path, tiny_sdxl, mixed_precision="bf16", max_train_steps=2, sample_prompts=str(prompts),
                      sample_every_n_steps=2)
    result = train(cfg)
    tensors = trained_ok(result, "bfloat16")
    assert any(k.startswith("lora_te1_") for k in tensors) and any(k.startswith("lora_te2_") for k in tensors)
    assert len(result.of("sample")) == 1


def test_bf16_with_cached_latents_and_text(gpu_precision, tiny_sd1, tmp_path):
    cfg = make_config(tmp_path, tiny_sd1, mixed_precision="bf16", max_train_steps=3, cache_latents=True,
                      network_train_unet_only=True)
    tensors = trained_ok(train(cfg), "bfloat16")
    assert not any(k.startswith("lora_te") for k in tensors)


def test_fp16_scales_the_loss_and_resume_restores_the_scaler(gpu_precision, tiny_sd1, tmp_path):
    """fp16 as on CUDA: the loss is scaled, gradients are unscaled before clipping, the scaler's state is saved with
    the training state, and a run resumed from it gives the same weights as an uninterrupted one."""
    common = dict(mixed_precision="fp16", max_train_steps=4, save_precision="float", max_grad_norm=1.0,
                  train_data_dir=str(tmp_path / "train"))
    make_dataset(tmp_path)
    whole = train(make_config(tmp_path / "whole", tiny_sd1, **common))
    whole_tensors = trained_ok(whole, "float16")

    first = train(make_config(tmp_path / "split", tiny_sd1, save_every_n_steps=2, save_state=True, **common))
    trained_ok(first, "float16")
    state = tmp_path / "split" / "out" / "tt-step00000002-state"
    assert (state / "scaler.pt").is_file()
    scale = torch.load(state / "scaler.pt", weights_only=True)["scale"]
    assert 0 < float(scale) <= 2.0**10

    resumed = train(make_config(tmp_path / "resumed", tiny_sd1, resume=str(state), **common))
    resumed_tensors = trained_ok(resumed, "float16")
    assert resumed.one("start")["resumed_from_step"] == 2
    assert whole_tensors.keys() == resumed_tensors.keys()
    for key, value in whole_tensors.items():
        assert torch.equal(value, resumed_tensors[key]), key


@pytest.fixture
def bitsandbytes_importable(monkeypatch):
    """bitsandbytes from .ci/setup's side folder, imported into this process (it registers torch ops, so it cannot
    be imported twice; the test of the trainer's message without it hides it again)."""
    assert (BNB_CHECK_DEPS / "bitsandbytes").is_dir(), f"{BNB_CHECK_DEPS} is missing: run `bash .ci/setup`"
    monkeypatch.syspath_prepend(str(BNB_CHECK_DEPS))
    import bitsandbytes  # noqa: F401  (while the side folder is on the path)


@pytest.mark.parametrize("arch,preset,vram_gb", [
    ("sd1", "person", 8), ("sd1", "character", 8), ("sd1", "style", 12), ("sd1", "product", 16),
    ("sdxl", "person", 12), ("sdxl", "style", 8),
])
def test_presets_train_as_configured_for_a_gpu(gpu_precision, bitsandbytes_importable, tiny_sd1, tiny_sdxl,
                                              tmp_path, arch, preset, vram_gb):
    """What the tab starts on an NVIDIA GPU: the preset's and VRAM tier's config (fp16, AdamW8bit on small tiers,
    text encoders trained, gradient checkpointing, cached latents, min-SNR, restarts, state, samples), only made
    tiny (64 px, 2 epochs of 2 steps)."""
    from lib_trainer import presets

    make_dataset(tmp_path, folder="1_tt_dog")
    out = tmp_path / "out"
    paths = presets.VersionPaths(train_dir=tmp_path / "train", reg_dir=tmp_path / "reg", checkpoints_dir=out,
                                samples_dir=tmp_path / "samples", logs_dir=tmp_path / "logs",
                                events_path=tmp_path / "events.jsonl", output_name="tt")
    model = tiny_sdxl if arch == "sdxl" else tiny_sd1
    tiny = dict(resolution="64,64", min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32, max_train_epochs=2,
                train_batch_size=2)
    cfg = presets.build_config(paths, str(model), arch, preset, vram_gb, overrides=tiny, sample_prompt="tt_dog, dog",
                              cuda=True)
    assert cfg.mixed_precision == "fp16"
    result = train(cfg)
    tensors = trained_ok(result, "float16")
    assert [Path(c).name for c in result.one("done")["checkpoints"]] == ["tt-000001.safetensors", "tt.safetensors"]
    trains_te = not cfg.network_train_unet_only
    assert any(k.startswith("lora_te") for k in tensors) == trains_te
    assert len(result.of("sample")) == 2 and (out / "tt-state").is_dir()
    assert load_lora(result.final)[1]["ss_optimizer"].split("(")[0].endswith(cfg.optimizer_type)
