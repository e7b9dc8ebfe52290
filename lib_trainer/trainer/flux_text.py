"""FLUX.1's text conditioning, as sd-scripts' ``strategy_flux`` makes it: CLIP-L's pooled output (77 tokens) and
T5-XXL's last hidden state (``t5xxl_max_token_length`` tokens, padded to that length).

``apply_t5_attn_mask`` passes T5's attention mask to T5 (padding tokens then do not take part in the encoding);
sd-scripts also masks them in the transformer's attention: the mask is returned for flux_attention's processor
(``TextMaskedFluxAttention.masking(conds.t5_attn_mask)`` around the transformer's forward and backward passes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

CLIP_MAX_LENGTH = 77


@dataclass
class FluxTextConds:
    pooled: torch.Tensor     # (B, clip width): the transformer's pooled_projections
    t5_out: torch.Tensor     # (B, T, t5 width): its encoder_hidden_states
    txt_ids: torch.Tensor    # (T, 3) zeros
    t5_attn_mask: torch.Tensor  # (B, T) 1 for tokens, 0 for padding


def tokenize(clip_tokenizer, t5_tokenizer, prompts: Sequence[str], t5_max_length: int):
    clip = clip_tokenizer(list(prompts), max_length=CLIP_MAX_LENGTH, padding="max_length", truncation=True,
                          return_tensors="pt")
    t5 = t5_tokenizer(list(prompts), max_length=t5_max_length, padding="max_length", truncation=True,
                      return_tensors="pt")
    return clip["input_ids"], t5["input_ids"], t5["attention_mask"]


def encode(clip_l, t5, clip_ids: torch.Tensor, t5_ids: torch.Tensor, t5_attn_mask: torch.Tensor,
           apply_t5_attn_mask: bool = False) -> FluxTextConds:
    pooled = clip_l(clip_ids.to(clip_l.device))["pooler_output"]
    mask = t5_attn_mask.to(t5.device) if apply_t5_attn_mask else None
    with torch.no_grad():  # T5 is frozen
        t5_out = t5(t5_ids.to(t5.device), attention_mask=mask)[0]
    return FluxTextConds(pooled=pooled, t5_out=t5_out, txt_ids=torch.zeros(t5_out.shape[1], 3, device=t5_out.device),
                         t5_attn_mask=t5_attn_mask)


def encode_prompts(model, prompts: Sequence[str], apply_t5_attn_mask: bool = False,
                   t5_max_length: int | None = None) -> FluxTextConds:
    """``model`` is a flux_model.LoadedFlux."""
    ids = tokenize(model.clip_tokenizer, model.t5_tokenizer, prompts, t5_max_length or model.t5_max_length)
    return encode(model.clip_l, model.t5, *ids, apply_t5_attn_mask=apply_t5_attn_mask)
