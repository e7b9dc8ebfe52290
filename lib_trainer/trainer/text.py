"""Captions → text-encoder conditioning, the way sd-scripts conditions SD1/SD2/SDXL.

Long captions (max_token_length 150/225) are cut into 75-token chunks, each framed by BOS/EOS and encoded
separately; the chunks' hidden states are joined back into one sequence of max_token_length + 2 tokens.
"""
from __future__ import annotations

from typing import Optional

import torch

CHUNK = 75


def tokenize(tokenizer, captions: list[str], max_token_length: Optional[int]) -> torch.Tensor:
    """Returns ids of shape (batch, n_chunks, 77)."""
    length = (max_token_length or CHUNK) + 2
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=length, return_tensors="pt").input_ids
    if length == CHUNK + 2:
        return ids.unsqueeze(1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, length - 1, CHUNK):
        chunk = torch.cat([ids[:, :1], ids[:, start : start + CHUNK], ids[:, -1:]], dim=1).clone()
        for row in chunk:
            # "x <pad>" at the end becomes "x <eos>" so every chunk is closed; "<bos> <pad> ..." gets an EOS too
            if row[-2] != eos and row[-2] != pad:
                row[-1] = eos
            if row[1] == pad:
                row[1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _join_chunks(hidden: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(batch*n, 77, d) → (batch, 75*n + 2, d): first BOS, the 75 inner tokens of each chunk, last EOS."""
    if n_chunks == 1:
        return hidden
    batch = hidden.shape[0] // n_chunks
    hidden = hidden.reshape(batch, n_chunks, hidden.shape[1], hidden.shape[2])
    parts = [hidden[:, 0, :1]] + [hidden[:, i, 1:-1] for i in range(n_chunks)] + [hidden[:, -1, -1:]]
    return torch.cat(parts, dim=1)


def encode_sd(text_encoder, ids: torch.Tensor, clip_skip: Optional[int]) -> torch.Tensor:
    batch, n_chunks, length = ids.shape
    flat = ids.reshape(batch * n_chunks, length).to(text_encoder.device)
    if clip_skip is None or clip_skip <= 1:
        hidden = text_encoder(flat, return_dict=True).last_hidden_state
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        hidden = text_encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
    return _join_chunks(hidden, n_chunks)


def encode_sdxl(text_encoders: list, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: both encoders' penultimate layers (no final norm), concatenated; pooled output of the second."""
    batch, n_chunks, length = ids1.shape
    te1, te2 = text_encoders
    out1 = te1(ids1.reshape(-1, length).to(te1.device), output_hidden_states=True, return_dict=True)
    out2 = te2(ids2.reshape(-1, length).to(te2.device), output_hidden_states=True, return_dict=True)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2].to(out1.hidden_states[-2].dtype)], dim=-1)
    pooled = out2.text_embeds.reshape(batch, n_chunks, -1)[:, 0]
    return _join_chunks(hidden, n_chunks), pooled


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's size conditioning; sizes are (height, width), crop is (top, left)."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)
