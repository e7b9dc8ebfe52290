"""End-to-end trainings on the tiny sd1, sd2-v and sdxl models: files, metadata, loss, loading elsewhere, resume."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer_fixtures import load_lora, make_config, make_dataset, single_torch_thread, train  # noqa: F401
from tests.webui_keymap import webui_dropped_keys, webui_network_layer_names, webui_unapplied_modules

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("sd1", "sd2-v", "sdxl")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("models")
    return {arch: write_tiny_checkpoint(arch, folder / f"tiny-{arch}.safetensors") for arch in ARCHS}


@pytest.fixture(scope="module")
def two_epoch_runs(tiny_models, tmp_path_factory):
    """One two-epoch training per architecture, shared by the assertions below."""
    runs = {}
    for arch in ARCHS:
        tmp = tmp_path_factory.mktemp(f"run-{arch}")
        cfg = make_config(
            tmp, tiny_models[arch], max_train_epochs=2, save_every_n_epochs=1, train_batch_size=2,
            network_dim=4, network_alpha=2.0, learning_rate=2e-3, v_parameterization=arch == "sd2-v",
            training_comment="tiny run", logging_dir=str(tmp / "tb"),
        )
        runs[arch] = train(cfg).assert_ok()
    return runs


@pytest.mark.parametrize("arch", ARCHS)
def test_two_epochs_write_named_checkpoints_and_events(two_epoch_runs, arch):
    run = two_epoch_runs[arch]
    start = run.one("start")
    assert start["epochs"] == 2 and start["images"] == 20 and start["steps_per_epoch"] == 10
    assert start["total_steps"] == 20 and start["device"] == "cpu" and start["dtype"] == "float32"
    steps = run.of("step")
    assert [e["step"] for e in steps] == list(range(1, 21))
    assert all(torch.isfinite(torch.tensor(e["loss"])) and e["eta_s"] >= 0 for e in steps)
    out = Path(run.cfg.output_dir)
    assert [Path(e["path"]).name for e in run.of("checkpoint")] == ["tt-000001.safetensors", "tt.safetensors"]
    assert [e["epoch"] for e in run.of("checkpoint")] == [1, 2]
    assert run.one("done")["checkpoints"] == [str(out / "tt-000001.safetensors"), str(out / "tt.safetensors")]
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"
    on_disk = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in on_disk] == [e["event"] for e in run.events]
    assert list(Path(run.cfg.logging_dir).glob("events.out.tfevents.*")), "TensorBoard scalars are written"


def _as_diffusers_folder(checkpoint: Path, folder: Path, v_prediction: bool) -> Path:
    """The checkpoint saved as a diffusers model folder (what diffusers' save_pretrained writes, no network)."""
    from lib_trainer.trainer.models import load_single_file

    model = load_single_file(checkpoint)
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    for i, (te, tok) in enumerate(zip(model.text_encoders, model.tokenizers)):
        suffix = f"_{i + 1}" if i else ""
        te.save_pretrained(folder / f"text_encoder{suffix}", safe_serialization=True)
        tok.save_pretrained(folder / f"tokenizer{suffix}")
    scheduler = dict(model.scheduler_config, prediction_type="v_prediction" if v_prediction else "epsilon")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler), encoding="utf-8")
    return folder


@pytest.mark.parametrize("arch", ARCHS)
def test_a_diffusers_folder_loads_and_trains_like_its_single_file(tiny_models, tmp_path, arch):
    """The same weights as a diffusers folder: the same modules and weights as from the single file, v-prediction
    read from the scheduler's config, a training with the same LoRA keys, and a hash of the folder's weights (the
    disk latent cache and the metadata tell models apart by it)."""
    from lib_trainer.trainer.models import load_diffusers_folder, load_single_file

    folder = _as_diffusers_folder(tiny_models[arch], tmp_path / "model", v_prediction=arch == "sd2-v")
    from_file, from_folder = load_single_file(tiny_models[arch]), load_diffusers_folder(folder)
    assert from_folder.arch == from_file.arch and from_folder.v_prediction == (arch == "sd2-v")
    for a, b in zip([from_file.unet, from_file.vae, *from_file.text_encoders],
                    [from_folder.unet, from_folder.vae, *from_folder.text_encoders]):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = from_file.tokenizers[-1](["tt_dog, a dog"]).input_ids
    assert all(tok(["tt_dog, a dog"]).input_ids == ids for tok in from_folder.tokenizers)

    make_dataset(tmp_path)
    common = dict(max_train_steps=2, train_data_dir=str(tmp_path / "train"))
    file_run = train(make_config(tmp_path / "file", tiny_models[arch], v_parameterization=arch == "sd2-v",
                                 **common)).assert_ok()
    folder_run = train(make_config(tmp_path / "folder", folder, **common)).assert_ok()
    assert folder_run.one("start")["v_prediction"] == (arch == "sd2-v")
    # the first loss is before any update; later ones differ in the last digits (the tiny random UNet's time
    # embedding rounds differently in a from_pretrained module) and Adam's first steps magnify that
    assert folder_run.of("step")[0]["loss"] == pytest.approx(file_run.of("step")[0]["loss"], rel=1e-5)
    expected, _ = load_lora(file_run.final)
    got, metadata = load_lora(folder_run.final)
    assert expected.keys() == got.keys() and all(torch.isfinite(v).all() for v in got.values())
    assert metadata["ss_sd_model_name"] == "model" and metadata["ss_new_sd_model_hash"] == from_folder.new_model_hash

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert load_diffusers_folder(other).new_model_hash == from_folder.new_model_hash  # the weights, not the place
    for part in ("unet", "text_encoder"):  # only fp16 "variant" files, as some folders are published
        for file in (other / part).glob("*.safetensors"):
            file.rename(file.with_suffix(".fp16.safetensors"))
    variant = load_diffusers_folder(other)
    assert torch.equal(variant.unet.conv_in.weight, from_folder.unet.conv_in.weight)
    vae_file = next((other / "vae").glob("diffusion_pytorch_model.*"))
    from safetensors.torch import load_file, save_file

    vae = {k: v * 1.01 if k.endswith("conv_in.weight") else v for k, v in load_file(str(vae_file)).items()}
    save_file(vae, str(vae_file), metadata={"format": "pt"})
    assert load_diffusers_folder(other).new_model_hash != from_folder.new_model_hash


@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_noise_loss_falls_on_tiny_overfit_set(two_epoch_runs, arch):
    run = two_epoch_runs[arch]
    scores = [run.one("start")["eval_loss"]] + [e["eval_loss"] for e in run.of("checkpoint")]
    assert scores[-1] < scores[0], scores


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_keys_dtype_and_metadata(two_epoch_runs, arch):
    run = two_epoch_runs[arch]
    tensors, md = load_lora(run.final)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    modules = {k.split(".")[0] for k in tensors}
    if arch == "sdxl":
        assert any(m.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for m in modules)
        assert not any(m.startswith("lora_unet_down_blocks") for m in modules)
        assert {m.split("_text_model")[0] for m in modules if m.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    else:
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
        assert {m.split("_text_model")[0] for m in modules if m.startswith("lora_te")} == {"lora_te"}
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= tensors.keys()

    assert all(isinstance(v, str) for v in md.values())
    expected_base = {"sd1": "sd_v1", "sd2-v": "sd_v2", "sdxl": "sdxl_base_v1-0"}[arch]
    expected_spec = {"sd1": "stable-diffusion-v1/lora", "sd2-v": "stable-diffusion-v2-768-v/lora",
                     "sdxl": "stable-diffusion-xl-v1-base/lora"}[arch]
    assert md["ss_base_model_version"] == expected_base
    assert md["modelspec.architecture"] == expected_spec
    assert md["modelspec.prediction_type"] == ("v" if arch == "sd2-v" else "epsilon")
    assert md["modelspec.resolution"] == "64x64" and md["ss_resolution"] == "(64, 64)"
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"
    assert md["ss_network_module"] == "networks.lora" and md["ss_output_name"] == "tt"
    assert md["ss_epoch"] == "2" and md["ss_steps"] == "20" and md["ss_num_epochs"] == "2"
    assert md["ss_learning_rate"] == "0.002" and md["ss_training_comment"] == "tiny run"
    assert md["ss_sd_model_name"] == f"tiny-{arch}.safetensors"
    assert md["ss_new_sd_model_hash"] == hashlib.sha256(Path(run.cfg.pretrained_model_name_or_path).read_bytes()).hexdigest()
    assert json.loads(md["ss_tag_frequency"])["5_tt_dog"]["tt_dog"] == 4
    assert json.loads(md["ss_dataset_dirs"]) == {"5_tt_dog": {"n_repeats": 5, "img_count": 4}}
    # sshs_model_hash: sha256 of the tensor bytes after the safetensors header, as sd-scripts computes it
    blob = run.final.read_bytes()
    header = int.from_bytes(blob[:8], "little")
    assert md["sshs_model_hash"] == hashlib.sha256(blob[8 + header:]).hexdigest()
    _, md_epoch1 = load_lora(run.final.with_name("tt-000001.safetensors"))
    assert md_epoch1["ss_epoch"] == "1" and md_epoch1["ss_training_finished_at"] == "None"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_key_lands_on_a_module_in_the_webui(two_epoch_runs, tiny_models, arch):
    """The WebUI's Lora extension drops keys it cannot map without a word: every key must map."""
    from safetensors import safe_open

    with safe_open(str(tiny_models[arch]), framework="pt") as fh:
        layers = webui_network_layer_names(list(fh.keys()), arch)
    tensors, _ = load_lora(two_epoch_runs[arch].final)
    assert webui_dropped_keys(tensors, layers, arch) == []
    assert webui_unapplied_modules({k.split(".")[0] for k in tensors}, layers, arch) == []
    if arch == "sd1":  # SD1.5-shaped: the module count sd-scripts' LoRA has
        modules = {k.split(".")[0] for k in tensors}
        assert len([m for m in modules if m.startswith("lora_unet")]) == 192
        assert len([m for m in modules if m.startswith("lora_te")]) == 72


@pytest.mark.parametrize("arch", ARCHS)
def test_diffusers_load_lora_weights_loads_every_module_and_changes_the_output(two_epoch_runs, tiny_models, arch):
    """diffusers' own load_lora_weights (with its PEFT backend, from the side folder .ci/setup fills: the WebUI's
    transformers 4.30 is too old for it) turns exactly the file's modules into LoRA layers, and the picture
    changes."""
    from lib_trainer import deps
    from tests.diffusers_lora_check import LORA_CHECK_DEPS

    assert (LORA_CHECK_DEPS / "peft").is_dir(), f"{LORA_CHECK_DEPS} is missing: run `bash .ci/setup`"
    env = deps.trainer_env(sys.executable)
    env.update(PYTHONPATH=os.pathsep.join([str(LORA_CHECK_DEPS), env["PYTHONPATH"]]), OMP_NUM_THREADS="1")
    final = two_epoch_runs[arch].final
    proc = subprocess.run([sys.executable, "-m", "tests.diffusers_lora_check", str(tiny_models[arch]), str(final),
                           arch], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tensors, _ = load_lora(final)
    assert result["lora_layers"] == len({k.split(".")[0] for k in tensors})
    assert result["max_change"] > 1e-4


def test_resume_from_saved_state_equals_uninterrupted(tiny_models, tmp_path):
    model = tiny_models["sd2-v"]
    make_dataset(tmp_path)
    common = dict(max_train_epochs=2, save_every_n_epochs=1, save_state=True, v_parameterization=True,
                  train_batch_size=2, shuffle_caption=True, flip_aug=True, caption_tag_dropout_rate=0.2)
    full = train(make_config(tmp_path, model, output_dir=str(tmp_path / "full"), **common)).assert_ok()
    state = tmp_path / "full" / "tt-000001-state"
    assert (state / "train_state.json").is_file()
    resumed = train(make_config(tmp_path, model, output_dir=str(tmp_path / "resumed"), resume=str(state), **common)).assert_ok()
    assert resumed.one("start")["resumed_from_step"] == 10
    assert [e["step"] for e in resumed.of("step")] == list(range(11, 21))
    a, _ = load_lora(full.final)
    b, _ = load_lora(resumed.final)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _trainer_process(config: Path) -> subprocess.Popen:
    from lib_trainer import deps

    # one thread like the in-process runs: float sums in another order would differ in the last bits
    env = dict(deps.trainer_env(sys.executable), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lib_trainer.trainer", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tiny_models, tmp_path):
    """Stop (SIGINT) mid-run: a checkpoint and a state are written, `done` says interrupted, exit 0; resuming from
    that state ends with exactly the weights of a run that was never stopped."""
    from lib_trainer.trainer.schema import save_config

    model = tiny_models["sd2-v"]
    make_dataset(tmp_path)
    common = dict(max_train_steps=16, v_parameterization=True, train_batch_size=1)
    full = train(make_config(tmp_path, model, output_dir=str(tmp_path / "full"), **common)).assert_ok()

    cfg = make_config(tmp_path, model, output_dir=str(tmp_path / "stopped"), **common)
    save_config(cfg, tmp_path / "stopped.toml")
    proc = _trainer_process(tmp_path / "stopped.toml")
    events = []
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        events.append(json.loads(line))
        if events[-1]["event"] == "step" and events[-1]["step"] == 3:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    done = events[-1]
    assert done["event"] == "done" and done["interrupted"] is True
    stopped_at = done["steps"]
    assert 3 <= stopped_at < 16
    checkpoint = tmp_path / "stopped" / f"tt-step{stopped_at:08d}.safetensors"
    assert done["checkpoints"] == [str(checkpoint)] and checkpoint.is_file()

    resumed = train(make_config(tmp_path, model, output_dir=str(tmp_path / "resumed"),
                                resume=str(tmp_path / "stopped" / f"tt-step{stopped_at:08d}-state"), **common)).assert_ok()
    assert resumed.of("step")[0]["step"] == stopped_at + 1
    a, _ = load_lora(full.final)
    b, _ = load_lora(resumed.final)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_subprocess_reports_garbage_free_event_lines_and_config_errors(tmp_path):
    """Through the real command: a config error is an error event on stdout and exit code 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text('pretrained_model_name_or_path = "x"\nnetwork_dimension = 8\n', encoding="utf-8")
    proc = _trainer_process(bad)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "error" and "network_dimension" in events[-1]["message"]


def test_cuda_out_of_memory_ends_with_advice_and_keeps_checkpoints(tiny_models, tmp_path, monkeypatch):
    """An OOM in the middle of a run (simulated: there is no GPU here) ends with an error event that says what to
    lower, and the checkpoint written before it stays."""
    from lib_trainer.trainer.train import Trainer

    real = Trainer.loss_for
    calls = {"n": 0}

    def failing_loss(self, batch, epoch, index):
        calls["n"] += 1
        if epoch == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch, epoch, index)

    monkeypatch.setattr(Trainer, "loss_for", failing_loss)
    cfg = make_config(tmp_path, tiny_models["sd2-v"], max_train_epochs=2, save_every_n_epochs=1,
                      v_parameterization=True, train_batch_size=4)
    result = train(cfg)
    assert result.code == 3 and result.events[-1]["event"] == "error"
    message = result.error
    for advice in ("train_batch_size", "resolution", "gradient_checkpointing", "cache_latents", "kept"):
        assert advice in message
    kept = Path(cfg.output_dir) / "tt-000001.safetensors"
    assert kept.is_file() and result.events[-1]["checkpoints"] == [str(kept)]
