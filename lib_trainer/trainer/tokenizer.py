"""CLIP tokenizers built offline from the BPE vocabulary that ships inside open_clip_torch (or clip-anytorch).

Every WebUI install has one of those packages, so nothing is downloaded. The BPE file is turned into the
``vocab.json`` + ``merges.txt`` pair that transformers' ``CLIPTokenizer`` reads.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (the rest would overflow its 49408-token vocabulary).
_N_MERGES = 49152 - 256 - 2


class TokenizerError(RuntimeError):
    pass


def find_bpe_vocab() -> Path:
    """Locate the BPE file without importing the packages (open_clip imports torchvision)."""
    override = os.environ.get("TRAIN_TOOLS_CLIP_BPE")
    if override:
        return Path(override)
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            candidate = Path(location) / BPE_FILE
            if candidate.is_file():
                return candidate
    raise TokenizerError(
        f"the CLIP vocabulary ({BPE_FILE}) was not found: install open_clip_torch (every WebUI has it) "
        "or point TRAIN_TOOLS_CLIP_BPE at the file"
    )


def _write_hf_files(bpe_path: Path, out_dir: Path) -> None:
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@lru_cache(maxsize=None)
def load_clip_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """SD1 and SDXL's first encoder pad with <|endoftext|>; OpenCLIP encoders (SD2, SDXL's second) with '!'."""
    from transformers import CLIPTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="train_tools_tok_"))
    try:
        _write_hf_files(find_bpe_vocab(), tmp)
        return CLIPTokenizer(
            vocab_file=str(tmp / "vocab.json"),
            merges_file=str(tmp / "merges.txt"),
            pad_token=pad_token,
            model_max_length=model_max_length,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
