"""Tiny FLUX.1 files for the Flux tests, built once per session (``from tests.flux_fixtures import tiny_flux``).

``tiny_flux`` maps "dev" and "schnell" to a ``TinyFluxFiles`` (transformer-only file, ae, clip_l, t5xxl fp16 and
fp8, the all-in-one file and a tokenizer_2 folder); ``load_tiny(files, **kwargs)`` loads the split set.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    from lib_trainer.demo.tiny_flux import write_tiny_flux

    return {variant: write_tiny_flux(tmp_path_factory.mktemp(f"flux-{variant}"), variant, seed=3)
            for variant in ("dev", "schnell")}


def load_tiny(files, **kwargs):
    from lib_trainer.trainer.flux_model import load_flux

    for key, value in (("ae", files.ae), ("clip_l", files.clip_l), ("t5xxl", files.t5xxl),
                       ("t5_tokenizer", files.tokenizer_2), ("hashes", False)):
        kwargs.setdefault(key, value)
    return load_flux(files.transformer, **kwargs)
