"""Regularization pictures in the tab (lib_trainer/ui/reg_panel.py): import into dataset/reg/<repeats>_<class>/,
rename, repeats, move to the trash and back; the trainer's config then reads them."""
from lib_trainer import presets
from lib_trainer.ui import reg_panel
from tests.ui_support import broken_file, make_context, pictures


def test_regularization_pictures_from_upload_to_the_trainer_config(tmp_path):
    ctx = make_context(tmp_path)
    version = ctx.workspace.create_project("dog").versions()[0]
    assert reg_panel.on_refresh(ctx, "dog", "v1")[:2] == ("", 1)
    assert "No regularization pictures" in reg_panel.on_refresh(ctx, "dog", "v1")[2]
    uploads = [str(p) for p in pictures(tmp_path / "uploads", 3)] + [str(broken_file(tmp_path / "uploads"))]

    status, message = reg_panel.on_import(ctx, "dog", "v1", "", 1, uploads, "")
    assert "Type the class first" in message and not any(version.reg_dir.iterdir())

    status, message = reg_panel.on_import(ctx, "dog", "v1", "dog", 2, uploads, "")
    assert "3 pictures imported" in message and "broken.png" in message
    assert '3 regularization pictures of "dog" (repeats: 2' in status
    assert sorted(p.name for p in (version.reg_dir / "2_dog").glob("*.png")) == [
        "dog_00.png", "dog_01.png", "dog_02.png"]
    assert reg_panel.on_refresh(ctx, "dog", "v1")[:2] == ("dog", 2)
    cfg = presets.build_config(presets.VersionPaths.of(version), "m", "sd1", "person", 8)
    assert cfg.reg_data_dir == str(version.reg_dir)

    # A server folder adds to the same class; the class and repeats can change without importing
    pictures(tmp_path / "more", 2, size=(64, 64))
    for i, p in enumerate(sorted((tmp_path / "more").glob("*.png"))):
        p.rename(p.with_name(f"more_{i}.png"))
    status, message = reg_panel.on_import(ctx, "dog", "v1", "dog", 2, None, str(tmp_path / "more"))
    assert "2 pictures imported" in message and "5 regularization pictures" in status
    status, message = reg_panel.on_apply(ctx, "dog", "v1", "animal", 1)
    assert "1_animal" in message and [p.name for p in version.reg_dir.iterdir()] == ["1_animal"]
    assert "train_tools_msg_error" in reg_panel.on_apply(ctx, "dog", "v1", "bad/name", 1)[1]
    assert [p.name for p in version.reg_dir.iterdir()] == ["1_animal"]

    # Into the trash and back
    status, message = reg_panel.on_remove(ctx, "dog", "v1")
    assert "trash" in message and "No regularization pictures" in status and not version.reg_dir.exists()
    assert "&quot;Restore&quot; under &quot;Create, copy, rename or delete&quot; at the top" in message  # the trash
    entry = next(e for e in ctx.workspace.trash() if e.kind == "reg")
    from lib_trainer.ui.project_bar import trash_choices

    assert f"{entry.id} · Regularization pictures · " in trash_choices(ctx)[0]
    ctx.workspace.restore(entry.id)
    assert "5 regularization pictures" in reg_panel.status_text(version)
    ctx.workspace.create_project("cat")
    assert "no regularization pictures to remove" in reg_panel.on_remove(ctx, "cat", "v1")[1]


def test_regularization_pictures_are_refused_while_training_or_without_a_project(tmp_path):
    ctx = make_context(tmp_path)
    version = ctx.workspace.create_project("dog").versions()[0]
    uploads = [str(p) for p in pictures(tmp_path / "uploads", 1)]
    assert "project" in reg_panel.on_import(ctx, None, None, "dog", 1, uploads, "")[1].lower()
    assert "Drop pictures" in reg_panel.on_import(ctx, "dog", "v1", "dog", 1, None, "")[1]
    assert "There are no regularization pictures yet" in reg_panel.on_apply(ctx, "dog", "v1", "dog", 1)[1]
    assert "Repeats must be a whole number" in reg_panel.on_import(ctx, "dog", "v1", "dog", 0, uploads, "")[1]
    version.update(status="running")
    assert "is training" in reg_panel.on_import(ctx, "dog", "v1", "dog", 1, uploads, "")[1]
    assert "is training" in reg_panel.on_remove(ctx, "dog", "v1")[1]
    assert not any(version.reg_dir.iterdir())
