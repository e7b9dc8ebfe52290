"""FLUX.1's T5 tokenizer from what is already on the machine: nothing is downloaded.

Looked for, in this order:
1. the path the person gives (config ``t5xxl_tokenizer`` or ``$TRAIN_TOOLS_T5_TOKENIZER``): a folder with
   ``tokenizer.json`` or ``spiece.model``, or one of those files;
2. the base model's own ``tokenizer_2/`` when it is a diffusers folder;
3. Forge's copy, ``backend/huggingface/black-forest-labs/FLUX.1-{dev,schnell}/tokenizer_2/``, in the WebUI this
   extension is installed in and in every folder above the base model (a model in ``<forge>/models/...``);
4. the Hugging Face cache, when an earlier tool put FLUX.1 or google/t5-v1_1-xxl there (read offline).

A ``tokenizer.json`` is read by the fast tokenizer (the ``tokenizers`` package every host has); a folder with only
``spiece.model`` needs ``sentencepiece``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

ENV = "TRAIN_TOOLS_T5_TOKENIZER"
CONFIG_KEY = "t5xxl_tokenizer"
FORGE_TOKENIZER_DIRS = tuple(f"backend/huggingface/black-forest-labs/FLUX.1-{v}/tokenizer_2" for v in ("dev", "schnell"))
HF_CACHE_REPOS = (("models--black-forest-labs--FLUX.1-dev", "tokenizer_2"),
                  ("models--black-forest-labs--FLUX.1-schnell", "tokenizer_2"),
                  ("models--google--t5-v1_1-xxl", ""))
EXTENSION_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

PathLike = Union[str, "os.PathLike[str]"]


class T5TokenizerNotFound(RuntimeError):
    pass


def _usable(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _host_roots(base_model: Optional[Path]) -> list[Path]:
    roots: list[Path] = []
    if EXTENSION_ROOT.parent.name == "extensions":  # <webui>/extensions/<this extension>
        roots.append(EXTENSION_ROOT.parent.parent)
    if base_model is not None:
        roots.extend(base_model.resolve().parents)
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def candidate_folders(base_model: Optional[PathLike] = None, roots: Optional[Iterable[PathLike]] = None) -> list[Path]:
    """Every folder that is looked in after an explicit path, in order (whether it exists or not)."""
    base = Path(base_model).expanduser() if base_model else None
    out: list[Path] = []
    if base is not None and base.is_dir():
        out.append(base / "tokenizer_2")
    for root in [Path(r) for r in roots] if roots is not None else _host_roots(base):
        out.extend(root / rel for rel in FORGE_TOKENIZER_DIRS)
    cache = _hf_cache()
    for repo, sub in HF_CACHE_REPOS:
        snapshots = sorted((cache / repo / "snapshots").glob("*")) if (cache / repo / "snapshots").is_dir() else []
        out.extend((s / sub) if sub else s for s in snapshots)
    return out


def find_t5_tokenizer(explicit: Optional[PathLike] = None, base_model: Optional[PathLike] = None,
                      roots: Optional[Iterable[PathLike]] = None) -> Path:
    """The tokenizer folder (or file) to use; T5TokenizerNotFound says where it looked and what to set."""
    explicit = explicit or os.environ.get(ENV) or None
    if explicit:
        path = Path(explicit).expanduser()
        if (path.is_file() and path.name in TOKENIZER_FILES) or (path.is_dir() and _usable(path)):
            return path
        raise T5TokenizerNotFound(
            f"the T5 tokenizer given as {CONFIG_KEY} = {str(path)!r} is not a folder with tokenizer.json or "
            "spiece.model (nor one of those files); point it at e.g. Forge's "
            f"{FORGE_TOKENIZER_DIRS[0]} or a FLUX.1 diffusers folder's tokenizer_2"
        )
    looked = candidate_folders(base_model, roots)
    for folder in looked:
        if folder.is_dir() and _usable(folder):
            return folder
    raise T5TokenizerNotFound(
        "no T5 tokenizer for FLUX.1 was found (nothing is downloaded). Looked in: " + _describe(looked) +
        f". Set {CONFIG_KEY} in the config (or ${ENV}) to a folder with tokenizer.json or spiece.model: Forge "
        f"ships one in {FORGE_TOKENIZER_DIRS[0]}, a FLUX.1 diffusers folder has tokenizer_2/"
    )


def _describe(folders: list[Path]) -> str:
    """The folders looked in, Forge's two per root written once: '<root>/backend/.../FLUX.1-{dev,schnell}/...'."""
    forge = FORGE_TOKENIZER_DIRS[0].replace("FLUX.1-dev", "FLUX.1-{dev,schnell}")
    parts: list[str] = []
    for folder in folders:
        text = str(folder)
        for rel in FORGE_TOKENIZER_DIRS:
            if folder.as_posix().endswith(rel):
                text = str(Path(text[: -len(rel)] or "/") / forge)
        if text not in parts:
            parts.append(text)
    return "; ".join(parts) if parts else "nowhere"


def load_t5_tokenizer(path: PathLike, model_max_length: int = 512):
    """T5TokenizerFast from a folder or file found by :func:`find_t5_tokenizer` (offline)."""
    from transformers import T5TokenizerFast

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    kwargs = dict(model_max_length=model_max_length, local_files_only=True)
    file = path if path.name == "tokenizer.json" else folder / "tokenizer.json"
    if file.is_file():
        if (folder / "tokenizer_config.json").is_file():
            return T5TokenizerFast.from_pretrained(str(folder), tokenizer_file=str(file), **kwargs)
        # a bare tokenizer.json: its own added tokens (T5's <extra_id_N>) are already inside
        return T5TokenizerFast(tokenizer_file=str(file), extra_ids=0, model_max_length=model_max_length)
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise T5TokenizerNotFound(
            f"{folder} has only spiece.model, which needs the sentencepiece package to read; install it for the "
            "trainer's Python, or use a folder with tokenizer.json (Forge's "
            f"{FORGE_TOKENIZER_DIRS[0]})"
        ) from None
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(str(folder), **kwargs)
