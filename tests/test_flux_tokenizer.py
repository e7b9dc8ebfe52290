"""FLUX.1's T5 tokenizer without downloads: where it is looked for, what loads, and what is said when none is."""
from __future__ import annotations

import shutil

import pytest

from lib_trainer.demo.tiny_flux import write_t5_tokenizer
from lib_trainer.trainer import t5_tokenizer as t5


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.delenv(t5.ENV, raising=False)


def test_forge_s_copy_is_found_above_the_model(tmp_path):
    forge = tmp_path / "forge"
    write_t5_tokenizer(forge / t5.FORGE_TOKENIZER_DIRS[1])  # only schnell's copy
    model = forge / "models" / "Stable-diffusion" / "flux1-dev.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert t5.find_t5_tokenizer(base_model=model) == forge / t5.FORGE_TOKENIZER_DIRS[1]
    write_t5_tokenizer(forge / t5.FORGE_TOKENIZER_DIRS[0])
    assert t5.find_t5_tokenizer(base_model=model) == forge / t5.FORGE_TOKENIZER_DIRS[0]  # dev's first


def test_a_diffusers_folder_s_tokenizer_2_and_an_explicit_path_win(tmp_path, monkeypatch):
    folder = tmp_path / "FLUX.1-dev"
    write_t5_tokenizer(folder / "tokenizer_2")
    write_t5_tokenizer(tmp_path / "roots" / t5.FORGE_TOKENIZER_DIRS[0])
    assert t5.find_t5_tokenizer(base_model=folder, roots=[tmp_path / "roots"]) == folder / "tokenizer_2"
    mine = write_t5_tokenizer(tmp_path / "mine")
    assert t5.find_t5_tokenizer(mine, base_model=folder) == mine
    assert t5.find_t5_tokenizer(mine / "tokenizer.json") == mine / "tokenizer.json"
    monkeypatch.setenv(t5.ENV, str(mine))
    assert t5.find_t5_tokenizer(base_model=folder) == mine


def test_the_hf_cache_is_read_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--google--t5-v1_1-xxl" / "snapshots" / "abc123"
    write_t5_tokenizer(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert t5.find_t5_tokenizer(roots=[]) == snapshot


def test_none_found_says_where_it_looked_and_what_to_set(tmp_path):
    model = tmp_path / "models" / "flux1-dev.safetensors"
    with pytest.raises(t5.T5TokenizerNotFound) as err:
        t5.find_t5_tokenizer(base_model=model, roots=[tmp_path / "forge"])
    message = str(err.value)
    assert f"{tmp_path / 'forge'}/backend/huggingface/black-forest-labs/FLUX.1-{{dev,schnell}}/tokenizer_2" in message
    assert "Set t5xxl_tokenizer in the config (or $TRAIN_TOOLS_T5_TOKENIZER)" in message
    with pytest.raises(t5.T5TokenizerNotFound, match="is not a folder with tokenizer.json or spiece.model"):
        t5.find_t5_tokenizer(tmp_path)


def test_the_tiny_tokenizer_encodes_like_t5(tmp_path):
    tok = t5.load_t5_tokenizer(write_t5_tokenizer(tmp_path / "tok"), model_max_length=16)
    ids = tok(["a photo of sks dog"], max_length=16, padding="max_length", truncation=True)
    pieces = tok.convert_ids_to_tokens(ids["input_ids"][0])
    assert pieces[:6] == ["\u2581a", "\u2581photo", "\u2581of", "\u2581sks", "\u2581dog", "</s>"]
    assert pieces[6:] == ["<pad>"] * 10 and ids["attention_mask"][0] == [1] * 6 + [0] * 10
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # T5's ids
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tmp_path / "tok" / "tokenizer.json", bare)
    assert t5.load_t5_tokenizer(bare / "tokenizer.json")("a dog")["input_ids"] == tok("a dog")["input_ids"]


def test_spiece_only_needs_sentencepiece(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "spiece.model").write_bytes(b"")
    real_import = builtins.__import__

    def no_sentencepiece(name, *args, **kwargs):
        if name == "sentencepiece":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sentencepiece)
    with pytest.raises(t5.T5TokenizerNotFound, match="has only spiece.model, which needs the sentencepiece package"):
        t5.load_t5_tokenizer(tmp_path)
