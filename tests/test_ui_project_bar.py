"""The project / version bar's callbacks: create, clone, rename, delete to the trash and restore, Unicode names."""
from lib_trainer.ui import project_bar
from tests.ui_support import make_context, value


def choices(update):
    return update["choices"]


def test_create_a_project_with_a_unicode_name(tmp_path):
    ctx = make_context(tmp_path)
    project, version, message, cleared = project_bar.on_create_project(ctx, "可爱的狗 v2")
    assert value(project) == "可爱的狗 v2" and choices(project) == ["可爱的狗 v2"]
    assert value(version) == "v1" and choices(version) == ["v1"]
    assert "可爱的狗 v2" in message and "train_tools_msg_ok" in message
    assert cleared == ""
    assert ctx.remembered() == ("可爱的狗 v2", "v1")
    assert (ctx.workspace.projects_dir / "可爱的狗 v2" / "versions" / "v1" / "version.json").is_file()


def test_a_bad_name_says_why_and_changes_nothing(tmp_path):
    ctx = make_context(tmp_path)
    _, _, message, _ = project_bar.on_create_project(ctx, "a/b")
    assert "train_tools_msg_error" in message and "/" in message
    _, _, message, _ = project_bar.on_create_project(ctx, "")
    assert "empty" in message
    assert ctx.project_names() == []


def test_new_version_gets_the_next_free_name_and_clone_copies_the_dataset(tmp_path):
    ctx = make_context(tmp_path)
    project_bar.on_create_project(ctx, "dog")
    source = ctx.version("dog", "v1")
    (source.source_dir / "a.png").write_bytes(b"png")
    _, version, message, _ = project_bar.on_create_version(ctx, "dog", "v1", "", clone=False)
    assert value(version) == "v2" and "v2" in message
    assert not any(ctx.version("dog", "v2").source_dir.iterdir())
    _, version, message, _ = project_bar.on_create_version(ctx, "dog", "v1", "  ", clone=True)
    assert value(version) == "v3" and choices(version) == ["v1", "v2", "v3"]
    assert (ctx.version("dog", "v3").source_dir / "a.png").read_bytes() == b"png"
    assert project_bar.next_version_name(["v1", "v2", "v9", "x"]) == "v10"


def test_rename_project_and_version(tmp_path):
    ctx = make_context(tmp_path)
    project_bar.on_create_project(ctx, "dog")
    old_path = ctx.version("dog", "v1").path
    project, version, message, _ = project_bar.on_rename(ctx, "project", "dog", "v1", "小狗")
    assert value(project) == "小狗" and value(version) == "v1" and "小狗" in message
    assert ctx.host.forgotten == [old_path]  # previews were staged under the old folder's name
    project, version, message, _ = project_bar.on_rename(ctx, "version", "小狗", "v1", "first try")
    assert value(version) == "first try"
    assert ctx.version("小狗", "first try") is not None
    _, _, message, _ = project_bar.on_rename(ctx, "version", "小狗", "first try", "..")
    assert "train_tools_msg_error" in message


def test_delete_asks_first_then_moves_to_trash_and_restore_brings_it_back(tmp_path):
    ctx = make_context(tmp_path)
    project_bar.on_create_project(ctx, "dog")
    project_bar.on_create_version(ctx, "dog", "v1", "v2", clone=False)
    row, question, pending, _ = project_bar.on_delete_request("version", "dog", "v2")
    assert row["visible"] is True and "v2" in question and pending == ["version", "dog", "v2"]
    assert ctx.version("dog", "v2") is not None  # nothing deleted yet
    v2_path = ctx.version("dog", "v2").path
    project, version, message, row, pending, trash = project_bar.on_delete_confirm(ctx, pending)
    assert row["visible"] is False and pending is None
    assert ctx.host.forgotten == [v2_path]
    assert choices(version) == ["v1"] and value(version) == "v1"
    assert ctx.version("dog", "v2") is None and "trash" in message
    assert len(choices(trash)) == 1
    project, version, message, trash = project_bar.on_restore(ctx, choices(trash)[0], "dog", "v1")
    assert value(version) == "v2" and ctx.version("dog", "v2") is not None
    assert choices(trash) == []


def test_cancel_and_refresh(tmp_path):
    ctx = make_context(tmp_path)
    project_bar.on_create_project(ctx, "dog")
    row, pending, message = project_bar.on_delete_cancel()
    assert row["visible"] is False and pending is None
    project, version, _, _ = project_bar.on_refresh(ctx, "gone", None)
    assert value(project) == "dog" and value(version) == "v1"
    assert value(project_bar.on_project_change(ctx, "dog", "v7")) == "v1"


def test_a_message_goes_when_the_state_it_tells_of_changes(tmp_path):
    """"Created project … Next: add pictures below" holds for that project until it has pictures; any message
    goes when another project or version is shown."""
    from lib_trainer.ui import compat

    ctx = make_context(tmp_path)
    created = project_bar.on_create_project(ctx, "dog")
    about = project_bar.message_about(created, until_pictures=True)
    assert about == {"selection": ["dog", "v1"], "until_pictures": True}
    kept = compat.unchanged(), compat.unchanged()
    assert project_bar.on_selection_shown("dog", "v1", about) == kept  # the new project is shown: it stays
    assert project_bar.on_pictures_changed(ctx, "dog", "v1", about) == kept  # an import that added nothing
    (ctx.version("dog", "v1").source_dir / "a.png").write_bytes(b"png")
    assert project_bar.on_pictures_changed(ctx, "dog", "v1", about) == ("", None)
    project_bar.on_create_project(ctx, "cat")
    assert project_bar.on_selection_shown("cat", "v1", about) == ("", None)  # another project chosen
    renamed = project_bar.on_rename(ctx, "project", "cat", "v1", "kitten")
    about = project_bar.message_about(renamed)
    assert project_bar.on_pictures_changed(ctx, "kitten", "v1", about) == kept  # not about the pictures
    assert project_bar.on_selection_shown("dog", "v1", about) == ("", None)
    failed = project_bar.on_create_project(ctx, "a/b")
    about = project_bar.message_about(failed)  # an error selects nothing: it goes at the next change
    assert about["selection"] == [] and project_bar.on_selection_shown("dog", "v1", about) == ("", None)
    assert project_bar.message_about(project_bar.on_refresh(ctx, "dog", "v1")) is None


def test_the_trash_shows_its_kinds_translated_and_restores_by_id(tmp_path):
    from lib_trainer.common.i18n import set_language

    ctx = make_context(tmp_path)
    project_bar.on_create_project(ctx, "dog")
    project_bar.on_create_version(ctx, "dog", "v1", "v2", clone=False)
    set_language("zh_CN")
    try:
        *_, trash = project_bar.on_delete_confirm(ctx, ["version", "dog", "v2"])
        assert choices(trash)[0].endswith(" · 版本 · dog/v2") and "version" not in choices(trash)[0]
        project, version, message, trash = project_bar.on_restore(ctx, choices(trash)[0], "dog", "v1")
    finally:
        set_language(None)
    assert value(version) == "v2" and ctx.version("dog", "v2") is not None and choices(trash) == []
