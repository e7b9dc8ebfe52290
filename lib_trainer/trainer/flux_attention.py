"""FLUX.1's joint attention with T5's padding masked out, for ``apply_t5_attn_mask`` (as sd-scripts' FLUX.1 model
does it: the padding tokens are masked as keys in every double and single block, so neither the picture nor the
real text tokens attend to them).

diffusers' own Flux attention processor takes no mask (it ignores ``attention_mask``), and its transformer does not
pass ``joint_attention_kwargs`` on to the blocks under gradient checkpointing, so the mask is held by the processor
itself: install one with :func:`install_text_mask`, set ``text_mask`` before the forward pass (it stays set for
the backward pass, which recomputes checkpointed blocks) and clear it (None) before anything else of another batch
size runs through the transformer, a sample for instance. With ``text_mask = None`` the result is diffusers' own.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def key_mask(text_mask: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """(B, 1, 1, total) bool: True for the keys that may be attended to. The text comes first in FLUX.1's joint
    sequence (text, then picture); ``text_mask`` is (B, T), 1 for tokens and 0 for padding."""
    batch, text_tokens = text_mask.shape
    picture = torch.ones(batch, total_tokens - text_tokens, dtype=torch.bool, device=text_mask.device)
    return torch.cat([text_mask.to(torch.bool), picture], dim=1)[:, None, None, :]


class TextMaskedFluxAttention:
    """An attention processor for every attention of a FluxTransformer2DModel (double blocks: picture stream with
    the text stream as ``encoder_hidden_states``; single blocks: the joint sequence)."""

    def __init__(self) -> None:
        self.text_mask: Optional[torch.Tensor] = None  # (B, T): 1 for T5 tokens, 0 for padding

    @contextlib.contextmanager
    def masking(self, text_mask: Optional[torch.Tensor]) -> Iterator[None]:
        """``text_mask`` for the forward and backward passes run inside the block."""
        previous, self.text_mask = self.text_mask, text_mask
        try:
            yield
        finally:
            self.text_mask = previous

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def project(x, to_q, to_k, to_v, norm_q, norm_k):
            q, k, v = (_split_heads(layer(x), attn.heads) for layer in (to_q, to_k, to_v))
            return norm_q(q), norm_k(k), v

        q, k, v = project(hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        text_tokens = 0
        if encoder_hidden_states is not None:  # a double block: the text stream goes first
            text_tokens = encoder_hidden_states.shape[1]
            tq, tk, tv = project(encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                                 attn.norm_added_q, attn.norm_added_k)
            q, k, v = torch.cat([tq, q], dim=2), torch.cat([tk, k], dim=2), torch.cat([tv, v], dim=2)
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        mask = None
        if self.text_mask is not None:
            mask = key_mask(self.text_mask.to(q.device), k.shape[2])
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).to(q.dtype)
        if encoder_hidden_states is None:
            return out
        text, picture = out[:, :text_tokens], out[:, text_tokens:]
        return attn.to_out[1](attn.to_out[0](picture)), attn.to_add_out(text)


def install_text_mask(transformer) -> TextMaskedFluxAttention:
    """One TextMaskedFluxAttention for every attention of ``transformer``; returns it (set its ``text_mask``)."""
    processor = TextMaskedFluxAttention()
    transformer.set_attn_processor(processor)
    return processor
