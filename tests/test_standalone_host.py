"""What only the standalone (diffusers) host does: its checkpoint folders, the embedded tiny model, LyCORIS
files of every type and architecture, exact infotext, caches, and the features it does not have."""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_trainer.hosts.base import CheckpointInfo, HostError, LoraSpec, Txt2ImgRequest
from lib_trainer.hosts.standalone import StandaloneHost, safetensors_data_hash
from tests.host_contract import contract_lora, pixels  # noqa: F401 — fixture found by name
from tests.trainer_fixtures import fast_trainer, make_config, tiny_sd1, train  # noqa: F401


pytestmark = pytest.mark.usefixtures("fast_trainer")


@pytest.fixture(scope="module")
def host(tiny_sd1, tmp_path_factory) -> StandaloneHost:
    return StandaloneHost(tmp_path_factory.mktemp("ws"), [tiny_sd1.parent], device="cpu")


def request(checkpoint, **changes) -> Txt2ImgRequest:
    values = dict(prompt="tt_dog, dog", seed=3, steps=3, width=64, height=64, checkpoint=None if checkpoint is None else str(checkpoint))
    values.update(changes)
    return Txt2ImgRequest(**values)


def draw(host, checkpoint, **changes) -> np.ndarray:
    return pixels(host.txt2img(request(checkpoint, **changes)).image)


# ---- checkpoints --------------------------------------------------------------------------------------------------

def test_checkpoint_folders_are_scanned_and_architectures_detected(tmp_path, tiny_sd1, contract_lora):
    import torch
    from safetensors.torch import load_file

    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    one, two = tmp_path / "one", tmp_path / "two"
    (one / "sub").mkdir(parents=True)
    two.mkdir()
    shutil.copy(tiny_sd1, one / "sub" / "a.safetensors")
    shutil.copy(tiny_sd1, one / "a.safetensors")
    shutil.copy(tiny_sd1, two / "a.safetensors")  # the same title in both folders
    write_tiny_checkpoint("sdxl", one / "xl.safetensors")
    write_tiny_checkpoint("sd2", one / "v.safetensors")
    (one / "v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n", encoding="utf-8")
    write_tiny_checkpoint("sd2", one / "base2.safetensors")
    torch.save(load_file(str(tiny_sd1)), one / "old.ckpt")
    shutil.copy(contract_lora, one / "stray_lora.safetensors")
    (one / ".cache").mkdir()
    shutil.copy(tiny_sd1, one / ".cache" / "hidden.safetensors")
    (one / "notes.txt").write_text("not a model", encoding="utf-8")
    lora_dir = one / "Lora"  # a Lora folder inside a checkpoint folder is not scanned
    lora_dir.mkdir()
    shutil.copy(contract_lora, lora_dir / "x.safetensors")

    host = StandaloneHost(tmp_path / "ws", [one, two], lora_dir=lora_dir)
    listing = {c.title: c for c in host.checkpoints()}
    assert set(listing) == {"a.safetensors (one)", "a.safetensors (two)", "base2.safetensors", "old.ckpt",
                            "stray_lora.safetensors", "sub/a.safetensors", "v.safetensors", "xl.safetensors"}
    arch = {title: info.arch for title, info in listing.items()}
    assert arch == {"a.safetensors (one)": "sd1", "a.safetensors (two)": "sd1", "base2.safetensors": "sd2",
                    "old.ckpt": "sd1", "stray_lora.safetensors": "unknown", "sub/a.safetensors": "sd1",
                    "v.safetensors": "sd2-v", "xl.safetensors": "sdxl"}
    assert listing["sub/a.safetensors"].path == os.path.abspath(one / "sub" / "a.safetensors")

    (two / "new.safetensors").write_bytes((two / "a.safetensors").read_bytes())
    assert "new.safetensors" not in {c.title for c in host.checkpoints()}, "the listing is cached"
    assert "new.safetensors" in {c.title for c in host.checkpoints(refresh=True)}
    with pytest.raises(HostError, match="stray_lora"):
        host.txt2img(request(listing["stray_lora.safetensors"].path))


def test_no_checkpoint_at_all_says_where_to_put_one(tmp_path):
    host = StandaloneHost(tmp_path)
    assert host.checkpoints() == []
    with pytest.raises(HostError, match="Stable-diffusion"):
        host.txt2img(Txt2ImgRequest(prompt="x", width=64, height=64, steps=1))


def test_embedded_tiny_model_is_listed_and_written_on_first_use(tmp_path):
    embedded = tmp_path / "app" / "tiny.safetensors"
    host = StandaloneHost(tmp_path, embedded_tiny=embedded)
    # listed at its own size (64 px) before it is written, so the tab's defaults fit it
    assert host.checkpoints() == [CheckpointInfo(title="tiny test model (embedded)", path=str(embedded), arch="sd1",
                                                 resolution=64)]
    assert not embedded.exists()
    result = host.txt2img(Txt2ImgRequest(prompt="x", seed=1, steps=2, width=64, height=64))  # the current one
    assert embedded.is_file() and result.image.size == (64, 64)
    by_title = host.txt2img(Txt2ImgRequest(prompt="x", seed=1, steps=2, width=64, height=64,
                                           checkpoint="tiny test model (embedded)"))
    assert np.array_equal(pixels(by_title.image), pixels(result.image))
    digest = hashlib.sha256(embedded.read_bytes()).hexdigest()[:10]
    assert host.checkpoints(refresh=True)[0].hash == digest and f"Model hash: {digest}" in result.infotext
    assert host.checkpoints()[0].resolution == 64  # from the written file's modelspec.resolution


def test_the_last_checkpoint_used_is_the_current_one(tmp_path, tiny_sd1):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    other = write_tiny_checkpoint("sd1", tmp_path / "models" / "zz_other.safetensors", seed=7)
    host = StandaloneHost(tmp_path, [tmp_path / "models", tiny_sd1.parent], max_pipelines=1)
    first = host.checkpoints()[0]
    assert first.path == str(other)
    assert np.array_equal(draw(host, tiny_sd1), draw(host, None)), "None must mean the checkpoint used last"
    from_other = draw(host, other)
    assert not np.array_equal(from_other, draw(host, tiny_sd1))
    assert len(host._pipelines) == 1, "max_pipelines=1 keeps one model in memory"
    assert np.array_equal(draw(host, other), from_other), "a reloaded model draws the same"


# ---- txt2img --------------------------------------------------------------------------------------------------

def test_infotext_is_in_the_webui_format(host, tiny_sd1, contract_lora):
    result = host.txt2img(request(
        tiny_sd1, prompt="a dog, red ball", negative_prompt="blurry, cat", sampler="DPM++ 2M Karras",
        cfg_scale=7.5, seed=5, clip_skip=2, loras=[LoraSpec(str(contract_lora), 0.8)],
    ))
    model_hash = hashlib.sha256(tiny_sd1.read_bytes()).hexdigest()[:10]
    lora_hash = safetensors_data_hash(contract_lora)[:12]
    assert result.infotext == (
        "a dog, red ball <lora:tt:0.8>\n"
        "Negative prompt: blurry, cat\n"
        f"Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 5, Size: 64x64, "
        f"Model hash: {model_hash}, Model: tiny_sd1, Clip skip: 2, Lora hashes: \"tt: {lora_hash}\""
    )
    assert result.image.info["parameters"] == result.infotext
    from tests.trainer_fixtures import load_lora

    assert load_lora(contract_lora)[1]["sshs_model_hash"][:12] == lora_hash, "the hash sd-scripts and the WebUI show"


def test_clip_skip_is_honoured(host, tiny_sd1):
    assert not np.array_equal(draw(host, tiny_sd1, clip_skip=1), draw(host, tiny_sd1, clip_skip=2))
    assert np.array_equal(draw(host, tiny_sd1, clip_skip=0), draw(host, tiny_sd1, clip_skip=1))


def test_the_same_file_twice_adds_up(host, tiny_sd1, contract_lora):
    base = draw(host, tiny_sd1)
    full = draw(host, tiny_sd1, loras=[LoraSpec(str(contract_lora), 1.0)])
    halves = host.txt2img(request(tiny_sd1, loras=[LoraSpec(str(contract_lora), 0.5)] * 2))
    assert halves.loras_applied == [str(contract_lora)] * 2
    assert np.abs(pixels(halves.image) - full).mean() < 0.1 * np.abs(full - base).mean()
    assert np.array_equal(draw(host, tiny_sd1), base)


def test_a_rewritten_lora_file_is_read_again(host, tiny_sd1, contract_lora, tmp_path):
    other = train(make_config(tmp_path / "other", tiny_sd1, max_train_steps=3, learning_rate=1e-2, seed=99))
    other.assert_ok()
    moving = tmp_path / "moving.safetensors"
    shutil.copy(contract_lora, moving)
    first = draw(host, tiny_sd1, loras=[LoraSpec(str(moving), 1.0)])
    assert np.array_equal(first, draw(host, tiny_sd1, loras=[LoraSpec(str(contract_lora), 1.0)]))
    tmp = tmp_path / "moving.tmp"
    shutil.copy(other.final, tmp)
    tmp.replace(moving)  # how the trainer writes: a new file over the old name
    assert np.array_equal(draw(host, tiny_sd1, loras=[LoraSpec(str(moving), 1.0)]),
                          draw(host, tiny_sd1, loras=[LoraSpec(str(other.final), 1.0)]))


NETWORKS = {
    "locon": dict(conv_dim=2, conv_alpha=1.0),
    "loha": dict(network_module="lycoris.kohya", network_args=["algo=loha"]),
    "lokr": dict(network_module="lycoris.kohya", network_args=["algo=lokr"]),
    "dora": dict(network_module="lycoris.kohya", network_args=["algo=lora", "dora_wd=True"]),
}


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_every_network_type_applies_and_goes_away(host, tiny_sd1, tmp_path, kind):
    run = train(make_config(tmp_path, tiny_sd1, max_train_steps=2, learning_rate=1e-2, **NETWORKS[kind]))
    run.assert_ok()
    base = draw(host, tiny_sd1)
    result = host.txt2img(request(tiny_sd1, loras=[LoraSpec(str(run.final), 1.0)]))
    assert result.loras_applied == [str(run.final)]
    assert not np.array_equal(pixels(result.image), base), kind
    assert np.array_equal(draw(host, tiny_sd1), base), kind


def test_sdxl_lora_applies_through_its_ldm_names(tmp_path, contract_lora):
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    xl = write_tiny_checkpoint("sdxl", tmp_path / "models" / "tiny-xl.safetensors")
    run = train(make_config(tmp_path / "train", xl, max_train_steps=2, learning_rate=1e-2)).assert_ok()
    from tests.trainer_fixtures import load_lora

    assert any(k.startswith("lora_unet_input_blocks_") for k in load_lora(run.final)[0]), "LDM names in the file"
    host = StandaloneHost(tmp_path, [tmp_path / "models"], device="cpu")
    base = draw(host, xl, clip_skip=2)
    assert np.array_equal(base, draw(host, xl)), "SDXL ignores clip skip, like the WebUI"
    assert not np.array_equal(draw(host, xl, loras=[LoraSpec(str(run.final), 1.0)]), base)
    assert np.array_equal(draw(host, xl), base)
    with pytest.raises(HostError, match=r"tt\.safetensors does not fit checkpoint tiny-xl"):
        host.txt2img(request(xl, loras=[LoraSpec(str(contract_lora), 1.0)]))
    assert np.array_equal(draw(host, xl), base)


def test_files_that_are_not_loras_raise_naming_the_file(host, tiny_sd1, tmp_path):
    damaged = tmp_path / "damaged-000002.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(HostError, match="damaged-000002"):
        host.txt2img(request(tiny_sd1, loras=[LoraSpec(str(damaged), 1.0)]))
    with pytest.raises(HostError, match="tiny_sd1.safetensors is not a LoRA"):
        host.txt2img(request(tiny_sd1, loras=[LoraSpec(str(tiny_sd1), 1.0)]))
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(HostError, match="nothing.safetensors"):
        host.txt2img(request(tiny_sd1, loras=[LoraSpec(str(missing), 0.0)]))


def test_requests_from_two_threads_run_one_at_a_time(host, tiny_sd1, contract_lora):
    seeds = [11, 12, 13, 14]
    expected = {s: draw(host, tiny_sd1, seed=s, loras=[LoraSpec(str(contract_lora), s % 2)]) for s in seeds}
    got: dict = {}

    def work(seed):
        got[seed] = draw(host, tiny_sd1, seed=seed, loras=[LoraSpec(str(contract_lora), seed % 2)])

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(np.array_equal(got[s], expected[s]) for s in seeds)


# ---- what the standalone host does not have ------------------------------------------------------------------

def test_missing_features_say_so(host, tmp_path):
    assert host.taggers() == [] and host.upscalers() == []
    with pytest.raises(HostError) as err:
        host.tag("deepbooru", Image.new("RGB", (8, 8)))
    assert str(err.value) == ("This host has no tagger: captioning needs the WebUI (DeepBooru, BLIP or the WD14 "
                              "tagger). Manual captions still work.")
    with pytest.raises(HostError, match="no upscaler"):
        host.upscale(Image.new("RGB", (8, 8)), "R-ESRGAN 4x+", 2)
    assert host.send_to_txt2img("<lora:x:1>") is False


def test_folders_default_to_the_workspace_and_gpu_calls_are_counted(tmp_path):
    host = StandaloneHost(tmp_path)
    assert host.lora_dir() == tmp_path / "models" / "Lora" and host.lora_dir().is_dir()
    assert host.outputs_dir() == tmp_path / "outputs" and host.outputs_dir().is_dir()
    custom = StandaloneHost(tmp_path, lora_dir=tmp_path / "L", outputs_dir=tmp_path / "O")
    assert custom.lora_dir() == tmp_path / "L" and custom.outputs_dir() == tmp_path / "O"
    host.release_gpu()
    host.release_gpu()
    host.restore_gpu()
    assert (host.release_calls, host.restore_calls) == (2, 1)
