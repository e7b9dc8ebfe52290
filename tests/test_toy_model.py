"""The toy base model's plumbing: the way from the trainer's diffusers modules back to the SD1 file is exact, the
latent rescaling gives SD1-scaled latents without changing what the VAE draws, and the pretraining script writes a
loadable fp16 SD1 file, resuming an interrupted run to the very same file (tiny step counts and a small picture
pool: seconds, not the hour of the real run)."""
from __future__ import annotations

import json

import pytest
import torch

from lib_trainer.demo import toy_model
from tests.trainer_fixtures import single_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def random_toy(tmp_path_factory):
    path = toy_model.write_random(tmp_path_factory.mktemp("toy") / "random.safetensors", seed=3)
    return path, toy_model.load_parts(path)


def test_exporting_the_loaded_modules_gives_back_the_file_tensor_for_tensor(random_toy):
    from safetensors.torch import load_file

    path, model = random_toy
    original = load_file(str(path))
    exported = toy_model.export_state_dict(toy_model.parts_of(model), dtype=torch.float32)
    assert set(exported) == set(original)
    for key, tensor in original.items():
        assert exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key], tensor), key


def test_the_file_is_sd1_shaped(random_toy):
    from safetensors.torch import load_file

    state = load_file(str(random_toy[0]))
    assert state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 128)
    assert state["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape == (77, 128)
    assert state["cond_stage_model.transformer.text_model.final_layer_norm.bias"].abs().mean() > 0
    assert sum(k.startswith("first_stage_model.encoder.down.") and k.endswith(".downsample.conv.weight")
               for k in state) == 3  # four levels, three downsamplings: x8
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in state)


def test_rescaled_latents_are_unit_std_and_decode_the_same(random_toy):
    _, model = random_toy
    vae = model.vae.eval()
    torch.manual_seed(0)
    pictures = torch.rand(8, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(pictures).latent_dist
        drawn_before = vae.decode(before.mean).sample
        mean, std = before.mean.mean(dim=(0, 2, 3)), before.mean.std(dim=(0, 2, 3))
        saved = {k: v.clone() for k, v in vae.state_dict().items()}
        try:
            toy_model.rescale_latents(vae, mean, std, 0.18215)
            after = vae.encode(pictures).latent_dist
            drawn_after = vae.decode(after.mean).sample
        finally:
            vae.load_state_dict(saved)
    scaled = after.mean * 0.18215
    assert torch.allclose(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(scaled.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    # the posterior's std scales with the mean: log-variance shifted by 2 log c
    c = 1 / (0.18215 * std)
    assert torch.allclose(after.std, before.std * c.view(1, -1, 1, 1), rtol=1e-3)
    assert torch.allclose(drawn_after, drawn_before, atol=1e-4)


@pytest.fixture
def tiny_pretraining(monkeypatch):
    """The pretraining with a 48-picture pool, batches of 4 and a save every 2 steps, without the judge's look at
    the drawings (tests/test_toy_quality.py looks at the committed model's)."""
    from lib_trainer.demo import pretrain

    for name, value in (("POOL_SIZE", 48), ("HELD_OUT", 8), ("VAE_BATCH", 4), ("UNET_BATCH", 4),
                        ("SAVE_EVERY", 2), ("UNET_WARMUP", 2)):
        monkeypatch.setattr(pretrain, name, value)
    monkeypatch.setattr(pretrain, "judged_drawings", lambda checkpoint, work: None)  # a minute of drawing
    return pretrain


def tensors_and_metadata(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a file; compared as values, the header's key order being the writer's own."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def test_pretraining_writes_an_fp16_sd1_file_and_resumes_to_the_same_file(tiny_pretraining, tmp_path, capsys,
                                                                          monkeypatch):
    from safetensors import safe_open

    from lib_trainer.trainer.models import load_single_file

    pretrain = tiny_pretraining
    args = ["--seed", "1", "--vae-steps", "3", "--unet-steps", "4", "--threads", "1"]
    straight = tmp_path / "straight.safetensors"
    assert pretrain.main(["--out", str(straight), "--work", str(tmp_path / "w1"), *args]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["vae_steps"] == 3 and summary["unet_steps"] == 4 and summary["seed"] == 1

    with safe_open(str(straight), framework="pt") as fh:
        meta = fh.metadata()
        assert {fh.get_tensor(k).dtype for k in fh.keys() if fh.get_tensor(k).is_floating_point()} == {torch.float16}
    assert meta["train_tools_toy"] == "sd1" and meta["modelspec.resolution"] == "64x64"
    loaded = load_single_file(straight)
    assert loaded.arch == "sd1"
    notes = json.loads(straight.with_suffix(".json").read_text(encoding="utf-8"))
    assert notes["command"].endswith("--seed 1 --vae-steps 3 --unet-steps 4")
    assert [h["step"] for h in notes["loss_history"]["unet"]] == [4]
    assert len(notes["sessions"]) == 1 and notes["stage_minutes"]["unet"] >= 0

    # the same run stopped after the UNet's state at step 2 was saved, then started again
    original_run = pretrain.Stage.run

    def stopped_at_two(self, step_fn, lr_at, every=50):
        def step(i):
            if self.name == "unet" and i == 2:
                raise KeyboardInterrupt
            return step_fn(i)
        return original_run(self, step, lr_at, every)

    resumed = tmp_path / "resumed.safetensors"
    work = tmp_path / "w2"
    monkeypatch.setattr(pretrain.Stage, "run", stopped_at_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(["--out", str(resumed), "--work", str(work), *args])
    monkeypatch.setattr(pretrain.Stage, "run", original_run)
    assert not resumed.exists()
    partial = tmp_path / "partial.safetensors"
    assert pretrain.main(["--out", str(partial), "--work", str(work), "--export-now", *args]) == 0
    assert json.loads(partial.with_suffix(".json").read_text(encoding="utf-8"))["unet_steps_trained"] == 2
    assert json.loads(tensors_and_metadata(partial)[1]["train_tools_toy_steps"]) == {"vae": 3, "unet": 2}
    assert pretrain.main(["--out", str(resumed), "--work", str(work), *args]) == 0
    assert "unet: resuming at step 2 of 4" in capsys.readouterr().out
    (want, want_meta), (got, got_meta) = tensors_and_metadata(straight), tensors_and_metadata(resumed)
    assert got_meta == want_meta and set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert len(json.loads(resumed.with_suffix(".json").read_text(encoding="utf-8"))["sessions"]) == 2  # not the export

    with pytest.raises(SystemExit):  # another step count cannot continue that run
        pretrain.main(["--out", str(resumed), "--work", str(work), "--seed", "1", "--vae-steps", "3",
                       "--unet-steps", "5"])
