"""Projects, versions, names, trash and output names (lib_trainer/projects.py, lib_trainer/common/names.py)."""
import json
import threading

import pytest

from lib_trainer import projects
from lib_trainer.common.names import InvalidName, validate_name
from lib_trainer.trainer import schema


@pytest.fixture
def ws(tmp_path):
    return projects.Workspace(tmp_path / "train_tools")


@pytest.mark.parametrize("name", ["可爱的狗", "cute dog v2", "Ärger-Übung_3", "😀 emoji", "a.b"])
def test_unicode_names_are_accepted_and_round_trip(ws, name):
    project = ws.create_project(name)
    assert project.path.name == name
    assert [p.name for p in ws.projects()] == [name]
    assert ws.project(name).state()["name"] == name
    assert project.versions()[0].name == "v1"


@pytest.mark.parametrize("name, why", [
    ("a/b", "may not contain"), ("a\\b", "may not contain"), ("..", '".."'), ("x..y", '".."'),
    ("", "empty"), ("   ", "empty"), ("a\x00b", "control"), ("tab\there", "control"), ("CON", "reserved"),
    ("com1.txt", "reserved"), ("x" * 65, "at most 64"), (".hidden", "start with a dot"), ("dot.", "end with a dot"),
    ("a:b", "may not contain"), ("what?", "may not contain"),
])
def test_bad_names_are_refused_with_the_reason(ws, name, why):
    with pytest.raises(InvalidName, match=why):
        ws.create_project(name)
    assert ws.projects() == []
    assert not any(p.name != ".trash" for p in ws.projects_dir.iterdir())


def test_names_are_normalised():
    assert validate_name("  cafe\u0301 ") == "café"


def test_create_list_rename_delete_restore(ws):
    ws.create_project("dog")
    ws.create_project("cat")
    assert [p.name for p in ws.projects()] == ["cat", "dog"]
    with pytest.raises(projects.AlreadyExists):
        ws.create_project("DOG")
    renamed = ws.rename_project("dog", "可爱的狗")
    assert renamed.state()["name"] == "可爱的狗"
    assert [p.name for p in ws.projects()] == ["cat", "可爱的狗"]
    entry = ws.delete_project("可爱的狗")
    assert [p.name for p in ws.projects()] == ["cat"]
    assert [e.id for e in ws.trash()] == [entry.id] and entry.kind == "project"
    ws.restore(entry.id)
    assert [p.name for p in ws.projects()] == ["cat", "可爱的狗"]
    assert ws.trash() == []


def test_restore_never_overwrites(ws):
    ws.create_project("dog")
    entry = ws.delete_project("dog")
    ws.create_project("dog")
    with pytest.raises(projects.AlreadyExists, match="exists again"):
        ws.restore(entry.id)
    assert ws.trash()[0].id == entry.id


def test_versions_clone_copies_dataset_and_config_not_outputs(ws):
    project = ws.create_project("dog")
    v1 = project.version("v1")
    (v1.train_dir / "10_dog").mkdir(parents=True)
    (v1.train_dir / "10_dog" / "a.png").write_bytes(b"png")
    (v1.train_dir / "10_dog" / "a.txt").write_text("dog, grass", encoding="utf-8")
    (v1.source_dir / "a.png").write_bytes(b"png")
    (v1.checkpoints_dir / "x.safetensors").write_bytes(b"x")
    cfg = schema.TrainConfig(pretrained_model_name_or_path="/models/base.safetensors",
                             train_data_dir=str(v1.train_dir), output_dir=str(v1.checkpoints_dir),
                             output_name=v1.output_name, logging_dir=str(v1.logs_dir / "tensorboard"))
    schema.save_config(cfg, v1.config_path)
    v1.update(settings={"preset": "person", "trigger": "sks"})

    v2 = project.create_version("v2 更好", from_version="v1")
    assert (v2.train_dir / "10_dog" / "a.txt").read_text(encoding="utf-8") == "dog, grass"
    assert (v2.source_dir / "a.png").is_file()
    assert list(v2.checkpoints_dir.iterdir()) == []
    assert v2.state()["settings"] == {"preset": "person", "trigger": "sks"}
    assert v2.status == "draft" and v2.state()["cloned_from"] == "v1"
    cfg2, _ = schema.load_config(v2.config_path)
    assert cfg2.train_data_dir == str(v2.train_dir)
    assert cfg2.output_dir == str(v2.checkpoints_dir)
    assert cfg2.output_name == v2.output_name != v1.output_name
    assert cfg2.pretrained_model_name_or_path == "/models/base.safetensors"
    assert [v.name for v in project.versions()] == ["v1", "v2 更好"]


def test_rename_moves_config_paths(ws):
    project = ws.create_project("dog")
    v1 = project.version("v1")
    schema.save_config(schema.TrainConfig(pretrained_model_name_or_path="/m.safetensors",
                                          train_data_dir=str(v1.train_dir), output_dir=str(v1.checkpoints_dir)),
                       v1.config_path)
    ws.rename_project("dog", "hund")
    v1 = ws.version("hund", "v1")
    cfg, _ = schema.load_config(v1.config_path)
    assert cfg.train_data_dir == str(v1.train_dir) and "hund" in cfg.output_dir
    v1b = ws.project("hund").rename_version("v1", "first")
    cfg, _ = schema.load_config(v1b.config_path)
    assert cfg.output_dir == str(v1b.checkpoints_dir)
    assert v1b.state()["name"] == "first"


def test_output_names_are_unique_across_the_workspace(ws):
    # "a_b" + "c" and "a" + "b_c" would both give "a_b_c".
    ws.create_project("a_b", first_version="c")
    ws.create_project("a", first_version="b_c")
    names = [v.output_name for v in ws.versions()]
    assert len(names) == len(set(n.casefold() for n in names)) == 2
    # A deleted version keeps its name reserved: it may come back from the trash.
    trashed = ws.project("a").version("b_c").output_name
    ws.project("a").delete_version("b_c")
    assert ws.project("a").create_version("b_c").output_name != trashed


def test_busy_versions_cannot_be_deleted_or_renamed(ws):
    project = ws.create_project("dog")
    project.version("v1").update(status="running")
    with pytest.raises(projects.Busy):
        project.delete_version("v1")
    with pytest.raises(projects.Busy):
        ws.delete_project("dog")
    with pytest.raises(projects.Busy):
        ws.rename_project("dog", "cat")
    project.version("v1").update(status="failed")
    project.delete_version("v1")
    assert project.versions() == []


def test_state_updates_are_atomic_and_serialised(ws):
    version = ws.create_project("dog").version("v1")
    def bump(i):
        for _ in range(20):
            version.update(**{f"k{i}": i})
    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    data = json.loads(version.state_path.read_text(encoding="utf-8"))
    assert all(data[f"k{i}"] == i for i in range(4))
    assert not [p for p in version.path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        version.update(status="exploded")


def test_paths_outside_the_workspace_are_refused(ws, tmp_path):
    with pytest.raises(projects.ProjectError, match="outside"):
        ws.ensure_inside(tmp_path / "elsewhere")
    with pytest.raises(projects.ProjectError, match="outside"):
        ws.ensure_inside(ws.root / ".." / "x")
    assert ws.ensure_inside(ws.projects_dir) == ws.projects_dir
    with pytest.raises(projects.NotFound):
        ws.restore("../../etc")


def test_checkpoints_listed_with_epoch_step_and_final(ws, tmp_path):
    from safetensors.torch import save_file
    import torch
    version = ws.create_project("dog").version("v1")
    name = version.output_name
    for epoch, step, stem in [(2, 20, f"{name}-000002"), (1, 10, f"{name}-000001"), (3, 30, name)]:
        save_file({"w": torch.zeros(1)}, str(version.checkpoints_dir / f"{stem}.safetensors"),
                  metadata={"ss_epoch": str(epoch), "ss_steps": str(step)})
    (version.checkpoints_dir / f"{name}-000001-state").mkdir()
    found = version.checkpoints()
    assert [(c.epoch, c.step, c.final) for c in found] == [(1, 10, False), (2, 20, False), (3, 30, True)]
    assert found[0].size > 0


def test_read_events_skips_garbage(ws):
    version = ws.create_project("dog").version("v1")
    version.events_path.write_text('{"event": "start", "total_steps": 4}\nnot json\n{"broken\n'
                                   '{"event": "step", "step": 1}\n', encoding="utf-8")
    assert [e["event"] for e in version.read_events()] == ["start", "step"]
    assert version.read_events(last=1)[0]["step"] == 1


def test_archive_outputs_moves_the_last_run_to_the_trash_and_keeps_settings(ws):
    version = ws.create_project("dog").version("v1")
    (version.checkpoints_dir / "a-000001.safetensors").write_bytes(b"x")
    (version.checkpoints_dir / "a-000001-state").mkdir()
    (version.samples_dir / "prompts.txt").write_text("sks dog", encoding="utf-8")
    (version.samples_dir / "s1.png").write_bytes(b"p")
    (version.previews_dir / "preview.json").write_text("{}", encoding="utf-8")
    (version.previews_dir / "grid-01.png").write_bytes(b"g")
    entry = version.archive_outputs()
    assert list(version.checkpoints_dir.iterdir()) == []
    assert [p.name for p in version.samples_dir.iterdir()] == ["prompts.txt"]
    assert [p.name for p in version.previews_dir.iterdir()] == ["preview.json"]
    assert version.archive_outputs() is None
    ws.restore(entry.id)
    assert (version.checkpoints_dir / "a-000001.safetensors").is_file() and (version.previews_dir / "grid-01.png").is_file()
