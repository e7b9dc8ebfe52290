"""The captions panel's callbacks: the gallery, editing one caption, taggers (and their absence), tag tools, undo."""
from lib_trainer.ui import captions_panel, dataset_panel, version_settings
from tests.ui_support import make_context, pictures, value

ALL = captions_panel.SCOPE_CHOICES.label("all")
SELECTED = captions_panel.SCOPE_CHOICES.label("selected")


def prepared(tmp_path, taggers=False):
    ctx = make_context(tmp_path, taggers=taggers)
    ctx.workspace.create_project("dog")
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 3)], "")
    dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 2)
    return ctx, ctx.version("dog", "v1")


def captions_of(version):
    return sorted(p.read_text(encoding="utf-8") for p in version.train_dir.rglob("*.txt"))


def test_gallery_select_and_save_one_caption(tmp_path):
    ctx, version = prepared(tmp_path)
    gallery, names, selected, label, caption, *_ = captions_panel.on_refresh(ctx, "dog", "v1")
    assert len(gallery) == 3 and names == ["2_dog/dog_00.png", "2_dog/dog_01.png", "2_dog/dog_02.png"]
    assert "(no caption)" in gallery[0][1]
    selected, label, box = captions_panel.on_select(names, 1, ctx, "dog", "v1")
    assert selected == "2_dog/dog_01.png" and "dog_01.png" in label and box["interactive"] is True
    out = captions_panel.on_save_caption(ctx, "dog", "v1", selected, "dog,  red   ball , grass")
    assert (version.train_dir / "2_dog" / "dog_01.txt").read_text(encoding="utf-8") == "dog, red ball, grass"
    assert out[2] == selected and "Saved" in out[-1]
    assert "dog_01.png: dog, red ball, grass" in [item[1] for item in out[0]]
    assert captions_panel.on_select(names, 7, ctx, "dog", "v1")[0] is None


def test_tag_tools_trigger_add_replace_remove_sort_dedupe_and_undo(tmp_path):
    ctx, version = prepared(tmp_path)
    out = captions_panel.on_tool(ctx, "trigger", "dog", "v1", ALL, None, "sks_dog")
    assert "3 caption(s) changed" in out[-1]
    assert version_settings.trigger_word(version) == "sks_dog"
    assert version_settings.get(version, "train")["fields"]["keep_tokens"] == 1
    assert value(out[9]) == "sks_dog"
    captions_panel.on_tool(ctx, "add", "dog", "v1", ALL, None, "dog, blue eyes, dog")
    assert captions_of(version) == ["sks_dog, dog, blue eyes"] * 3
    captions_panel.on_tool(ctx, "replace", "dog", "v1", ALL, None, "dog", "puppy")
    assert captions_of(version) == ["sks_dog, puppy, blue eyes"] * 3
    out = captions_panel.on_tool(ctx, "sort", "dog", "v1", ALL, None, captions_panel.SORT_CHOICES.label("alphabetical"))
    assert captions_of(version) == ["sks_dog, blue eyes, puppy"] * 3  # the trigger word stays first
    assert "Undo" in value(out[8]) and out[8]["interactive"] is True
    captions_panel.on_tool(ctx, "undo", "dog", "v1", ALL, None)
    assert captions_of(version) == ["sks_dog, puppy, blue eyes"] * 3
    captions_panel.on_tool(ctx, "remove", "dog", "v1", ALL, None, ["blue eyes"])
    assert captions_of(version) == ["sks_dog, puppy"] * 3
    freq = captions_panel.frequency_markdown(version)
    assert "| puppy | 3 |" in freq and "3** training pictures" in freq


def test_tools_on_the_selected_picture_only(tmp_path):
    ctx, version = prepared(tmp_path)
    out = captions_panel.on_tool(ctx, "add", "dog", "v1", SELECTED, None, "cat")
    assert "Click a picture first" in out[-1]
    captions_panel.on_tool(ctx, "add", "dog", "v1", SELECTED, "2_dog/dog_02.png", "cat")
    assert captions_of(version) == ["cat"]
    assert (version.train_dir / "2_dog" / "dog_02.txt").read_text(encoding="utf-8") == "cat"
    assert not (version.train_dir / "2_dog" / "dog_00.txt").exists()


def test_suggestions_to_remove_constant_traits(tmp_path):
    ctx, version = prepared(tmp_path)
    captions_panel.on_tool(ctx, "add", "dog", "v1", ALL, None, "blue eyes, long hair, smiling")
    update, text = captions_panel.suggestions(version, "character")
    assert set(update["choices"]) == {"blue eyes", "long hair"} and "blue eyes" in text
    captions_panel.on_tool(ctx, "remove", "dog", "v1", ALL, None, ["blue eyes", "long hair"])
    assert captions_of(version) == ["smiling"] * 3


def test_no_tagger_on_this_host_is_said_and_manual_captions_still_work(tmp_path):
    ctx, version = prepared(tmp_path, taggers=False)
    titles, note = captions_panel.tagger_state(ctx)
    assert titles == [] and "by hand" in note
    out = captions_panel.on_caption(ctx, "dog", "v1", None, 0.35, captions_panel.EXISTING_CHOICES.label("ignore"))
    assert "train_tools_msg_warning" in out[-1] and "WebUI" in out[-1]
    captions_panel.on_save_caption(ctx, "dog", "v1", "2_dog/dog_00.png", "sks_dog, dog")
    assert (version.train_dir / "2_dog" / "dog_00.txt").read_text(encoding="utf-8") == "sks_dog, dog"


def test_the_captions_step_says_why_each_tagger_is_missing_and_follows_the_host(tmp_path, monkeypatch):
    from lib_trainer.hosts.base import TaggerUnavailable

    ctx, version = prepared(tmp_path, taggers=False)
    why = "DeepBooru model not on disk (models/torch_deepdanbooru) and the WebUI runs offline"
    reasons = [TaggerUnavailable("DeepBooru (anime tags)", why), TaggerUnavailable("WD14 tagger", "not installed")]
    monkeypatch.setattr(ctx.host, "unavailable_taggers", lambda: reasons, raising=False)
    titles, note = captions_panel.tagger_state(ctx)
    assert titles == [] and "train_tools_msg_warning" in note and "this host has none" not in note
    assert f"• DeepBooru (anime tags): {why}" in note and "• WD14 tagger: not installed" in note and "by hand" in note
    out = captions_panel.on_caption(ctx, "dog", "v1", None, 0.35, captions_panel.EXISTING_CHOICES.label("ignore"))
    assert why in out[-1] and "this host has none" not in out[-1]
    refreshed = captions_panel.on_refresh(ctx, "dog", "v1")
    tagger, tagger_note, threshold, existing, run = refreshed[-5:]
    assert tagger["choices"] == [] and tagger["interactive"] is False and run["interactive"] is False
    assert why in tagger_note
    ctx.host.with_taggers = True  # a model put on disk since: the next refresh offers it, and says what is left
    tagger, tagger_note, threshold, existing, run = captions_panel.on_refresh(ctx, "dog", "v1")[-5:]
    assert tagger["choices"] == ["Paint tagger"] and tagger["value"] == "Paint tagger" and run["interactive"] is True
    assert "train_tools_msg_info" in tagger_note and "Not offered here:" in tagger_note and why in tagger_note


def test_captioning_with_the_hosts_tagger_keeps_existing_captions_when_asked(tmp_path):
    ctx, version = prepared(tmp_path, taggers=True)
    titles, note = captions_panel.tagger_state(ctx)
    assert titles == ["Paint tagger"] and note == ""
    captions_panel.on_save_caption(ctx, "dog", "v1", "2_dog/dog_00.png", "mine")
    out = captions_panel.on_caption(ctx, "dog", "v1", "Paint tagger", 0.5, captions_panel.EXISTING_CHOICES.label("keep"))
    assert "Captioned 2 of 3" in out[-1]
    assert captions_of(version) == ["dog, solo", "dog, solo", "mine"]
    captions_panel.on_caption(ctx, "dog", "v1", "Paint tagger", 0.5, captions_panel.EXISTING_CHOICES.label("append"))
    assert captions_of(version) == ["dog, solo", "dog, solo", "mine, dog, solo"]


def test_the_trigger_word_tells_of_keep_tokens_only_when_it_changes(tmp_path):
    ctx, version = prepared(tmp_path)
    out = captions_panel.on_tool(ctx, "trigger", "dog", "v1", ALL, None, "sks_dog")
    assert "keep_tokens" not in out[-1]  # the preset's keep_tokens is 1 already
    out = captions_panel.on_tool(ctx, "trigger", "dog", "v1", ALL, None, "sks_dog")
    assert "no caption needed a change" in out[-1] and "keep_tokens" not in out[-1]
    out = captions_panel.on_tool(ctx, "trigger", "dog", "v1", ALL, None, "ohwx, dog")
    assert "keep_tokens is now 2 (it was 1)" in out[-1]
    assert version_settings.get(version, "train")["fields"]["keep_tokens"] == 2


def test_the_undo_button_speaks_the_language_of_the_page(tmp_path):
    from lib_trainer.common import i18n

    ctx, version = prepared(tmp_path)
    i18n.set_language("zh_CN")
    try:
        captions_panel.on_tool(ctx, "add", "dog", "v1", ALL, None, "dog")
    finally:
        i18n.set_language(None)
    assert value(captions_panel.undo_label(version)) == 'Undo "Add dog"'


def test_the_captions_choices_are_shown_translated_and_hand_back_their_values():
    from lib_trainer.common.i18n import set_language
    from lib_trainer.ui import dataset_panel

    choices = [captions_panel.SCOPE_CHOICES, captions_panel.EXISTING_CHOICES, captions_panel.SORT_CHOICES,
               dataset_panel.CROP_CHOICES]
    english = [c.labels() for c in choices]
    set_language("zh_CN")
    try:
        for c, labels in zip(choices, english):
            shown = c.labels()
            assert all(a != b for a, b in zip(shown, labels)), shown  # every label is translated
            assert [c.value(label) for label in shown] == c.values
    finally:
        set_language(None)
