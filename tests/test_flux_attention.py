"""apply_t5_attn_mask in FLUX.1's transformer: without a mask the processor is diffusers' own attention; with one,
T5's padding is invisible to the picture, exactly as if the prompt had never been padded, with gradient
checkpointing too."""
from __future__ import annotations

import pytest
import torch

from lib_trainer.demo import tiny_flux as tf
from lib_trainer.trainer import flow_matching as fm
from lib_trainer.trainer.flux_attention import install_text_mask, key_mask
from lib_trainer.trainer.flux_model import build_transformer

TEXT, REAL = 9, 4  # T5 tokens in the context, of which the first REAL are the prompt's


@pytest.fixture()
def transformer():
    return build_transformer(tf.build_parts(variant="dev", seed=4).transformer).eval()


def _inputs(transformer, text_tokens: int = TEXT, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(2, 16, 4, 6, generator=generator)
    return dict(
        hidden_states=fm.pack_latents(latents),
        encoder_hidden_states=torch.randn(2, text_tokens, cfg.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(2, cfg.pooled_projection_dim, generator=generator),
        timestep=torch.tensor([0.3, 0.8]), guidance=torch.tensor([3.5, 3.5]),
        img_ids=fm.image_ids(4, 6), txt_ids=fm.text_ids(text_tokens),
    )


def _run(transformer, inputs):
    return transformer(**inputs).sample


def test_the_key_mask_hides_only_the_text_padding():
    mask = key_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]), 5)
    assert mask.shape == (2, 1, 1, 5) and mask.dtype == torch.bool
    assert mask[:, 0, 0].tolist() == [[True, True, False, True, True], [True, False, False, True, True]]


def test_without_a_mask_it_is_diffusers_own_attention(transformer):
    inputs = _inputs(transformer)
    with torch.no_grad():
        stock = _run(transformer, inputs)
        install_text_mask(transformer)
        ours = _run(transformer, inputs)
    assert torch.allclose(ours, stock, rtol=0, atol=1e-6)


def test_masked_padding_is_as_if_the_prompt_were_never_padded(transformer):
    processor = install_text_mask(transformer)
    padded = _inputs(transformer)
    short = dict(padded, encoder_hidden_states=padded["encoder_hidden_states"][:, :REAL], txt_ids=fm.text_ids(REAL))
    changed = dict(padded, encoder_hidden_states=padded["encoder_hidden_states"].clone())
    changed["encoder_hidden_states"][:, REAL:] = 100.0  # whatever the padding's encoding is
    text_mask = torch.tensor([[1] * REAL + [0] * (TEXT - REAL)] * 2)
    with torch.no_grad():
        unpadded = _run(transformer, short)
        with processor.masking(text_mask):
            masked, masked_changed = _run(transformer, padded), _run(transformer, changed)
        unmasked = _run(transformer, padded)
    assert torch.allclose(masked, unpadded, rtol=0, atol=1e-5)
    assert torch.allclose(masked_changed, unpadded, rtol=0, atol=1e-5)
    assert (unmasked - unpadded).abs().max() > 1e-3  # the padding does take part when it is not masked
    assert processor.text_mask is None  # the context restores it


def test_the_mask_holds_under_gradient_checkpointing(transformer):
    processor = install_text_mask(transformer)
    inputs = _inputs(transformer)
    text_mask = torch.tensor([[1] * REAL + [0] * (TEXT - REAL)] * 2)
    grads = []
    for checkpointing in (False, True):
        transformer.zero_grad()
        transformer.train()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        with processor.masking(text_mask):
            out = _run(transformer, inputs)
            out.square().mean().backward()
        grads.append((out.detach(), transformer.transformer_blocks[0].attn.to_q.weight.grad.clone()))
    (plain_out, plain_grad), (ckpt_out, ckpt_grad) = grads
    assert torch.allclose(ckpt_out, plain_out, rtol=0, atol=1e-6)
    assert torch.allclose(ckpt_grad, plain_grad, rtol=1e-4, atol=1e-7)
