"""The host contract against every available host, and the LoRA staging helper that name-resolving hosts use."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib_trainer.hosts.base import (
    PREVIEW_FOLDER,
    HostError,
    LoraStaging,
    lora_prompt,
    version_dir_of,
    version_key,
)
from tests.host_contract import (  # noqa: F401 — fixtures are found by name
    HostContract,
    check_taggers,
    contract_lora,
    hut,
    standalone_host,
    webui_host,
)
from tests.trainer_fixtures import single_torch_thread, tiny_sd1  # noqa: F401


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class TestHostContract(HostContract):
    pass


# ---- taggers: the standalone host has none, so the contract's tagger checks run here on the WebUI host over a
# double of the WebUI's modules (tests/test_webui_host.FakeWebUI: DeepBooru, BLIP and CLIP stand-ins)

@pytest.fixture
def webui_double_host(tmp_path, monkeypatch):
    from lib_trainer.hosts.webui.host import WebUIHost
    from tests.test_webui_host import FakeWebUI

    FakeWebUI(tmp_path, monkeypatch)
    return WebUIHost()


def test_the_tagger_contract_on_a_host_that_has_taggers(webui_double_host):
    taggers = check_taggers(webui_double_host, offers=True)
    assert {t.id for t in taggers} == {"deepbooru", "blip", "clip"}


def test_the_tagger_contract_on_a_host_whose_taggers_cannot_run(webui_double_host, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no model on disk: nothing can be offered
    check_taggers(webui_double_host, offers=False)
    assert {m.title for m in webui_double_host.unavailable_taggers()} >= {
        "DeepBooru (anime tags)", "BLIP (a sentence)", "CLIP interrogator (BLIP sentence + CLIP keywords)"}


# ---- LoraStaging --------------------------------------------------------------------------------------------------

def _version(root: Path, project: str, version: str) -> Path:
    path = root / "projects" / project / "versions" / version
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


def _lora_file(version_dir: Path, name: str, content: bytes) -> Path:
    path = version_dir / "checkpoints" / name
    path.write_bytes(content)
    return path


def test_staging_names_are_unique_per_content_and_reused(tmp_path):
    staging = LoraStaging(tmp_path / "Lora")
    v1 = _version(tmp_path, "cute_dog", "v1")
    a = _lora_file(v1, "tt-000001.safetensors", b"weights of epoch 1")
    b = _lora_file(v1, "tt-000002.safetensors", b"weights of epoch 2")
    same_as_a = _lora_file(v1, "copy-of-1.safetensors", b"weights of epoch 1")

    name_a, name_b = staging.stage(a), staging.stage(b)
    assert name_a != name_b and name_a.startswith("tt-") and len(name_a) == 3 + 16
    folder = staging.version_folder(v1)
    assert folder.parent == tmp_path / "Lora" / PREVIEW_FOLDER
    copy_a = folder / f"{name_a}.safetensors"
    assert copy_a.read_bytes() == b"weights of epoch 1"
    assert (folder / f"{name_b}.safetensors").read_bytes() == b"weights of epoch 2"

    mtime = copy_a.stat().st_mtime_ns
    assert staging.stage(a) == name_a and staging.stage(same_as_a) == name_a
    assert copy_a.stat().st_mtime_ns == mtime, "an existing copy must be reused, not rewritten"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{name_a}.safetensors", f"{name_b}.safetensors"])


def test_staging_never_reuses_a_name_for_other_weights(tmp_path):
    staging = LoraStaging(tmp_path / "Lora")
    v1 = _version(tmp_path, "cute_dog", "v1")
    path = _lora_file(v1, "tt.safetensors", b"first training")
    first = staging.stage(path)
    before = path.stat()
    path.write_bytes(b"second trainin")  # same size, other weights: a retrained file under the same name...
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and a file system with coarse times
    second = staging.stage(path)
    assert second != first
    folder = staging.version_folder(v1)
    assert (folder / f"{first}.safetensors").read_bytes() == b"first training"
    assert (folder / f"{second}.safetensors").read_bytes() == b"second trainin"


def test_staging_names_are_unique_across_versions(tmp_path):
    staging = LoraStaging(tmp_path / "Lora")
    v1, v2 = _version(tmp_path, "cute_dog", "v1"), _version(tmp_path, "cute_dog", "v2")
    n1 = staging.stage(_lora_file(v1, "tt.safetensors", b"identical"))
    n2 = staging.stage(_lora_file(v2, "tt.safetensors", b"identical"))
    assert n1 != n2, "one basename in two folders would be ambiguous for the WebUI"
    names = [p.stem for p in (tmp_path / "Lora").rglob("*.safetensors")]
    assert sorted(names) == sorted([n1, n2])


def test_forget_removes_only_that_versions_folder(tmp_path):
    lora_dir = tmp_path / "Lora"
    own = lora_dir / "my_style.safetensors"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"a person's own LoRA")
    staging = LoraStaging(lora_dir)
    v1, v2 = _version(tmp_path, "dog", "v1"), _version(tmp_path, "cat", "v1")
    staging.stage(_lora_file(v1, "tt.safetensors", b"dog"))
    n2 = staging.stage(_lora_file(v2, "tt.safetensors", b"cat"))

    staging.forget(v1)
    assert not staging.version_folder(v1).exists()
    assert (staging.version_folder(v2) / f"{n2}.safetensors").is_file()
    assert own.is_file() and (v1 / "checkpoints" / "tt.safetensors").is_file()
    staging.forget(v1)  # again: nothing left, no error
    staging.forget(v2)
    assert not (lora_dir / PREVIEW_FOLDER).exists(), "the empty staging root is removed too"
    assert own.is_file()


def test_stage_explicit_version_and_missing_file(tmp_path):
    staging = LoraStaging(tmp_path / "Lora")
    loose = tmp_path / "elsewhere" / "x.safetensors"
    loose.parent.mkdir()
    loose.write_bytes(b"loose")
    version = _version(tmp_path, "p", "v")
    name = staging.stage(loose, version)
    assert (staging.version_folder(version) / f"{name}.safetensors").is_file()
    with pytest.raises(HostError, match="missing.safetensors"):
        staging.stage(tmp_path / "missing.safetensors", version)


def test_version_keys_are_readable_and_distinct(tmp_path):
    a = _version(tmp_path, "可爱的狗", "v1")
    b = _version(tmp_path / "other_workspace", "可爱的狗", "v1")
    assert version_key(a).startswith("可爱的狗-v1-")
    assert version_key(a) != version_key(b)
    assert version_key(a) == version_key(str(a))
    assert version_dir_of(a / "checkpoints" / "tt-000001.safetensors") == a
    odd = version_key(tmp_path / "a b:c")
    assert ":" not in odd and " " not in odd and "/" not in odd


def test_lora_prompt_formats_weights():
    assert lora_prompt([("tt-0123456789abcdef", 0.4)]) == "<lora:tt-0123456789abcdef:0.4>"
    assert lora_prompt([("a", 1.0), ("b", 0.6), ("c", 0.75), ("d", -0.5), ("e", 0.1 + 0.2)]) == (
        "<lora:a:1> <lora:b:0.6> <lora:c:0.75> <lora:d:-0.5> <lora:e:0.3>"
    )
    assert lora_prompt([]) == ""
    for bad in ("has:colon", "has space", "a>b", ""):
        with pytest.raises(ValueError):
            lora_prompt([(bad, 1.0)])
