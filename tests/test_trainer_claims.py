"""Keys sd-scripts users bring either do what they say or are refused / warned about, and the file's ss_* metadata
records what the run did, never what was only asked for: bucket_no_upscale, full_fp16 / full_bf16, unknown
network_args, a constant scheduler with a warm-up, Adafactor's defaults, mixed precision without a GPU."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.trainer_fixtures import (
    fast_trainer,  # noqa: F401  (fixture)
    load_lora,
    make_config,
    tiny_sd1,  # noqa: F401  (fixture)
    train,
    write_picture,
)

pytestmark = pytest.mark.usefixtures("fast_trainer")


# ---- bucket_no_upscale ----------------------------------------------------------------------------------------

def test_bucket_no_upscale_trains_small_pictures_at_their_own_size(tiny_sd1, tmp_path, monkeypatch):
    from lib_trainer.trainer import data as data_mod

    concept = tmp_path / "train" / "1_tt_dog"
    write_picture(concept / "wide.png", (96, 64), seed=1)
    write_picture(concept / "square.png", (64, 64), seed=2)
    for name in ("wide", "square"):
        (concept / f"{name}.txt").write_text("tt_dog, dog", encoding="utf-8")
    seen = []
    pixels = data_mod.pixels

    def spy(entry, bucket, flip, resized=None):
        out = pixels(entry, bucket, flip, resized)
        seen.append((entry.path.name, tuple(bucket), out[0]))
        return out

    monkeypatch.setattr(data_mod, "pixels", spy)
    # Without bucket_no_upscale both would be enlarged to buckets of about 128×128 pixels' area.
    cfg = make_config(tmp_path, tiny_sd1, enable_bucket=True, bucket_no_upscale=True, resolution="128,128",
                      min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=32, max_train_steps=2,
                      network_train_unet_only=True)
    result = train(cfg).assert_ok()
    buckets = {name: bucket for name, bucket, _ in seen}
    assert buckets == {"wide.png": (96, 64), "square.png": (64, 64)}
    for name, _, tensor in seen:  # not resized at all: the very pixels of the file
        array = np.asarray(Image.open(concept / name).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        assert torch.equal(tensor, torch.from_numpy(array).permute(2, 0, 1)), name
    _, metadata = load_lora(result.final)
    assert metadata["ss_bucket_no_upscale"] == "True"
    info = json.loads(metadata["ss_bucket_info"])
    assert sorted(tuple(b["resolution"]) for b in info["buckets"].values()) == [(64, 64), (96, 64)]


def test_bucket_no_upscale_without_buckets_is_warned_about_and_not_recorded(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, bucket_no_upscale=True, network_train_unet_only=True)).assert_ok()
    assert any("bucket_no_upscale" in w and "enable_bucket" in w for w in result.warnings), result.warnings
    assert load_lora(result.final)[1]["ss_bucket_no_upscale"] == "False"


# ---- precision ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["full_fp16", "full_bf16"])
def test_full_half_precision_is_warned_about_and_not_recorded(tiny_sd1, tmp_path, key):
    result = train(make_config(tmp_path, tiny_sd1, network_train_unet_only=True, **{key: True})).assert_ok()
    assert any(w.startswith(f"{key} is not done here") for w in result.warnings), result.warnings
    assert load_lora(result.final)[1]["ss_full_fp16"] == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU run")
def test_mixed_precision_without_a_gpu_records_fp32(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, mixed_precision="fp16", network_train_unet_only=True)).assert_ok()
    assert any("mixed_precision=fp16 needs a CUDA GPU" in w for w in result.warnings), result.warnings
    assert load_lora(result.final)[1]["ss_mixed_precision"] == "no"


# ---- network_args ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, named, listed", [
    # a typo under LyCORIS: refused, naming it and what LyCORIS reads
    (dict(network_module="lycoris.kohya", network_args=["algo=lora", "dorra_wd=True"]), ["dorra_wd"],
     ["dora_wd", "rank_dropout"]),
    # sd-scripts' block-wise dims are not implemented
    (dict(network_args=["block_dims=2,2,2"]), ["block_dims"], ["conv_dim", "loraplus_lr_ratio"]),
    # a LyCORIS key with networks.lora
    (dict(network_args=["algo=loha"]), ["algo"], ['network_module = "lycoris.kohya"']),
])
def test_network_args_that_would_change_nothing_are_refused(tiny_sd1, tmp_path, overrides, named, listed):
    result = train(make_config(tmp_path, tiny_sd1, **overrides))
    assert result.code == 2 and [e["event"] for e in result.events] == ["error"], result.events
    for word in named + listed:
        assert word in result.error, result.error


def test_network_args_record_what_was_applied(tiny_sd1, tmp_path):
    cfg = make_config(tmp_path, tiny_sd1, network_module="lycoris.kohya", network_train_unet_only=True,
                      network_args=["algo=lora", "dora_wd=True", "rank_dropout=0.1"])
    result = train(cfg).assert_ok()
    recorded = json.loads(load_lora(result.final)[1]["ss_network_args"])
    # DoRA's magnitude on the input axis: the layout A1111 and Forge apply (test_trainer_dora)
    assert recorded == {"algo": "lora", "dora_wd": "True", "rank_dropout": "0.1", "wd_on_output": "False"}


# ---- schedulers and Adafactor ---------------------------------------------------------------------------------

def test_constant_with_a_warm_up_trains_as_constant_with_warmup(tiny_sd1, tmp_path):
    base = 1e-3
    cfg = make_config(tmp_path, tiny_sd1, lr_scheduler="constant", lr_warmup_steps=2, max_train_steps=4,
                      learning_rate=base, network_train_unet_only=True)
    result = train(cfg).assert_ok()
    # the rate after step k of a linear warm-up over 2 steps: base·min(1, k/2)
    assert [e["lr"] for e in result.of("step")] == pytest.approx([base * min(1.0, k / 2) for k in (1, 2, 3, 4)])
    assert any("constant_with_warmup with 2 warm-up steps" in w for w in result.warnings), result.warnings
    _, metadata = load_lora(result.final)
    assert metadata["ss_lr_scheduler"] == "constant_with_warmup" and metadata["ss_lr_warmup_steps"] == "2"


@pytest.fixture
def created_optimizers(monkeypatch):
    from lib_trainer.trainer import train as train_mod

    made = []
    create = train_mod.create_optimizer

    def spy(*args, **kwargs):
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(train_mod, "create_optimizer", spy)
    return made


def test_adafactor_has_sd_scripts_defaults_and_its_own_step_size(tiny_sd1, tmp_path, created_optimizers):
    cfg = make_config(tmp_path, tiny_sd1, optimizer_type="Adafactor", learning_rate=1e-3, lr_scheduler="cosine",
                      lr_warmup_steps=1, max_train_steps=2, network_train_unet_only=True)
    result = train(cfg).assert_ok()
    (optimizer,) = created_optimizers
    # sd-scripts' get_optimizer: relative_step on unless turned off; transformers' scale_parameter / warmup_init
    assert type(optimizer).__name__ == "Adafactor"
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["scale_parameter"] is True
    assert optimizer.defaults["warmup_init"] is False and optimizer.defaults["lr"] is None
    # the reported rate is Adafactor's own: min(1e-2, 1/√t) · max(eps₂, RMS(p)) of the last group's first tensor
    state = optimizer.state[optimizer.param_groups[-1]["params"][0]]
    assert state["step"] == 2
    expected = min(1e-2, 1 / math.sqrt(2)) * max(optimizer.defaults["eps"][1], float(state["RMS"]))
    assert result.of("step")[-1]["lr"] == pytest.approx(expected, rel=1e-5)
    assert any("lr_scheduler cosine and the warm-up are not used" in w for w in result.warnings), result.warnings
    _, metadata = load_lora(result.final)
    assert metadata["ss_lr_scheduler"] == "adafactor:0.001" and metadata["ss_lr_warmup_steps"] == "0"
    assert metadata["ss_learning_rate"] == metadata["ss_unet_lr"] == "None"


def test_adafactor_warmup_init_turns_relative_step_back_on():
    from lib_trainer.trainer.optim import create_optimizer
    from lib_trainer.trainer.schema import TrainConfig

    warnings = []
    params = [{"params": [torch.nn.Parameter(torch.ones(4, 4))], "lr": 1e-3}]
    cfg = TrainConfig(optimizer_type="Adafactor", optimizer_args=["relative_step=False", "warmup_init=True"])
    optimizer = create_optimizer(cfg, params, torch.device("cpu"), warnings.append)
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["warmup_init"] is True
    assert len(warnings) == 1 and "warmup_init needs relative_step" in warnings[0]
    # turned off on its own, relative_step gives learning_rate to the optimizer
    params = [{"params": [torch.nn.Parameter(torch.ones(4, 4))], "lr": 1e-3}]
    cfg = TrainConfig(optimizer_type="Adafactor", optimizer_args=["relative_step=False"], learning_rate=2e-4)
    optimizer = create_optimizer(cfg, params, torch.device("cpu"), warnings.append)
    assert optimizer.defaults["relative_step"] is False and optimizer.defaults["lr"] == 2e-4
    assert optimizer.defaults["scale_parameter"] is True and len(warnings) == 1
