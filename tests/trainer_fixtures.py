"""Shared pieces for tests that run the trainer in-process on a tiny model.

Import the fixtures into a test module (``from tests.trainer_fixtures import tiny_sd1, fast_trainer``) and use
the helpers directly:

- ``tiny_sd1``, ``tiny_sdxl``: tiny SD1 / SDXL single-file checkpoints, built once per session;
- ``make_dataset(root)``: ``root/train/5_tt_dog/`` with 4 generated pictures (64x64 and 96x64) + .txt captions;
- ``make_config(tmp, model_path, **overrides)``: a TrainConfig for a 1-step, 64px, dim-2 run writing into tmp;
- ``train(cfg)``: runs the trainer in-process and returns a ``Run`` (exit code, parsed events, helpers);
- ``NETWORKS``: the config overrides of each network type; ``BNB_CHECK_DEPS``: .ci/setup's bitsandbytes folder;
- ``fast_trainer``: one torch thread (tiny ops on a shared 2-core machine are many times faster single-threaded)
  and a one-picture/one-timestep fixed-noise score, restored afterwards.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from PIL import Image

CAPTIONS = [
    "tt_dog, dog, red ball, grass",
    "tt_dog, dog, sitting, blue sky",
    "tt_dog, dog, running, park",
    "tt_dog, dog, close-up, smile",
]
SIZES = [(64, 64), (96, 64), (64, 64), (96, 64)]


def write_picture(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth random picture (a colour gradient plus noise), so the VAE sees something image-like."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200 + rng.random(3) * 55
    arr = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_dataset(root: Path, folder: str = "5_tt_dog", count: int = 4, captions: Optional[list] = None) -> Path:
    """``root/train/<folder>/`` with ``count`` pictures and .txt captions; returns ``root/train``."""
    train = Path(root) / "train"
    concept = train / folder
    concept.mkdir(parents=True, exist_ok=True)
    captions = captions or CAPTIONS
    for i in range(count):
        write_picture(concept / f"pic{i}.png", SIZES[i % len(SIZES)], seed=i)
        (concept / f"pic{i}.txt").write_text(captions[i % len(captions)], encoding="utf-8")
    return train


def make_config(tmp: Path, model_path, **overrides: Any):
    """A tiny run's config: the dataset under tmp/train (made if missing), output into tmp/out."""
    from lib_trainer.trainer.schema import TrainConfig

    tmp = Path(tmp)
    if "train_data_dir" not in overrides and not (tmp / "train").exists():
        make_dataset(tmp)
    values: dict[str, Any] = dict(
        pretrained_model_name_or_path=str(model_path),
        train_data_dir=str(tmp / "train"),
        output_dir=str(tmp / "out"),
        output_name="tt",
        caption_extension=".txt",
        resolution="64,64",
        max_train_steps=1,
        train_batch_size=1,
        network_dim=2,
        network_alpha=1.0,
        learning_rate=1e-3,
        seed=1234,
    )
    values.update(overrides)
    return TrainConfig(**values)


@dataclass
class Run:
    code: int
    events: list[dict] = field(default_factory=list)
    cfg: Any = None

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind!r} event, got {len(found)}: {self.events}"
        return found[0]

    @property
    def error(self) -> Optional[str]:
        errors = self.of("error")
        return errors[-1]["message"] if errors else None

    @property
    def warnings(self) -> list[str]:
        return [e["message"] for e in self.of("warning")]

    @property
    def final(self) -> Path:
        return Path(self.cfg.output_dir) / f"{self.cfg.output_name}.safetensors"

    def assert_ok(self) -> "Run":
        assert self.code == 0 and not self.of("error"), f"run failed (exit {self.code}): {self.error}\n{self.events}"
        assert self.events[-1]["event"] == "done", self.events
        return self


def train(cfg) -> Run:
    """Run the trainer in-process; the events go to an in-memory stream and cfg's events file."""
    from lib_trainer.trainer.events import EventWriter
    from lib_trainer.trainer.train import run

    stream = io.StringIO()
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl" if cfg.output_dir else None, stream=stream)
    try:
        code = run(cfg, writer)
    finally:
        writer.close()
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return Run(code, events, cfg)


def load_lora(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def tiny_checkpoint(tmp_path_factory, arch: str) -> Path:
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny_models") / f"tiny_{arch}.safetensors"
    write_tiny_checkpoint(arch, path)
    return path


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "sd1")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "sdxl")


ROOT = Path(__file__).resolve().parents[1]
BNB_CHECK_DEPS = ROOT / ".bnb-check-deps"  # bitsandbytes, put there by .ci/setup (install.py adds it on CUDA only)

# The network types, as each is asked for in a config (the tiny models' conv layers take conv_dim 2)
NETWORKS = {
    "lora": dict(),
    "locon": dict(conv_dim=2, conv_alpha=1.0),
    "loha": dict(network_module="lycoris.kohya", network_args=["algo=loha"]),
    "lokr": dict(network_module="lycoris.kohya", network_args=["algo=lokr"]),
    "dora": dict(network_module="lycoris.kohya", network_args=["algo=lora", "dora_wd=True"]),
}


@contextlib.contextmanager
def one_torch_thread():
    """The tiny models' ops are so small that thread hand-offs dominate on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def fast_training():
    """One torch thread and a one-picture, one-timestep checkpoint score: tiny runs in seconds."""
    from lib_trainer.trainer import holdout

    with one_torch_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(holdout, "EVAL_PICTURES", 1)
        mp.setattr(holdout, "EVAL_TIMESTEPS", (500,))
        yield


@pytest.fixture(scope="module")
def single_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def fast_trainer():
    with fast_training():
        yield
