"""The assembled tab: it builds on this gradio, every element id is ours and unique, the poller is installed on
load, and the standalone app wraps the same tab."""
from collections import Counter

from lib_trainer import app
from lib_trainer.ui import compat, tab
from lib_trainer.ui.tab import build_tab
from tests.ui_support import make_context


def elem_ids(blocks):
    return [b.elem_id for b in blocks.blocks.values() if getattr(b, "elem_id", None)]


def dependencies(blocks):
    """The events as the page receives them (the same shape on gradio 3.41 and 4.x)."""
    return blocks.get_config_file()["dependencies"]


def targets(dep):
    """(block id, event name) of each trigger; gradio 3.41 lists ids and one "trigger" name per event."""
    found = []
    for target in dep.get("targets", []):
        if isinstance(target, (list, tuple)):
            found.append((target[0], target[1]))
        else:
            found.append((target, dep.get("trigger")))
    if not found and dep.get("trigger"):
        found.append((None, dep["trigger"]))
    return found


def test_the_tab_builds_with_unique_prefixed_element_ids(tmp_path):
    ctx = make_context(tmp_path)
    blocks = build_tab(ctx)
    ids = elem_ids(blocks)
    assert len(ids) > 100
    assert [i for i in ids if not i.startswith("train_tools_")] == []
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    for wanted in ("train_tools_project", "train_tools_version", "train_tools_upload", "train_tools_gallery",
                   "train_tools_train", "train_tools_stop", "train_tools_resume", "train_tools_poll",
                   "train_tools_loss_chart", "train_tools_checkpoints_table", "train_tools_grid",
                   "train_tools_use", "train_tools_keep_only", "train_tools_root"):
        assert wanted in ids, wanted


def test_load_installs_the_poller_and_selects_a_version(tmp_path):
    ctx = make_context(tmp_path, poll_seconds=3)
    ctx.workspace.create_project("可爱的狗")
    blocks = build_tab(ctx)
    loads = [d for d in dependencies(blocks) if any(event == "load" for _, event in targets(d))]
    scripts = [d.get("js") for d in loads if d.get("js")]
    assert len(loads) == 2 and len(scripts) == 1
    assert "trainTools" in scripts[0] and "install(3000, " in scripts[0] and "Uploading {n} files" in scripts[0]
    assert "train_tools_poll" in tab.install_js(2)  # the file itself is in the script
    project, version = tab.on_load(ctx)
    assert project["value"] == "可爱的狗" and version["value"] == "v1"


def test_the_poll_never_uses_the_queue(tmp_path):
    ctx = make_context(tmp_path)
    blocks = build_tab(ctx)
    ids = {b._id: b.elem_id for b in blocks.blocks.values()}
    polls = [d for d in dependencies(blocks) if any(ids.get(block) == "train_tools_poll" for block, _ in targets(d))]
    assert len(polls) == 1 and polls[0]["queue"] is False and polls[0]["show_progress"] == compat.HIDDEN
    # and takes no inputs: gradio 4.40's page logs "Too many arguments provided for the endpoint." for every event
    # with inputs, which for a poll every two seconds filled Forge's console (265 in 9 minutes)
    assert polls[0]["inputs"] == []


def test_the_periodic_poll_answers_for_what_the_page_last_sent(tmp_path):
    from tests.ui_support import fake_checkpoint

    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    version = ctx.version("dog", "v1")
    pages = tab.PageStates()
    assert all(is_unchanged(u) for u in tab.poll_recorded(ctx, pages, "page-1"))  # nothing sent yet: nothing
    pages.put("page-1", project="dog", version="v1", checkpoint=None, grid=None)  # what an action's poll records
    first = tab.poll_recorded(ctx, pages, "page-1")
    assert first == tab.poll(ctx, "dog", "v1", {}, None, None)[:-1] and "Not trained yet" in first[0]
    assert all(is_unchanged(u) for u in tab.poll_recorded(ctx, pages, "page-1"))  # its seen was kept: no news
    fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-000001.safetensors", 1, 6)
    assert "-000001" in tab.poll_recorded(ctx, pages, "page-1")[8 + 1]  # news are sent
    other = tab.poll_recorded(ctx, pages, "page-2")  # another page is another page
    assert all(is_unchanged(u) for u in other)
    for n in range(tab.PageStates.LIMIT + 1):
        pages.put(f"more-{n}", project="dog", version="v1")
    assert pages.get("page-1") is None and pages.get(f"more-{tab.PageStates.LIMIT}") is not None


def test_poll_combines_progress_and_checkpoints(tmp_path):
    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    out = tab.poll(ctx, "dog", "v1", {}, None, None)
    assert len(out) == 8 + 9 + 1 and "Not trained yet" in out[0]
    again = tab.poll(ctx, "dog", "v1", out[-1], None, None)
    assert all(set(u) <= {"__type__"} for u in again[:-1])


def test_the_standalone_app_renders_the_same_tab(tmp_path):
    args = app.parse_args(["--workspace", str(tmp_path / "ws"), "--lang", "zh_CN", "--port", "7999"])
    assert args.host == "127.0.0.1" and args.port == 7999 and args.ckpt_dir == []
    ctx = make_context(tmp_path)
    demo = app.build_app(ctx)
    ids = elem_ids(demo)
    assert "train_tools_root" in ids and "train_tools_train" in ids
    assert "train_tools_msg_error" in (demo.css or "")


def test_poll_refreshes_checkpoints_only_when_they_or_the_preview_change(tmp_path):
    from tests.ui_support import fake_checkpoint

    ctx = make_context(tmp_path)
    ctx.workspace.create_project("dog")
    version = ctx.version("dog", "v1")
    fake_checkpoint(version.checkpoints_dir / f"{version.output_name}-000001.safetensors", 1, 6)
    first = tab.poll(ctx, "dog", "v1", {}, None, None)
    table = first[8 + 1]
    assert "-000001" in table
    second = tab.poll(ctx, "dog", "v1", first[-1], None, None)
    assert all(set(u) <= {"__type__"} for u in second[8:-1])
    (version.previews_dir / "manifest.json").write_text("{}", encoding="utf-8")  # a preview drew a cell
    third = tab.poll(ctx, "dog", "v1", second[-1], "x", None)
    assert set(third[8 + 1]) <= {"__type__"}  # the table is left alone
    assert third[8 + 6] == []  # the gallery of the picked checkpoint is sent again
    fake_checkpoint(version.checkpoints_dir / f"{version.output_name}.safetensors", 2, 12)
    fourth = tab.poll(ctx, "dog", "v1", third[-1], None, None)
    assert "(final)" in fourth[8 + 1]


def test_the_tab_in_chinese(tmp_path):
    from lib_trainer.common.i18n import set_language
    from lib_trainer.ui import dataset_panel, project_bar, train_panel

    set_language("zh_CN")
    try:
        ctx = make_context(tmp_path)
        blocks = build_tab(ctx)
        labels = [getattr(b, "label", None) for b in blocks.blocks.values()]
        assert "项目" in labels and "底模" in labels
        _, _, message, _ = project_bar.on_create_project(ctx, "可爱的狗")
        assert "已创建项目" in message
        label = train_panel.PRESET_CHOICES.label("person")
        assert label != "Person" and train_panel.PRESET_CHOICES.value(label) == "person"
        assert dataset_panel.CROP_CHOICES.value(dataset_panel.CROP_CHOICES.label("none")) == "none"
    finally:
        set_language(None)


class Wired:
    """The tab's events as the page calls them: find one by its trigger, call its Python function, read its
    outputs by element id."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.ids = {b._id: b.elem_id for b in blocks.blocks.values()}
        self.deps = dependencies(blocks)

    def find(self, elem_id, event):
        found = [(i, d) for i, d in enumerate(self.deps)
                 if any(self.ids.get(block) == elem_id and name == event for block, name in targets(d))]
        assert len(found) == 1, (elem_id, event, len(found))
        return found[0]

    def call(self, elem_id, event, *inputs):
        index, dep = self.find(elem_id, event)
        fns = self.blocks.fns
        fn = fns[dep.get("id", index)].fn if isinstance(fns, dict) else fns[index].fn
        outputs = fn(*inputs)
        assert len(outputs) == len(dep["outputs"])
        return {self.ids.get(o) or f"#{n}": v for n, (o, v) in enumerate(zip(dep["outputs"], outputs))}, outputs

    def output_ids(self, elem_id, event):
        return [self.ids.get(o) for o in self.find(elem_id, event)[1]["outputs"]]


def is_unchanged(update):
    return isinstance(update, dict) and set(update) <= {"__type__"}


def test_every_action_that_changes_the_selection_refreshes_the_panels_in_the_same_event(tmp_path):
    # Not in a follow-up event: a new project's "v1" fires no change of the version dropdown, and a separate
    # refresh can answer after an upload sent right after "Create project" and put back the empty report.
    ctx = make_context(tmp_path)
    wired = Wired(build_tab(ctx))
    for elem_id, event in (("train_tools_create_project", "click"), ("train_tools_project", "change"),
                           ("train_tools_version", "change"), ("train_tools_refresh_projects", "click"),
                           ("train_tools_create_version", "click"), ("train_tools_clone_version", "click"),
                           ("train_tools_rename_project", "click"), ("train_tools_rename_version", "click"),
                           ("train_tools_delete_confirm", "click"), ("train_tools_restore", "click")):
        outputs = set(wired.output_ids(elem_id, event))
        assert {"train_tools_dataset_report", "train_tools_gallery", "train_tools_checkpoints_table",
                "train_tools_import_message"} <= outputs, elem_id


def test_picking_another_project_with_the_same_version_name_shows_its_files(tmp_path):
    from tests.ui_support import pictures

    ctx = make_context(tmp_path)
    dog = ctx.workspace.create_project("dog").versions()[0]
    pictures(dog.source_dir, 2)
    ctx.workspace.create_project("cat")
    wired = Wired(build_tab(ctx))

    # Creating "bird" selects it and shows it at once (shown: the panels showed "dog" before)
    by_id, outputs = wired.call("train_tools_create_project", "click", "bird", {}, ["dog", "v1"])
    assert by_id["train_tools_project"]["value"] == "bird" and by_id["train_tools_version"]["value"] == "v1"
    assert "No pictures yet" in by_id["train_tools_dataset_report"]
    assert outputs[-1] == ["bird", "v1"] and outputs[-2] == {}  # shown; seen reset so the next poll sends all

    # The project dropdown's change that echoes the create does nothing more
    by_id, outputs = wired.call("train_tools_project", "change", "bird", "v1", {"x": 1}, ["bird", "v1"])
    assert is_unchanged(by_id["train_tools_dataset_report"]) and outputs[-2:] == [{"x": 1}, ["bird", "v1"]]

    # Picking "dog": still "v1", so the version dropdown fires no change; the project's change shows dog's files
    by_id, outputs = wired.call("train_tools_project", "change", "dog", "v1", {"x": 1}, ["bird", "v1"])
    assert by_id["train_tools_version"]["value"] == "v1"
    assert "**2** pictures" in by_id["train_tools_dataset_report"] and outputs[-1] == ["dog", "v1"]

    # The version's change refreshes only what is not shown yet
    by_id, _ = wired.call("train_tools_version", "change", "dog", "v1", {}, ["dog", "v1"])
    assert is_unchanged(by_id["train_tools_dataset_report"])
    by_id, _ = wired.call("train_tools_version", "change", "cat", "v1", {}, ["dog", "v1"])
    assert "No pictures yet" in by_id["train_tools_dataset_report"]

    # A failed action changes nothing; "Refresh" always refreshes
    by_id, outputs = wired.call("train_tools_create_project", "click", "a/b", {"x": 1}, ["dog", "v1"])
    assert "train_tools_msg_error" in by_id["train_tools_project_message"]
    assert is_unchanged(by_id["train_tools_dataset_report"]) and outputs[-1] == ["dog", "v1"]
    by_id, _ = wired.call("train_tools_refresh_projects", "click", "dog", "v1", {}, ["dog", "v1"])
    assert "**2** pictures" in by_id["train_tools_dataset_report"]
