"""Picking a checkpoint (lib_trainer/promote.py): "Use this checkpoint" into the host's Lora folder and "Keep only this
one", on a LoRA trained by the real trainer and the standalone host."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lib_trainer.preview.config import save_config
from lib_trainer.preview.gallery import cell_image
from lib_trainer.preview.grid import build_grids, read_grid_info
from lib_trainer.checkpoints import promote
from lib_trainer.hosts.base import LoraSpec, Txt2ImgRequest
from lib_trainer.hosts.standalone import StandaloneHost
from lib_trainer.common.names import InvalidName
from lib_trainer.preview.config import PreviewConfig
from lib_trainer.preview.run import run_preview
from tests.preview_fixtures import TRIGGER, copy_workspace, make_host, make_trained
from tests.trainer_fixtures import load_lora


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained(tmp_path_factory.mktemp("pick_trained"))


@pytest.fixture(scope="module")
def host(trained, tmp_path_factory):
    return make_host(trained, tmp_path_factory.mktemp("pick_lora"))


@pytest.fixture
def work(trained, host, tmp_path):
    shutil.rmtree(host.lora_dir(), ignore_errors=True)  # each test starts with an empty Lora folder
    return copy_workspace(trained, tmp_path)


CONFIG = PreviewConfig(prompts=["a dog"], weights=[0.5, 1.0], width=64, height=64, steps=2, seed=5)


class RecordingHost(StandaloneHost):
    """The standalone host with a txt2img prompt box of its own (the WebUI's send_to_txt2img)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []
        self.refreshed = 0

    def send_to_txt2img(self, prompt: str) -> bool:
        self.sent.append(prompt)
        return True

    def refresh_loras(self) -> None:
        self.refreshed += 1


def test_use_checkpoint_copies_with_card_and_preview(work, host):
    version = work.version
    run_preview(version, host, CONFIG)
    result = promote.use_checkpoint(version, "dog_v1-000002", host, weight=1.0)
    assert result.name == "dog_v1-e2"
    assert result.lora_path == host.lora_dir() / "dog" / "dog_v1-e2.safetensors"
    assert result.prompt == f"<lora:dog_v1-e2:1>, {TRIGGER}" and result.sent is False  # standalone: no prompt box
    # the same tensors, the metadata kept except the names the WebUI resolves
    src_tensors, src_meta = load_lora(version.checkpoints_dir / "dog_v1-000002.safetensors")
    tensors, meta = load_lora(result.lora_path)
    assert tensors.keys() == src_tensors.keys()
    assert all((tensors[k] == src_tensors[k]).all() for k in tensors)
    assert meta["ss_output_name"] == "dog_v1-e2" and meta["modelspec.title"] == "dog_v1-e2"
    assert {k: v for k, v in meta.items() if k not in ("ss_output_name", "modelspec.title")} == \
        {k: v for k, v in src_meta.items() if k not in ("ss_output_name", "modelspec.title")}
    # the card: the WebUI 1.10 user metadata next to the file
    card = json.loads(result.metadata_path.read_text(encoding="utf-8"))
    assert result.metadata_path == result.lora_path.with_suffix(".json")
    assert card["activation text"] == TRIGGER and card["preferred weight"] == 1.0 and card["sd version"] == "SD1"
    assert set(card) == {"description", "sd version", "activation text", "preferred weight", "negative text", "notes"}
    assert "dog/v1" in card["notes"]
    # the preview picture is the grid's cell of that checkpoint at that weight
    assert result.preview_source == "preview" and result.preview_path == result.lora_path.with_suffix(".png")
    cell = cell_image(version, "dog_v1-000002", 1.0)
    with Image.open(cell) as a, Image.open(result.preview_path) as b:
        assert (np.asarray(a) == np.asarray(b)).all()
        assert "Seed: 5" in b.text["parameters"]
    # the new file is a LoRA the host applies by itself
    drawn = host.txt2img(Txt2ImgRequest(prompt="x", width=64, height=64, steps=1,
                                                loras=[LoraSpec(str(result.lora_path), 1.0)]))
    assert drawn.loras_applied == [str(result.lora_path)]
    assert version.state()["picks"][-1]["name"] == "dog_v1-e2"


def test_picking_never_overwrites(work, host):
    version = work.version
    save_config(version, CONFIG)  # the card pictures are drawn small
    first = promote.use_checkpoint(version, "dog_v1", host, name="my dog", trigger_words=["tt_dog", "dog"])
    assert first.lora_path.name == "my dog.safetensors"
    assert json.loads(first.metadata_path.read_text(encoding="utf-8"))["activation text"] == "tt_dog, dog"
    before = first.lora_path.read_bytes()
    with pytest.raises(promote.NameTaken, match="already exists") as taken:
        promote.use_checkpoint(version, "dog_v1-000001", host, name="my dog")
    assert taken.value.suggestion == "my dog-2"
    with pytest.raises(promote.NameTaken):  # case-insensitively (Windows, macOS)
        promote.use_checkpoint(version, "dog_v1-000001", host, name="MY DOG")
    assert first.lora_path.read_bytes() == before
    # only when asked to
    replaced = promote.use_checkpoint(version, "dog_v1-000001", host, name="my dog", overwrite=True)
    assert replaced.lora_path == first.lora_path and replaced.lora_path.read_bytes() != before
    assert load_lora(replaced.lora_path)[1]["ss_epoch"] == "1"
    # the same name elsewhere in the Lora folder would make <lora:NAME:w> ambiguous: refused even with overwrite
    other = host.lora_dir() / "someone else" / "cat.safetensors"
    other.parent.mkdir(parents=True)
    other.write_bytes(before)
    with pytest.raises(promote.NameTaken, match="Another LoRA"):
        promote.use_checkpoint(version, "dog_v1", host, name="cat", overwrite=True)
    assert not (host.lora_dir() / "dog" / "cat.safetensors").exists()
    for bad in ("a/b", "x:y", "..", "<lora>", ""):
        with pytest.raises(InvalidName):
            promote.use_checkpoint(version, "dog_v1", host, name=bad)


def test_without_a_preview_the_picture_is_drawn_and_the_prompt_sent(work, trained):
    version = work.version
    save_config(version, CONFIG)
    recording = RecordingHost(work.root, checkpoint_dirs=[trained.model.parent], lora_dir=work.root / "lora",
                              device="cpu")
    result = promote.use_checkpoint(version, "dog_v1", recording, send_prompt=True, weight=0.8)
    assert result.name == "dog_v1-e3" and result.preview_source == "generated"
    with Image.open(result.preview_path) as im:
        assert im.size == (64, 64) and "Seed: 5" in im.text["parameters"]
        assert "Lora hashes" in im.text["parameters"]
    assert result.sent and recording.sent == [f"<lora:dog_v1-e3:0.8>, {TRIGGER}"] and recording.refreshed == 1


def test_keep_only_moves_the_others_to_trash_and_restore_brings_them_back(work, host):
    version, workspace = work.version, work.workspace
    run_preview(version, host, CONFIG)
    names = [c.name for c in version.checkpoints()]
    states = sorted(p.name for p in version.checkpoints_dir.glob("*-state"))
    assert states == sorted(f"{n}-state" for n in names)  # the fixture saves resume states
    with pytest.raises(promote.PickError, match="confirm"):
        promote.keep_only(version, "dog_v1-000002", workspace)
    assert [c.name for c in version.checkpoints()] == names

    entry = promote.keep_only(version, "dog_v1-000002", workspace, confirm=True)
    assert [c.name for c in version.checkpoints()] == ["dog_v1-000002"]
    assert sorted(p.name for p in version.checkpoints_dir.iterdir()) == ["dog_v1-000002-state",
                                                                          "dog_v1-000002.safetensors"]
    assert not (version.previews_dir / "dog_v1").exists() and (version.previews_dir / "dog_v1-000002").is_dir()
    assert [e.id for e in workspace.trash()] == [entry.id]
    # the grid now has one row
    grids = build_grids(version)
    assert read_grid_info(grids[0].path)["rows"] == ["dog_v1-000002"]
    assert promote.keep_only(version, "dog_v1-000002", workspace, confirm=True) is None  # nothing else left

    workspace.restore(entry.id)
    assert [c.name for c in version.checkpoints()] == names
    assert sorted(p.name for p in version.checkpoints_dir.glob("*-state")) == states
    # the restored checkpoints are the same files: their preview cells are still valid
    again = run_preview(version, host, CONFIG)
    assert again.drawn == 0 and again.reused == 7
