"""The FLUX.1 pieces fit together the way the training loop will use them: a LoRA on the tiny transformer learns
one picture with the flow-matching objective (the loss at fixed noise levels falls), the file it is saved to in the
kohya layout gives back the same network, and an fp8 base trains its LoRA under bf16 autocast."""
from __future__ import annotations

import torch

from lib_trainer.trainer import flow_matching as fm
from lib_trainer.trainer import flux_lora as fl
from lib_trainer.trainer.flux_attention import install_text_mask
from lib_trainer.trainer.flux_text import encode_prompts
from tests.flux_fixtures import load_tiny, lora_network, tiny_flux  # noqa: F401 — fixture by name

# what sd-scripts' docs/flux_train_network.md recommends for FLUX.1 dev
FLOW = fm.FlowMatchingConfig(timestep_sampling="flux_shift", model_prediction_type="raw", guidance_scale=1.0)


def _latents(model) -> torch.Tensor:
    picture = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    with torch.no_grad():
        z = model.vae.encode(picture).latent_dist.mean
    return fm.to_model_latents(z, model.vae.config.scaling_factor, model.vae.config.shift_factor)


def _loss(model, batch, conds, mask_processor=None) -> torch.Tensor:
    transformer = model.transformer
    with mask_processor.masking(conds.t5_attn_mask) if mask_processor else torch.enable_grad():
        out = transformer(hidden_states=batch.packed.to(transformer.dtype), timestep=batch.sigmas,
                          guidance=batch.guidance, pooled_projections=conds.pooled.to(transformer.dtype),
                          encoder_hidden_states=conds.t5_out.to(transformer.dtype), txt_ids=conds.txt_ids,
                          img_ids=batch.img_ids).sample
    return fm.batch_loss(FLOW, batch, out).mean()


def test_a_lora_learns_one_picture_and_its_kohya_file_gives_it_back(tiny_flux):
    model = load_tiny(tiny_flux["dev"])
    model.transformer.requires_grad_(False)
    model.clip_l.requires_grad_(False)
    processor = install_text_mask(model.transformer)
    torch.manual_seed(0)
    network = lora_network(model.transformer, model.clip_l, dim=4, alpha=4.0, random_ups=False,
                           apply_text_encoder=False)
    latents = _latents(model)
    with torch.no_grad():
        conds = encode_prompts(model, ["a photo of sks dog"], apply_t5_attn_mask=True, t5_max_length=16)
    fixed = [fm.prepare_batch(FLOW, latents, model.guidance_embeds, sigmas=torch.tensor([s]),
                              generator=torch.Generator().manual_seed(i)) for i, s in enumerate((0.2, 0.5, 0.8))]

    def score() -> float:
        with torch.no_grad():
            return sum(float(_loss(model, b, conds, processor)) for b in fixed) / len(fixed)

    before = score()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    for step in range(30):  # overfits the three noise draws it is scored on
        loss = _loss(model, fixed[step % 3], conds, processor)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score()
    assert after < 0.5 * before, (before, after)  # measured: 0.34 of it (1.39 -> 0.48)

    cfg = model.transformer.config
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    rows = {fl.ours(name): int(m.out_features) for name, m in model.transformer.named_modules()
            if isinstance(m, torch.nn.Linear)}
    back = fl.from_kohya(fl.to_kohya(state, cfg.num_layers, cfg.num_single_layers), cfg.num_layers,
                         cfg.num_single_layers, rank=4, row_sizes=rows)
    with torch.no_grad():
        for param in network.parameters():
            param.zero_()
    network.load_state_dict(back)
    assert abs(score() - after) < 1e-6


def test_an_fp8_base_trains_its_lora_under_bf16_autocast(tiny_flux):
    model = load_tiny(tiny_flux["dev"], transformer_dtype=torch.float8_e4m3fn)
    assert model.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    model.transformer.requires_grad_(False)
    network = lora_network(model.transformer, model.clip_l, dim=4, alpha=4.0, seed=2, apply_text_encoder=False)
    with torch.no_grad():
        conds = encode_prompts(model, ["a photo of sks dog"], t5_max_length=8)
    batch = fm.prepare_batch(FLOW, _latents(model), model.guidance_embeds, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, batch, conds)
    loss.backward()
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and len(grads) == len(list(network.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)
