"""The flow-matching objective against closed forms: noise levels, their sampling distributions, inputs, target,
prediction types, the 2x2 packing and the position ids."""
from __future__ import annotations

import math

import pytest
import torch

from lib_trainer.trainer import flow_matching as fm

N = 40000  # samples for the distribution checks: the standard error of a mean of N(0, 1) draws is 0.005


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_discrete_flow_shift_formula():
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(fm.shift_sigmas(s, 3.0), 3 * s / (1 + 2 * s))
    assert torch.allclose(fm.shift_sigmas(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    assert torch.equal(fm.shift_sigmas(s, 1.0), s)
    table = fm.scheduler_sigmas(fm.FlowMatchingConfig(discrete_flow_shift=3.0))
    unshifted = torch.linspace(1, 1 / 1000, 1000)
    assert torch.allclose(table, fm.shift_sigmas(unshifted, 3.0), atol=1e-6)  # diffusers' scheduler, same formula


def test_flux_shift_is_linear_in_the_token_count():
    assert fm.flux_mu(256) == pytest.approx(0.5) and fm.flux_mu(4096) == pytest.approx(1.15)
    assert fm.flux_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)
    mu = fm.flux_mu(4096)
    assert float(fm.time_shift(mu, torch.tensor(0.5))) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1))


def test_uniform_sampling():
    s = fm.sample_sigmas(fm.FlowMatchingConfig(timestep_sampling="uniform"), N, (64, 64), _gen())
    assert 0 <= float(s.min()) and float(s.max()) < 1
    assert float(s.mean()) == pytest.approx(0.5, abs=0.01) and float(s.var()) == pytest.approx(1 / 12, abs=0.005)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_sigmoid_sampling_is_a_logit_normal(scale):
    s = fm.sample_sigmas(fm.FlowMatchingConfig(timestep_sampling="sigmoid", sigmoid_scale=scale), N, (64, 64), _gen())
    z = _logit(s.double())
    assert float(z.mean()) == pytest.approx(0.0, abs=0.03 * scale)
    assert float(z.std()) == pytest.approx(scale, rel=0.03)


def test_shift_sampling_is_the_shifted_logit_normal():
    cfg = fm.FlowMatchingConfig(timestep_sampling="shift", discrete_flow_shift=3.1582)
    s = fm.sample_sigmas(cfg, N, (64, 64), _gen()).double()
    unshifted = s / (cfg.discrete_flow_shift - (cfg.discrete_flow_shift - 1) * s)  # the formula's inverse
    z = _logit(unshifted)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.03) and float(z.std()) == pytest.approx(1.0, rel=0.03)
    assert float(s.median()) == pytest.approx(cfg.discrete_flow_shift / (1 + cfg.discrete_flow_shift), abs=0.01)


def test_flux_shift_sampling_depends_on_the_resolution():
    cfg = fm.FlowMatchingConfig(timestep_sampling="flux_shift")
    for hw, tokens in (((32, 32), 256), ((128, 128), 4096)):
        s = fm.sample_sigmas(cfg, N, hw, _gen()).double()
        mu = fm.flux_mu(tokens)
        unshifted = 1 / (1 + math.exp(mu) * (1 / s - 1))  # time_shift's inverse
        assert float(_logit(unshifted).mean()) == pytest.approx(0.0, abs=0.03)
        assert float(s.median()) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), abs=0.01)


def test_sigma_sampling_draws_the_scheduler_s_levels():
    cfg = fm.FlowMatchingConfig(timestep_sampling="sigma", discrete_flow_shift=1.0)
    s = fm.sample_sigmas(cfg, N, (64, 64), _gen())
    table = fm.scheduler_sigmas(cfg)
    assert torch.isin(s, table).all()
    assert float(s.mean()) == pytest.approx(float(table.mean()), abs=0.01)
    lognorm = fm.sample_sigmas(fm.FlowMatchingConfig(weighting_scheme="logit_normal", logit_mean=1.0,
                                                     discrete_flow_shift=1.0), N, (64, 64), _gen())
    # u = sigmoid(N(1, 1)) indexes a table that runs from 1 down to 0: sigma ~ 1 - u, median 1 - sigmoid(1)
    assert float(lognorm.median()) == pytest.approx(1 - 1 / (1 + math.exp(-1)), abs=0.01)


def test_noisy_latents_target_and_prediction_types_for_known_inputs():
    latents = torch.full((2, 16, 4, 4), 2.0)
    noise = torch.full((2, 16, 4, 4), 5.0)
    sigmas = torch.tensor([0.25, 1.0])
    noisy = fm.noisy_latents(latents, noise, sigmas)
    assert torch.equal(noisy[0], torch.full((16, 4, 4), 2.75)) and torch.equal(noisy[1], noise[1])
    target = fm.velocity_target(latents, noise)
    assert torch.equal(target, torch.full_like(latents, 3.0))
    velocity = target.clone()  # what a perfect model predicts
    raw, w = fm.apply_model_prediction_type(fm.FlowMatchingConfig(model_prediction_type="raw"), velocity, noisy, sigmas)
    assert torch.equal(raw, velocity) and w is None
    add, _ = fm.apply_model_prediction_type(fm.FlowMatchingConfig(model_prediction_type="additive"), velocity,
                                            noisy, sigmas)
    assert torch.equal(add, velocity + noisy)
    scaled, w = fm.apply_model_prediction_type(fm.FlowMatchingConfig(model_prediction_type="sigma_scaled"),
                                               velocity, noisy, sigmas)
    assert torch.allclose(scaled, latents)  # x_sigma - sigma * v = x0, compared with n - x0 as in sd-scripts
    assert torch.equal(w, torch.ones(2, 1, 1, 1))
    sqrt_w = fm.loss_weighting("sigma_sqrt", sigmas)
    assert torch.allclose(sqrt_w, torch.tensor([16.0, 1.0]))
    cos_w = fm.loss_weighting("cosmap", torch.tensor([0.5]))
    assert float(cos_w) == pytest.approx(2 / (math.pi * 0.5))
    assert torch.equal(fm.flow_matching_loss(velocity, target), torch.zeros(2))
    assert torch.equal(fm.flow_matching_loss(velocity + 1, target, torch.tensor([2.0, 3.0]).view(2, 1, 1, 1)),
                       torch.tensor([2.0, 3.0]))


def test_packing_puts_each_2x2_patch_in_one_token_and_unpacking_inverts_it():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 10)
    packed = fm.pack_latents(latents)
    assert packed.shape == (2, 15, 64)
    b, c, i, j, dy, dx = 1, 5, 2, 3, 1, 0
    assert packed[b, i * 5 + j, c * 4 + dy * 2 + dx] == latents[b, c, 2 * i + dy, 2 * j + dx]
    assert torch.equal(fm.unpack_latents(packed, 6, 10), latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    with pytest.raises(ValueError, match="divisible by 16 px"):
        fm.pack_latents(torch.zeros(1, 16, 5, 4))


def test_position_ids_and_guidance():
    from diffusers import FluxPipeline

    ids = fm.image_ids(6, 10)
    assert ids.shape == (15, 3) and ids[2 * 5 + 3].tolist() == [0.0, 2.0, 3.0]
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 6, 10, "cpu", torch.float32))
    assert torch.equal(fm.text_ids(7), torch.zeros(7, 3))
    cfg = fm.FlowMatchingConfig(guidance_scale=1.0)
    assert torch.equal(fm.guidance_input(cfg, 3, guidance_embeds=True), torch.ones(3))
    assert fm.guidance_input(cfg, 3, guidance_embeds=False) is None


def test_a_batch_is_reproducible_from_its_generator_and_its_loss_is_zero_for_the_true_velocity():
    cfg = fm.FlowMatchingConfig(timestep_sampling="shift", model_prediction_type="raw")
    latents = torch.randn(3, 16, 4, 6)
    a = fm.prepare_batch(cfg, latents, True, _gen(5))
    b = fm.prepare_batch(cfg, latents, True, _gen(5))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.sigmas, b.sigmas)
    assert torch.equal(a.noisy, fm.noisy_latents(latents, a.noise, a.sigmas))
    assert torch.equal(fm.batch_loss(cfg, a, fm.pack_latents(a.target)), torch.zeros(3))


@pytest.mark.parametrize("key, value", [("timestep_sampling", "logsnr"), ("model_prediction_type", "eps"),
                                        ("weighting_scheme", "snr"), ("discrete_flow_shift", 0.0)])
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=key):
        fm.FlowMatchingConfig(**{key: value})
