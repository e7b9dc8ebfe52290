"""Every network type, optimizer, scheduler and training option runs end to end on a tiny SD1 model, and bad
inputs end with a clear message. The trainer runs in-process (lib_trainer.trainer.train.run) for speed; each
run is 1-4 steps at 64 px with a rank-2 network."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.trainer_fixtures import (
    BNB_CHECK_DEPS,
    NETWORKS,
    fast_trainer,  # noqa: F401  (fixture)
    load_lora,
    make_config,
    make_dataset,
    tiny_sd1,  # noqa: F401  (fixture)
    train,
    write_picture,
)

pytestmark = pytest.mark.usefixtures("fast_trainer")


def modules(tensors: dict) -> set[str]:
    return {k.split(".", 1)[0] for k in tensors}


def suffixes(tensors: dict) -> set[str]:
    return {k.split(".", 1)[1] for k in tensors}


@pytest.fixture(scope="module")
def baseline(tiny_sd1, tmp_path_factory, fast_trainer):
    """A plain one-step run; option runs with the same seed compare against it."""
    tmp = tmp_path_factory.mktemp("baseline")
    result = train(make_config(tmp, tiny_sd1, save_precision="float")).assert_ok()
    tensors, metadata = load_lora(result.final)
    return result, tensors, metadata


# ---- 1. network types ----------------------------------------------------------------------------------------

CONV_MODULE = "lora_unet_down_blocks_0_resnets_0_conv1"
ATTN_MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE_MODULE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_network_type_trains_and_writes_its_key_layout(tiny_sd1, tmp_path, kind):
    result = train(make_config(tmp_path, tiny_sd1, **NETWORKS[kind])).assert_ok()
    assert result.one("checkpoint")["path"] == str(result.final)
    tensors, metadata = load_lora(result.final)
    names = modules(tensors)
    assert all(n.startswith(("lora_unet_", "lora_te_")) for n in names), sorted(names)[:5]
    assert ATTN_MODULE in names and TE_MODULE in names
    assert all(v.dtype == torch.float16 for v in tensors.values())  # save_precision defaults to fp16
    assert metadata["ss_network_module"] == result.cfg.network_module
    assert metadata["ss_network_dim"] == "2"
    assert all(torch.isfinite(v.float()).all() for v in tensors.values())
    ends = suffixes(tensors)

    if kind in ("lora", "locon"):
        assert ends == {"lora_down.weight", "lora_up.weight", "alpha"}
        for name in names:
            assert f"{name}.alpha" in tensors and f"{name}.lora_up.weight" in tensors
            assert tensors[f"{name}.lora_down.weight"].shape[0] == 2  # rank
        ups = [v for k, v in tensors.items() if k.endswith(".lora_up.weight")]
        assert sum(int(v.abs().sum() > 0) for v in ups) > len(ups) // 2, "lora_up stayed zero: nothing was learned"
        assert (CONV_MODULE in names) == (kind == "locon")
        if kind == "locon":
            assert tensors[f"{CONV_MODULE}.lora_down.weight"].shape[-2:] == (3, 3)
            assert json.loads(metadata["ss_network_args"])["conv_dim"] == "2"
        else:
            assert not any("resnets" in n for n in names)
    elif kind == "loha":
        assert {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"} <= ends
        assert json.loads(metadata["ss_network_args"])["algo"] == "loha"
        assert f"{ATTN_MODULE}.hada_w1_a" in tensors
    elif kind == "lokr":
        assert any(e.startswith("lokr_w1") for e in ends) and any(e.startswith("lokr_w2") for e in ends), ends
        assert json.loads(metadata["ss_network_args"])["algo"] == "lokr"
    elif kind == "dora":
        assert {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"} <= ends
        assert f"{ATTN_MODULE}.dora_scale" in tensors
        assert json.loads(metadata["ss_network_args"])["dora_wd"] == "True"


# ---- 2. optimizers ---------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "AdamW": dict(learning_rate=1e-3),
    "Lion": dict(learning_rate=1e-4),
    "Prodigy": dict(learning_rate=1.0),
    # with a learning rate of its own (its default, relative_step, is tested in test_trainer_claims)
    "Adafactor": dict(learning_rate=1e-3, optimizer_args=["relative_step=False"]),
    "SGD": dict(learning_rate=1.0),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_trains_one_step(tiny_sd1, tmp_path, name):
    cfg = make_config(tmp_path, tiny_sd1, optimizer_type=name, save_precision="float", **OPTIMIZERS[name])
    result = train(cfg).assert_ok()
    step = result.one("step")
    assert step["lr"] == pytest.approx(OPTIMIZERS[name]["learning_rate"])
    assert math.isfinite(step["loss"]) and step["loss"] > 0
    tensors, metadata = load_lora(result.final)
    assert name.lower() in metadata["ss_optimizer"].lower()
    up = torch.cat([v.flatten() for k, v in tensors.items() if k.endswith("lora_up.weight")])
    assert up.abs().max() > 0, f"{name} did not move the zero-initialised lora_up weights"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of AdamW8bit")
def test_adamw8bit_on_cpu_asks_for_adamw(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as install.py leaves a machine without CUDA
    result = train(make_config(tmp_path, tiny_sd1, optimizer_type="AdamW8bit"))
    assert result.code == 2
    message = result.error
    assert "GPU" in message and "AdamW" in message and "AdamW8bit" in message
    assert not result.of("step") and not list(Path(result.cfg.output_dir).glob("*.safetensors"))


def _train_cli(tmp: Path, cfg, *extra_path: Path) -> list[dict]:
    """The trainer as the job runner starts it (deps.trainer_env), with ``extra_path`` first on its path."""
    from lib_trainer import deps
    from lib_trainer.trainer.schema import save_config

    config = tmp / f"{Path(cfg.output_dir).name}.toml"
    save_config(cfg, config)
    env = deps.trainer_env(sys.executable)
    env.update(PYTHONPATH=os.pathsep.join([*map(str, extra_path), env["PYTHONPATH"]]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lib_trainer.trainer", str(config)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and events[-1]["event"] == "done", (proc.stderr[-3000:], events[-3:])
    return events


def _tensor_dtypes(value) -> list:
    """The dtypes of every tensor in a nest of dicts, lists and tuples (bitsandbytes nests its quantized state)."""
    if isinstance(value, torch.Tensor):
        return [value.dtype]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [dtype for item in items for dtype in _tensor_dtypes(item)]


def test_adamw8bit_keeps_8bit_state_and_resumes_exactly(tiny_sd1, tmp_path):
    """AdamW8bit through the same code as on CUDA, on the CPU kernels of a recent bitsandbytes: the moments are
    stored in 8 bits, the state saves and loads (weights_only), and a resumed run equals an uninterrupted one."""
    assert (BNB_CHECK_DEPS / "bitsandbytes").is_dir(), f"{BNB_CHECK_DEPS} is missing: run `bash .ci/setup`"
    make_dataset(tmp_path)
    # bitsandbytes keeps tensors under 4096 values in 32 bits; the tiny network's are all smaller
    common = dict(optimizer_type="AdamW8bit", optimizer_args=["min_8bit_size=16"], max_train_steps=4,
                  save_precision="float", train_data_dir=str(tmp_path / "train"))
    whole = _train_cli(tmp_path, make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "whole"), **common),
                       BNB_CHECK_DEPS)
    assert "AdamW8bit" in load_lora(tmp_path / "whole" / "tt.safetensors")[1]["ss_optimizer"]
    assert all(math.isfinite(e["loss"]) for e in whole if e["event"] == "step")
    _train_cli(tmp_path, make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "split"), save_every_n_steps=2,
                                     save_state=True, **common), BNB_CHECK_DEPS)
    state = tmp_path / "split" / "tt-step00000002-state"
    per_param = torch.load(state / "optimizer.pt", weights_only=True)["state"]
    assert per_param and all(_tensor_dtypes(s).count(torch.uint8) == 2 for s in per_param.values())  # both moments
    _train_cli(tmp_path, make_config(tmp_path, tiny_sd1, output_dir=str(tmp_path / "resumed"), resume=str(state),
                                     **common), BNB_CHECK_DEPS)
    expected, _ = load_lora(tmp_path / "whole" / "tt.safetensors")
    got, _ = load_lora(tmp_path / "resumed" / "tt.safetensors")
    assert expected.keys() == got.keys()
    up = torch.cat([v.flatten() for k, v in got.items() if k.endswith("lora_up.weight")])
    assert up.abs().max() > 0
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


# ---- 3. schedulers ---------------------------------------------------------------------------------------------

def _expected_lrs(name: str, base: float, total: int, warmup: int, cycles: int, power: float) -> list[float]:
    """The factor after each optimizer step k = 1..total (what a step event reports)."""
    out = []
    for k in range(1, total + 1):
        if k < warmup:
            out.append(base * k / warmup)
            continue
        progress = (k - warmup) / max(1, total - warmup)
        if name in ("constant", "constant_with_warmup"):
            f = 1.0
        elif name == "linear":
            f = max(0.0, (total - k) / max(1, total - warmup))
        elif name == "cosine":
            f = max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
        elif name == "cosine_with_restarts":
            f = 0.0 if progress >= 1 else max(0.0, 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0))))
        elif name == "polynomial":
            end = 1e-7
            f = (end + (base - end) * (1 - progress) ** power) / base if k < total else end / base
        out.append(base * f)
    return out


SCHEDULERS = {
    "constant": dict(),
    "constant_with_warmup": dict(lr_warmup_steps=0.5),  # a fraction: half of the 4 steps
    "cosine": dict(),
    "cosine_with_restarts": dict(lr_scheduler_num_cycles=2),
    "linear": dict(lr_warmup_steps=1),
    "polynomial": dict(lr_scheduler_power=2.0),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_shapes_the_reported_lr(tiny_sd1, tmp_path, name):
    base = 1e-3
    cfg = make_config(tmp_path, tiny_sd1, lr_scheduler=name, max_train_steps=4, learning_rate=base,
                      network_train_unet_only=True, **SCHEDULERS[name])
    result = train(cfg).assert_ok()
    lrs = [e["lr"] for e in result.of("step")]
    assert len(lrs) == 4
    warmup = {"constant_with_warmup": 2, "linear": 1}.get(name, 0)
    expected = _expected_lrs(name, base, 4, warmup, cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power)
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12), (name, lrs, expected)
    # the shapes in words, so a wrong formula above cannot hide a wrong schedule
    if name == "constant":
        assert len(set(lrs)) == 1
    elif name == "constant_with_warmup":
        assert lrs[0] < lrs[1] == lrs[2] == lrs[3] == base
    elif name == "cosine_with_restarts":
        assert lrs[1] > lrs[0] and lrs[3] < lrs[2]  # restarts at half-way
    else:
        assert lrs[-1] < lrs[0] and all(a >= b for a, b in zip(lrs, lrs[1:]))
    _, metadata = load_lora(result.final)
    assert metadata["ss_lr_scheduler"] == name
    assert metadata["ss_lr_warmup_steps"] == str(warmup)


# ---- 4. options ------------------------------------------------------------------------------------------------

LONG_CAPTION = "tt_dog, " + ", ".join(f"tag{i} word{i}" for i in range(70))  # well over 150 tokens


@pytest.mark.parametrize("length", [150, 225])
def test_max_token_length_with_a_long_caption(tiny_sd1, tmp_path, monkeypatch, length):
    from lib_trainer.trainer import train as train_mod
    from lib_trainer.trainer.models import load_model

    shapes = []
    encode_sd = train_mod.encode_sd

    def spy(text_encoder, ids, clip_skip):
        hidden = encode_sd(text_encoder, ids, clip_skip)
        shapes.append((tuple(ids.shape), tuple(hidden.shape)))
        return hidden

    monkeypatch.setattr(train_mod, "encode_sd", spy)
    make_dataset(tmp_path, captions=[LONG_CAPTION])
    result = train(make_config(tmp_path, tiny_sd1, max_token_length=length)).assert_ok()
    _, metadata = load_lora(result.final)
    assert metadata["ss_max_token_length"] == str(length)
    # every caption is cut into 75-token chunks and the hidden states joined back to length + 2 tokens
    chunks = length // 75
    assert shapes and all(ids[1:] == (chunks, 77) and hidden[1] == length + 2 for ids, hidden in shapes), shapes
    tokenizer = load_model(str(tiny_sd1)).tokenizers[0]
    assert len(tokenizer(LONG_CAPTION).input_ids) > length + 2  # the caption really fills every chunk


@pytest.fixture
def spy(monkeypatch):
    """Records the captions and (bucket, flip) of every picture the training loop uses."""
    from lib_trainer.trainer import data as data_mod

    seen = {"captions": [], "pixels": []}
    caption_for, pixels = data_mod.caption_for, data_mod.pixels

    def spy_caption(cfg, entry, rng):
        out = caption_for(cfg, entry, rng)
        seen["captions"].append((entry.caption, out))
        return out

    def spy_pixels(entry, bucket, flip, resized=None):
        out = pixels(entry, bucket, flip, resized)
        seen["pixels"].append((entry.path.name, tuple(bucket), flip, tuple(out[0].shape)))
        return out

    monkeypatch.setattr(data_mod, "caption_for", spy_caption)
    monkeypatch.setattr(data_mod, "pixels", spy_pixels)
    return seen


CAPTION_OPTIONS = {
    "shuffle_keep": dict(shuffle_caption=True, keep_tokens=1),
    "caption_dropout": dict(caption_dropout_rate=1.0),
    "tag_dropout": dict(caption_tag_dropout_rate=1.0, keep_tokens=1),
}


@pytest.mark.parametrize("option", list(CAPTION_OPTIONS))
def test_caption_options_change_the_trained_captions(tiny_sd1, tmp_path, spy, option):
    cfg = make_config(tmp_path, tiny_sd1, max_train_steps=4, network_train_unet_only=True, **CAPTION_OPTIONS[option])
    result = train(cfg).assert_ok()
    captions = spy["captions"]
    assert len(captions) == 4
    if option == "shuffle_keep":
        for original, used in captions:
            tags = [t.strip() for t in used.split(",")]
            assert tags[0] == "tt_dog"  # the kept token stays first
            assert sorted(tags) == sorted(t.strip() for t in original.split(","))
        assert any(used != original for original, used in captions), "nothing was shuffled"
    elif option == "caption_dropout":
        assert all(used == "" for _, used in captions)
    else:
        assert all(used == "tt_dog" for _, used in captions)
    _, metadata = load_lora(result.final)
    for key, value in CAPTION_OPTIONS[option].items():
        assert metadata[f"ss_{key}"] == str(value)


def test_flip_aug_mirrors_some_pictures(tiny_sd1, tmp_path, spy):
    # one step of a batch of 4: four independent coin flips
    result = train(make_config(tmp_path, tiny_sd1, flip_aug=True, train_batch_size=4,
                               network_train_unet_only=True)).assert_ok()
    flips = [flip for _, _, flip, _ in spy["pixels"]]
    assert True in flips and len(flips) >= 4
    assert load_lora(result.final)[1]["ss_flip_aug"] == "True"


def test_enable_bucket_trains_a_non_square_picture_in_its_own_bucket(tiny_sd1, tmp_path, spy):
    write_picture(tmp_path / "train" / "1_tt_dog" / "wide.png", (192, 96), seed=7)
    write_picture(tmp_path / "train" / "1_tt_dog" / "square.png", (128, 128), seed=8)
    cfg = make_config(tmp_path, tiny_sd1, enable_bucket=True, resolution="128,128", min_bucket_reso=64,
                      max_bucket_reso=256, max_train_steps=2, network_train_unet_only=True)
    result = train(cfg).assert_ok()
    used = {(name, bucket, shape) for name, bucket, _, shape in spy["pixels"]}
    assert ("wide.png", (192, 64), (3, 64, 192)) in used
    assert ("square.png", (128, 128), (3, 128, 128)) in used
    info = json.loads(load_lora(result.final)[1]["ss_bucket_info"])
    assert sorted(tuple(b["resolution"]) for b in info["buckets"].values()) == [(128, 128), (192, 64)]


@pytest.fixture
def vae_encodes(monkeypatch):
    """Counts pictures the VAE encodes."""
    from diffusers import AutoencoderKL

    count = {"n": 0}
    encode = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):
        count["n"] += x.shape[0]
        return encode(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    return count


def test_cache_latents_encodes_each_picture_once(tiny_sd1, tmp_path, vae_encodes):
    # 8 steps over 4 pictures (5 repeats each): without the cache 8 training encodes, with it at most 4
    steps = 8
    result = train(make_config(tmp_path, tiny_sd1, cache_latents=True, max_train_steps=steps,
                               network_train_unet_only=True)).assert_ok()
    eval_encodes = 2  # fixed-noise score at start and at the checkpoint (one picture in these tests)
    assert vae_encodes["n"] - eval_encodes <= 4 < steps
    assert not list((tmp_path / "train").rglob(".train_tools_latents"))
    assert load_lora(result.final)[1]["ss_cache_latents"] == "True"


def test_cache_latents_to_disk_is_reused_by_the_next_run(tiny_sd1, tmp_path, vae_encodes):
    cfg = make_config(tmp_path, tiny_sd1, cache_latents_to_disk=True, max_train_steps=4, network_train_unet_only=True)
    first = train(cfg).assert_ok()
    cache_dir = tmp_path / "train" / "5_tt_dog" / ".train_tools_latents"
    files = sorted(cache_dir.glob("*.safetensors"))
    assert files, "no latent was written to disk"
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    first_encodes = vae_encodes["n"]

    vae_encodes["n"] = 0
    cfg2 = make_config(tmp_path, tiny_sd1, cache_latents_to_disk=True, max_train_steps=4,
                       network_train_unet_only=True, output_dir=str(tmp_path / "out2"))
    second = train(cfg2).assert_ok()
    assert {f.name: f.stat().st_mtime_ns for f in cache_dir.glob("*.safetensors")} == stamps
    assert vae_encodes["n"] == 2 < first_encodes  # only the fixed-noise score encodes; training reads the cache
    assert second.one("start")["images"] == 20  # the scanner does not take the cache for pictures
    # Same seed, same weights, whether the latents were encoded, read from the cache or never cached
    uncached = train(make_config(tmp_path, tiny_sd1, max_train_steps=4, network_train_unet_only=True,
                                 output_dir=str(tmp_path / "out3"))).assert_ok()
    weights = [load_lora(run.final)[0] for run in (first, second, uncached)]
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])


def test_noise_offset_changes_the_loss(tiny_sd1, tmp_path, baseline):
    # min_snr_gamma's weights, the v target and clip skip are checked against closed forms in test_trainer_targets
    result = train(make_config(tmp_path, tiny_sd1, noise_offset=0.1)).assert_ok()
    assert result.one("step")["loss"] != baseline[0].one("step")["loss"]
    assert load_lora(result.final)[1]["ss_noise_offset"] == "0.1"


def test_gradient_checkpointing_gives_the_same_weights(tiny_sd1, tmp_path, baseline):
    result = train(make_config(tmp_path, tiny_sd1, gradient_checkpointing=True, save_precision="float")).assert_ok()
    tensors, metadata = load_lora(result.final)
    assert metadata["ss_gradient_checkpointing"] == "True"
    assert result.one("step")["loss"] == pytest.approx(baseline[0].one("step")["loss"], rel=1e-5)
    reference = baseline[1]
    assert tensors.keys() == reference.keys()
    for key in tensors:
        torch.testing.assert_close(tensors[key], reference[key], atol=1e-6, rtol=1e-4)


def test_gradient_accumulation_makes_one_step_of_two_batches(tiny_sd1, tmp_path, baseline, spy):
    result = train(make_config(tmp_path, tiny_sd1, gradient_accumulation_steps=2)).assert_ok()
    start = result.one("start")
    assert start["steps_per_epoch"] == baseline[0].one("start")["steps_per_epoch"] // 2 == 10
    assert len(result.of("step")) == 1
    assert len(spy["captions"]) == 2  # both batches went through the model before the one update
    metadata = load_lora(result.final)[1]
    assert metadata["ss_gradient_accumulation_steps"] == "2" and metadata["ss_total_batch_size"] == "2"


def test_network_train_unet_only_writes_no_text_encoder_keys(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, network_train_unet_only=True)).assert_ok()
    tensors, metadata = load_lora(result.final)
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert metadata["ss_network_train_unet_only"] == "True"


def test_separate_unet_and_text_encoder_learning_rates(tiny_sd1, tmp_path):
    # AdamW's first step moves every weight by about the learning rate (m/sqrt(v) = sign(g)), so the largest
    # change of the zero-initialised lora_up weights shows each part's learning rate
    unet_lr, te_lr = 1e-3, 1e-5
    cfg = make_config(tmp_path, tiny_sd1, unet_lr=unet_lr, text_encoder_lr=te_lr, learning_rate=5e-4,
                      save_precision="float")
    result = train(cfg).assert_ok()
    tensors, metadata = load_lora(result.final)

    def max_up(prefix):
        return max(v.abs().max().item() for k, v in tensors.items() if k.startswith(prefix) and "lora_up" in k)

    assert max_up("lora_unet_") == pytest.approx(unet_lr, rel=0.05)
    assert max_up("lora_te_") == pytest.approx(te_lr, rel=0.05)
    assert metadata["ss_unet_lr"] == str(unet_lr) and metadata["ss_text_encoder_lr"] == str(te_lr)


def test_text_encoder_lr_zero_freezes_the_text_encoder(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, text_encoder_lr=0.0)).assert_ok()
    tensors, _ = load_lora(result.final)
    assert tensors and not any(k.startswith("lora_te") for k in tensors)


def test_reg_data_dir_is_counted(tiny_sd1, tmp_path):
    reg = tmp_path / "reg"
    for i in range(2):
        write_picture(reg / "1_dog" / f"reg{i}.png", (64, 64), seed=100 + i)
    result = train(make_config(tmp_path, tiny_sd1, reg_data_dir=str(reg))).assert_ok()
    start = result.one("start")
    assert start["reg_images"] > 0 and start["images"] == 20
    assert int(load_lora(result.final)[1]["ss_num_reg_images"]) == start["reg_images"]


def test_network_weights_continues_from_a_file(tiny_sd1, tmp_path):
    first = train(make_config(tmp_path, tiny_sd1, save_precision="float", output_name="first")).assert_ok()
    trained, _ = load_lora(first.final)
    assert max(v.abs().max() for k, v in trained.items() if "lora_up" in k) > 0

    # continue with a learning rate too small to move anything: the file must come back unchanged
    cfg = make_config(tmp_path, tiny_sd1, save_precision="float", output_name="second", optimizer_type="SGD",
                      learning_rate=1e-12, max_grad_norm=1.0, network_weights=str(first.final))
    second = train(cfg).assert_ok()
    continued, _ = load_lora(second.final)
    assert continued.keys() == trained.keys()
    fit = second.one("start")["network_weights"]
    assert fit["matched"] == fit["file_keys"] == len(trained) and not fit["partial"]
    assert set(second.one("start")["trained"]) == {"unet", "text_encoder"}
    for key in trained:
        torch.testing.assert_close(continued[key], trained[key], atol=1e-9, rtol=0)
    # and training starts where the first run ended: same fixed-noise score with the loaded weights
    assert second.one("start")["eval_loss"] == pytest.approx(first.one("checkpoint")["eval_loss"], rel=1e-4)
    assert second.one("start")["eval_loss"] != pytest.approx(first.one("start")["eval_loss"], rel=1e-6)


def test_network_weights_of_another_rank_is_refused(tiny_sd1, tmp_path):
    first = train(make_config(tmp_path, tiny_sd1, network_dim=2, output_name="first")).assert_ok()
    result = train(make_config(tmp_path, tiny_sd1, network_dim=4, output_name="second",
                               network_weights=str(first.final)))
    assert result.code != 0 and "network_dim" in result.error
    assert not (Path(result.cfg.output_dir) / "second.safetensors").exists()


def test_save_every_n_steps_names_the_step(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, save_every_n_steps=1, max_train_steps=2)).assert_ok()
    out = Path(result.cfg.output_dir)
    assert [Path(e["path"]).name for e in result.of("checkpoint")] == ["tt-step00000001.safetensors", "tt.safetensors"]
    assert (out / "tt-step00000001.safetensors").is_file() and (out / "tt.safetensors").is_file()
    assert result.one("done")["checkpoints"] == [str(out / "tt-step00000001.safetensors"), str(out / "tt.safetensors")]
    assert load_lora(out / "tt-step00000001.safetensors")[1]["ss_steps"] == "1"


def test_sample_prompts_draw_a_png_with_its_prompt(tiny_sd1, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# a comment\n"
        "tt_dog on the beach --n blurry, lowres --w 96 --h 64 --s 2 --l 5.5 --d 42\n",
        encoding="utf-8",
    )
    cfg = make_config(tmp_path, tiny_sd1, sample_prompts=str(prompts), sample_every_n_steps=1,
                      network_train_unet_only=True)
    result = train(cfg).assert_ok()
    sample = result.one("sample")
    path = Path(sample["path"])
    assert sample["step"] == 1 and path.parent == cfg.effective_sample_dir and path.is_file()
    assert "beach" not in path.name
    with Image.open(path) as im:
        assert im.size == (96, 64)
        text = im.text["parameters"]
    assert text.startswith("tt_dog on the beach\n")
    for part in ("Negative prompt: blurry, lowres", "Steps: 2", "CFG scale: 5.5", "Seed: 42", "Size: 96x64"):
        assert part in text, (part, text)


def test_logging_dir_gets_a_tensorboard_file(tiny_sd1, tmp_path):
    logs = tmp_path / "logs"
    train(make_config(tmp_path, tiny_sd1, logging_dir=str(logs), network_train_unet_only=True)).assert_ok()
    files = list(logs.rglob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0


def test_events_file_matches_the_stream(tiny_sd1, tmp_path):
    result = train(make_config(tmp_path, tiny_sd1, network_train_unet_only=True)).assert_ok()
    lines = (Path(result.cfg.output_dir) / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == result.events
    kinds = [e["event"] for e in result.events]
    assert kinds == ["start", "step", "checkpoint", "done"]


# ---- 5. bad inputs ---------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def guarded(tmp_path):
    """A dataset and an earlier checkpoint that a failing run must leave exactly as they were."""
    make_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tt-000001.safetensors").write_bytes(b"an earlier checkpoint")
    before = {"train": snapshot(tmp_path / "train"), "out": snapshot(out)}
    yield tmp_path
    assert snapshot(tmp_path / "train") == before["train"], "the failed run changed the dataset"
    after = snapshot(out)
    assert after.get("tt-000001.safetensors") == before["out"]["tt-000001.safetensors"]
    assert not [name for name in after if name.endswith(".safetensors") and name != "tt-000001.safetensors"]


def test_unknown_config_key_is_named():
    from lib_trainer.trainer.schema import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="netwrk_dim") as info:
        config_from_dict({"network_dim": 4, "netwrk_dim": 8})
    assert "network_dim" not in str(info.value).split("unknown config key(s):")[1].split(".")[0]


def test_unknown_config_key_through_the_command_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('pretrained_model_name_or_path = "x.safetensors"\nnetwrk_dim = 8\n', encoding="utf-8")
    from lib_trainer import deps

    proc = subprocess.run([sys.executable, "-m", "lib_trainer.trainer", str(config)], cwd=tmp_path,
                          env=deps.trainer_env(sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["error"]
    assert "netwrk_dim" in events[0]["message"]


def _bad_checkpoint(tmp: Path, kind: str, good: Path) -> Path:
    if kind == "missing":
        return tmp / "no_such_model.safetensors"
    path = tmp / "not_a_model.safetensors"
    if kind == "garbage":
        path.write_bytes(b"this is a text file, not a checkpoint\n" * 10)
    elif kind == "lora_file":
        from safetensors.torch import save_file

        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(path))
    elif kind == "truncated":  # an interrupted download
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "ckpt_garbage":
        path = tmp / "not_a_model.ckpt"
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind in ("half_copied_folder", "pickled_folder"):  # diffusers folders
        path = tmp / kind
        for name in ("unet", "vae"):
            (path / name).mkdir(parents=True)
            (path / name / "config.json").write_text("{}", encoding="utf-8")
        weights = "diffusion_pytorch_model." + ("safetensors" if kind == "half_copied_folder" else "bin")
        (path / "unet" / weights).write_bytes(b"\x00" * 100)  # its copy broke off
    return path


@pytest.mark.parametrize("kind, words", [
    ("missing", ["not found"]),
    ("garbage", ["not_a_model.safetensors", "not a readable"]),
    ("truncated", ["not_a_model.safetensors", "incomplete"]),
    ("lora_file", ["not a Stable Diffusion checkpoint"]),
    ("ckpt_garbage", ["not_a_model.ckpt", "safetensors"]),
    ("half_copied_folder", ["half_copied_folder/unet", "incomplete"]),
    ("pickled_folder", ["pickled_folder/unet", "safetensors"]),
])
def test_bad_base_model_fails_clearly(tiny_sd1, guarded, kind, words):
    model = _bad_checkpoint(guarded, kind, tiny_sd1)
    result = train(make_config(guarded, model))
    assert result.code != 0 and result.events[-1]["event"] == "error"
    for word in words:
        assert word in result.error, result.error
    assert not result.of("step")


def test_empty_dataset_fails_clearly(tiny_sd1, tmp_path):
    pictures = tmp_path / "train" / "pictures"  # no <repeats>_<concept> folder
    write_picture(pictures / "a.png", (64, 64), seed=1)
    result = train(make_config(tmp_path, tiny_sd1))
    assert result.code != 0 and result.events[-1]["event"] == "error"
    assert "10_concept" in result.error and "pictures" in result.error
    assert (pictures / "a.png").is_file()


def test_broken_pictures_are_skipped_and_named(tiny_sd1, tmp_path):
    train_dir = make_dataset(tmp_path)
    concept = train_dir / "5_tt_dog"
    good = concept / "pic0.png"
    jpeg = concept / "broken.jpg"
    Image.open(good).convert("RGB").save(jpeg, "JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # truncated: a corrupt JPEG
    empty = concept / "empty.png"
    empty.write_bytes(b"")
    result = train(make_config(tmp_path, tiny_sd1, network_train_unet_only=True)).assert_ok()
    warnings = " | ".join(result.warnings)
    assert "broken.jpg" in warnings and "empty.png" in warnings, warnings
    assert result.one("start")["images"] == 20  # the 4 good pictures x 5 repeats
    assert jpeg.is_file() and empty.is_file()  # skipped, not deleted


@pytest.mark.parametrize("overrides, words", [
    (dict(resolution="100,100"), ["resolution", "64"]),
    (dict(max_token_length=100), ["max_token_length", "75, 150 or 225"]),
    (dict(learning_rate=-1e-4), ["learning_rate", "negative"]),
    (dict(save_model_as="ckpt"), ["save_model_as", "safetensors"]),
    # resolution 64 with sd-scripts' default min_bucket_reso 256
    (dict(enable_bucket=True), ["min_bucket_reso (256)", "64"]),
])
def test_bad_settings_fail_clearly(tiny_sd1, guarded, overrides, words):
    result = train(make_config(guarded, tiny_sd1, **overrides))
    assert [e["event"] for e in result.events] == ["error"], result.events
    assert result.code == 2
    for word in words:
        assert word in result.error, result.error


def test_checkpoints_are_scored_on_held_out_pictures_when_there_are_enough(tiny_sd1, tmp_path, monkeypatch):
    from lib_trainer.trainer import data as data_mod
    from lib_trainer.trainer import holdout

    monkeypatch.setattr(holdout, "EVAL_PICTURES", 4)
    trained = set()
    caption_for = data_mod.caption_for
    monkeypatch.setattr(data_mod, "caption_for", lambda cfg, e, rng: trained.add(e.path.name) or caption_for(cfg, e, rng))
    make_dataset(tmp_path, count=20)
    cfg = make_config(tmp_path, tiny_sd1, max_train_steps=None, max_train_epochs=1, train_batch_size=4)
    run = train(cfg)
    assert run.code == 0, run.error
    held = [w["path"] for w in run.of("warning") if "held out" in w["message"]]
    assert len(held) == 2  # one in ten
    start, checkpoint = run.one("start"), run.of("checkpoint")[-1]
    assert start["images"] == 18 * 5 and start["eval_set"] == "held_out" and start["eval_images"] == 2
    assert checkpoint["eval_set"] == "held_out" and math.isfinite(checkpoint["eval_loss"])
    assert len(trained) == 18 and not trained & {Path(p).name for p in held}
    # The same seed holds out the same pictures; 0 trains on all of them and scores a subset.
    again = train(make_config(tmp_path, tiny_sd1, max_train_epochs=1, max_train_steps=None, train_batch_size=4,
                              output_dir=str(tmp_path / "out2")))
    assert [w["path"] for w in again.of("warning") if "held out" in w["message"]] == held
    none = train(make_config(tmp_path, tiny_sd1, max_train_steps=1, eval_holdout_images=0,
                             output_dir=str(tmp_path / "out3")))
    assert none.one("start")["images"] == 20 * 5 and none.one("start")["eval_set"] == "train_subset"
    few = train(make_config(tmp_path / "few", tiny_sd1, max_train_steps=1))
    assert few.one("start")["eval_set"] == "train_subset"
