"""What the loss is made of, against closed forms: the v-prediction target, min-SNR's weights and clip skip.

ᾱ is computed here from the scheduler's config (scaled_linear: β_t = (√β₀ + t·(√β₁ − √β₀)/(T − 1))², ᾱ_t = Π(1 − β)),
not read from the trainer's scheduler. Targets: ε, or v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀. min-SNR-γ (Hang et al. 2023, as
sd-scripts' apply_snr_weight): SNR_t = ᾱ_t/(1 − ᾱ_t), the per-picture MSE weighted by min(SNR, γ)/SNR for ε and
min(SNR, γ)/(SNR + 1) for v. Clip skip n (sd-scripts, and the WebUI's CLIP_stop_at_last_layers): the hidden
state of layer −n passed through the text model's final LayerNorm, i.e. the output of the same encoder with its
last n − 1 layers removed.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.trainer_fixtures import (
    fast_trainer,  # noqa: F401  (fixture)
    load_lora,
    make_config,
    tiny_sd1,  # noqa: F401  (fixture)
    train,
)

pytestmark = pytest.mark.usefixtures("fast_trainer")


def alphas_cumprod(config) -> torch.Tensor:
    assert config["beta_schedule"] == "scaled_linear" and config["num_train_timesteps"] == 1000
    t = torch.arange(1000, dtype=torch.float64)
    start, end = config["beta_start"] ** 0.5, config["beta_end"] ** 0.5
    betas = (start + t * (end - start) / 999) ** 2
    return torch.cumprod(1 - betas, dim=0)


@pytest.fixture
def steps(monkeypatch):
    """Every training step's (scheduler config, x₀, ε, t, prediction, target, loss)."""
    from lib_trainer.trainer import train as train_mod

    seen: list[dict] = []
    predict, loss_for = train_mod.Trainer.predict, train_mod.Trainer.loss_for
    current: dict = {}

    def spy_predict(self, latents, noise, timesteps, *args):
        pred, target = predict(self, latents, noise, timesteps, *args)
        current.update(latents=latents.detach().double(), noise=noise.detach().double(), timesteps=timesteps.clone(),
                       pred=pred.detach().double(), target=target.detach().double())
        return pred, target

    def spy_loss(self, *args):
        current.clear()
        loss = loss_for(self, *args)
        seen.append(dict(current, loss=float(loss.detach()), config=dict(self.noise_scheduler.config)))
        return loss

    monkeypatch.setattr(train_mod.Trainer, "predict", spy_predict)
    monkeypatch.setattr(train_mod.Trainer, "loss_for", spy_loss)
    return seen


@pytest.mark.parametrize("v_prediction", [False, True], ids=["epsilon", "v"])
def test_target_and_min_snr_weights_are_the_closed_forms(tiny_sd1, tmp_path, steps, v_prediction):
    gamma = 1.0
    cfg = make_config(tmp_path, tiny_sd1, v_parameterization=v_prediction, min_snr_gamma=gamma, train_batch_size=4,
                      max_train_steps=4, network_train_unet_only=True)
    result = train(cfg).assert_ok()
    assert len(steps) == 4
    _, metadata = load_lora(result.final)
    assert metadata["ss_min_snr_gamma"] == "1.0" and metadata["ss_v_parameterization"] == str(v_prediction)
    alpha_bar = alphas_cumprod(steps[0]["config"])
    snrs = []
    for step in steps:
        a = alpha_bar[step["timesteps"]].reshape(-1, 1, 1, 1)
        x0, eps = step["latents"], step["noise"]
        expected_target = a.sqrt() * eps - (1 - a).sqrt() * x0 if v_prediction else eps
        assert torch.allclose(step["target"], expected_target, rtol=1e-5, atol=1e-5)
        snr = alpha_bar[step["timesteps"]] / (1 - alpha_bar[step["timesteps"]])
        weight = torch.clamp(snr, max=gamma) / (snr + 1 if v_prediction else snr)
        mse = F.mse_loss(step["pred"], step["target"], reduction="none").mean(dim=(1, 2, 3))
        assert step["loss"] == pytest.approx(float((mse * weight).mean()), rel=1e-4)
        snrs += snr.tolist()
    # both sides of γ were drawn: clipped weights (SNR > γ) and, for ε, weights of exactly 1
    assert min(snrs) < gamma < max(snrs), snrs


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_is_layer_minus_n_through_the_final_layer_norm(tiny_sd1, tmp_path, monkeypatch, clip_skip):
    from lib_trainer.trainer import train as train_mod
    from lib_trainer.trainer.models import load_model

    seen = []
    encode_sd = train_mod.encode_sd

    def spy(text_encoder, ids, skip):
        hidden = encode_sd(text_encoder, ids, skip)
        seen.append((ids.clone(), hidden.detach().clone()))
        return hidden

    monkeypatch.setattr(train_mod, "encode_sd", spy)
    # the text encoder is not trained, so the one loaded here is the one the run encodes with
    result = train(make_config(tmp_path, tiny_sd1, clip_skip=clip_skip, network_train_unet_only=True)).assert_ok()
    assert seen
    _, metadata = load_lora(result.final)
    assert metadata["ss_clip_skip"] == metadata["modelspec.encoder_layer"] == str(clip_skip)
    text_encoder = load_model(str(tiny_sd1)).text_encoders[0]
    layers = text_encoder.text_model.encoder.layers
    assert len(layers) > clip_skip - 1
    cut = copy.deepcopy(text_encoder)
    cut.text_model.encoder.layers = cut.text_model.encoder.layers[: len(layers) - (clip_skip - 1)]
    with torch.no_grad():
        for ids, hidden in seen:
            flat = ids.reshape(-1, ids.shape[-1])
            expected = cut(flat, return_dict=True).last_hidden_state
            assert torch.allclose(hidden, expected, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(hidden, text_encoder(flat).last_hidden_state, atol=1e-3)  # not the last layer
