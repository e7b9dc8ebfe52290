"""A version trained by the real trainer (tiny SD1, 64 px, 3 epochs, one checkpoint per epoch) and the
standalone host, for the preview and pick tests.

``make_trained(root)`` trains once per test module into ``root``; ``copy_workspace`` gives a test its own copy
(modification times kept, so checkpoint identities survive the copy).
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from lib_trainer.projects import Version, Workspace

TRIGGER = "tt_dog"
PROJECT = "dog"


@dataclass
class Trained:
    root: Path  # holds models/, outputs/train_tools (the workspace) and lora/
    model: Path

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.root / "outputs" / "train_tools")

    @property
    def version(self) -> Version:
        return self.workspace.version(PROJECT, "v1")


def make_trained(root: Path) -> Trained:
    import torch

    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.events import EventWriter
    from lib_trainer.trainer.schema import TrainConfig, save_config
    from lib_trainer.trainer import holdout
    from lib_trainer.trainer.train import run
    from tests.trainer_fixtures import make_dataset

    torch.set_num_threads(1)
    model = root / "models" / "Stable-diffusion" / "tiny_sd1.safetensors"
    model.parent.mkdir(parents=True)
    write_tiny_checkpoint("sd1", model)
    workspace = Workspace(root / "outputs" / "train_tools")
    version = workspace.create_project(PROJECT, first_version="v1").version("v1")
    version.update(settings={"trigger": TRIGGER})
    make_dataset(version.dataset_dir, folder="1_tt_dog")
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(model), train_data_dir=str(version.train_dir),
        output_dir=str(version.checkpoints_dir), output_name=version.output_name, caption_extension=".txt",
        resolution="64,64", max_train_epochs=3, save_every_n_epochs=1, save_state=True, train_batch_size=2,
        network_dim=4, network_alpha=4.0, learning_rate=5e-2, seed=1234, events_file=str(version.events_path),
    )
    save_config(cfg, version.config_path)
    saved = holdout.EVAL_PICTURES, holdout.EVAL_TIMESTEPS
    holdout.EVAL_PICTURES, holdout.EVAL_TIMESTEPS = 1, (500,)
    writer = EventWriter(version.events_path, stream=io.StringIO())
    try:
        code = run(cfg, writer)
    finally:
        writer.close()
        holdout.EVAL_PICTURES, holdout.EVAL_TIMESTEPS = saved
    assert code == 0, version.events_path.read_text(encoding="utf-8")[-2000:]
    assert len(version.checkpoints()) == 3
    version.update(status="finished")
    return Trained(root, model)


def copy_workspace(trained: Trained, dest: Path) -> Trained:
    """A test's own copy of the trained workspace (checkpoint files keep their modification times)."""
    shutil.copytree(trained.root / "outputs", dest / "outputs", copy_function=shutil.copy2)
    return Trained(dest, trained.model)


def make_host(trained: Trained, lora_dir: Path):
    from lib_trainer.hosts.standalone import StandaloneHost

    return StandaloneHost(trained.root, checkpoint_dirs=[trained.model.parent], lora_dir=lora_dir,
                          outputs_dir=trained.root / "outputs", device="cpu")
