"""The dataset panel's callbacks: upload (with a broken file named), folder import, report, preprocess, repeats."""
from lib_trainer import presets
from lib_trainer.ui import compat, dataset_panel
from tests.ui_support import broken_file, make_context, pictures, value


def new_version(ctx, name="dog"):
    ctx.workspace.create_project(name)
    return ctx.version(name, "v1")


def test_upload_imports_pictures_and_names_the_broken_file(tmp_path):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    uploads = tmp_path / "uploads"
    files = [str(p) for p in pictures(uploads, 3)] + [str(broken_file(uploads))]
    message, report = dataset_panel.on_import(ctx, "dog", "v1", files, "", 512, 512)
    assert "3 pictures imported" in message and "broken.png" in message and "not an image" in message
    assert "train_tools_msg_warning" in message
    assert "**3** pictures" in report and "Dataset report" in report
    assert sorted(p.name for p in version.source_dir.glob("*.png")) == ["dog_00.png", "dog_01.png", "dog_02.png"]


def test_import_from_a_server_folder_and_its_limits(tmp_path):
    ctx = make_context(tmp_path, import_roots=[str(tmp_path / "allowed")])
    new_version(ctx)
    pictures(tmp_path / "allowed" / "set", 2)
    pictures(tmp_path / "elsewhere", 2)
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", None, str(tmp_path / "allowed" / "set"))
    assert "2 pictures imported" in message
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", None, str(tmp_path / "elsewhere"))
    assert "0 pictures imported" in message
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", None, str(tmp_path / "missing"))
    assert "does not exist" in message
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", None, "")
    assert "train_tools_msg_error" in message
    message, report = dataset_panel.on_import(ctx, None, None, None, str(tmp_path / "allowed" / "set"))
    assert "project" in message.lower()


def test_preprocess_makes_the_training_folder_and_remembers_the_options(tmp_path):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 3)], "")
    crop = dataset_panel.CROP_CHOICES.label("center")
    message = dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, crop, True, False, "Lanczos", "小狗", 4)
    assert "train_tools_msg_ok" in message and "6 training pictures" in message
    folder = version.train_dir / "4_小狗"
    assert len(list(folder.glob("*.png"))) == 6  # 3 pictures + mirrored copies
    refreshed = dataset_panel.on_refresh(ctx, "dog", "v1")
    assert refreshed[1] == 64 and refreshed[3] == crop and refreshed[4] is True and refreshed[7] == "小狗"
    assert refreshed[8] == 4
    bad = dataset_panel.on_preprocess(ctx, "dog", "v1", 100, 64, crop, False, False, "Lanczos", "小狗", 4)
    assert "train_tools_msg_error" in bad and "64" in bad


def test_preprocess_without_pictures_says_what_to_do(tmp_path):
    ctx = make_context(tmp_path)
    new_version(ctx)
    message = dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "", 10)
    assert "No pictures yet" in message


def test_repeats_suggestion_and_changing_the_repeats_of_the_concept(tmp_path):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 3)], "")
    repeats, why = dataset_panel.on_suggest_repeats(ctx, "dog", "v1", "person")
    assert repeats == 4000 // (3 * 10)  # the person's budget over the preset's 10 epochs
    assert "3 pictures × 133 repeats × 10 epochs = 3,990 picture uses, 3,990 steps at batch 1." in why
    repeats_char, _ = dataset_panel.on_suggest_repeats(ctx, "dog", "v1", "character")
    assert repeats_char == 3000 // (3 * 10)
    repeats_style, why = dataset_panel.on_suggest_repeats(ctx, "dog", "v1", presets.preset_label("style"))
    assert repeats_style == 1000 // (3 * 12) and "× 12 epochs" in why  # a label works too
    message = dataset_panel.on_apply_repeats(ctx, "dog", "v1", "dog", 5)
    assert "Preprocess" in message  # no concept folder yet
    dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 10)
    message = dataset_panel.on_apply_repeats(ctx, "dog", "v1", "dog", 7)
    assert "7 repeats" in message
    assert (version.train_dir / "7_dog").is_dir() and not (version.train_dir / "10_dog").exists()
    assert value(dataset_panel.on_refresh(ctx, "dog", "v1")[8]) == 7


def test_the_report_counts_the_captions_the_trainer_reads(tmp_path):
    """Import (no captions) → preprocess → caption: the report's caption advice follows dataset/train and goes
    once the training pictures have captions."""
    from lib_trainer.ui import captions_panel

    ctx = make_context(tmp_path, taggers=True)
    new_version(ctx)
    _, report = dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 3)], "", 64, 64)
    assert "**3** pictures, 0 with a caption (0%)" in report
    dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 2)
    report = dataset_panel.report_markdown(ctx.version("dog", "v1"), 64, 64)
    assert "0 of the 3 training pictures have a caption (0%)" in report
    assert "3 training pictures have no caption (2_dog/dog_00.png, 2_dog/dog_01.png, 2_dog/dog_02.png)" in report
    captions_panel.on_caption(ctx, "dog", "v1", "Paint tagger", 0.35, captions_panel.EXISTING_CHOICES.label("ignore"))
    report = dataset_panel.on_refresh(ctx, "dog", "v1")[0]
    assert "3 of the 3 training pictures have a caption (100%)" in report
    assert "no caption" not in report and "| dog | 3 |" in report
    assert "Nothing — the dataset looks ready." not in report  # only 3 pictures: that advice stays
    assert "Only 3 pictures" in report


def test_the_report_follows_the_crop_and_size_of_preprocessing(tmp_path):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 2, size=(96, 80))], "")
    cropped = dataset_panel.report_markdown(version, 64, 64, dataset_panel.CROP_CHOICES.label("center"))
    assert "| 64×64 | 2 | 0 |" in cropped and "upscaled" not in cropped
    enlarged = dataset_panel.report_markdown(version, 512, 512, "center")
    assert "| 512×512 | 2 | 2 |" in enlarged and "under 512 px on the short side" in enlarged
    buckets = dataset_panel.report_markdown(version, 512, 512, "none")  # 96×80 pictures: the 576×448 bucket
    assert "| 576×448 | 2 | 2 |" in buckets and "| 512×512 |" not in buckets


def test_the_repeats_shown_after_an_import_are_a_suggestion_until_applied(tmp_path):
    ctx = make_context(tmp_path)
    new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 4)], "")
    suggested, hint = dataset_panel.repeats_hint(ctx, ctx.version("dog", "v1"))  # the default preset: character
    assert suggested == 3000 // (4 * 10) == 75 and "4 pictures × 75 repeats × 10 epochs = 3,000 picture uses" in hint
    assert "Not in use yet" in hint
    dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 10)
    hint = dataset_panel.on_refresh(ctx, "dog", "v1")[9]
    assert "A suggestion only: the training pictures (10_dog) use 10 repeats" in hint
    assert "now has 75 repeats (75_dog)" in dataset_panel.on_apply_repeats(ctx, "dog", "v1", "dog", 75)
    hint = dataset_panel.repeats_hint(ctx, ctx.version("dog", "v1"))[1]
    assert "In use: the training pictures (75_dog) have these 75 repeats." in hint
    again = dataset_panel.on_apply_repeats(ctx, "dog", "v1", "dog", 75)  # said only when it changes
    assert "already has 75 repeats (75_dog); nothing changed." in again and "now has" not in again


def test_the_repeats_follow_the_epochs_and_batch_of_the_saved_train_form(tmp_path):
    from lib_trainer.ui import version_settings

    ctx = make_context(tmp_path)
    version = new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 4)], "")
    version_settings.put(version, train={"preset": "person", "fields": {"max_train_epochs": 5, "train_batch_size": 2}})
    suggested, hint = dataset_panel.repeats_hint(ctx, ctx.version("dog", "v1"))
    assert suggested == 4000 // (4 * 5) == 200
    assert "4 pictures × 200 repeats × 5 epochs = 4,000 picture uses, 2,000 steps at batch 2." in hint
    suggested, hint = dataset_panel.repeats_hint(ctx, ctx.version("dog", "v1"), "style")  # another preset: its epochs
    assert suggested == 1000 // (4 * 12) == 20 and "4 pictures × 20 repeats × 12 epochs = 960 picture uses" in hint


def test_an_import_message_belongs_to_the_pictures_it_told_of(tmp_path):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    first = [str(p) for p in pictures(tmp_path / "up", 2)]
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", first, "")
    assert "Preprocess" not in message  # no training pictures yet
    dataset_panel.on_preprocess(ctx, "dog", "v1", 64, 64, "center", False, False, None, "dog", 2)
    more = [str(p) for p in pictures(tmp_path / "more", 4)][2:]
    message, _ = dataset_panel.on_import(ctx, "dog", "v1", more, "")
    assert "2 pictures imported" in message and "again to add them" in message
    about = dataset_panel.source_stamp(version)
    report, kept, kept_about = dataset_panel.on_check_again(ctx, "dog", "v1", 64, 64, "center", about)
    assert kept == compat.unchanged() and kept_about == compat.unchanged()  # nothing changed: the message stays
    (version.source_dir / "dog_03.png").unlink()
    report, gone, gone_about = dataset_panel.on_check_again(ctx, "dog", "v1", 64, 64, "center", about)
    assert gone == "" and gone_about is None and "**3** pictures" in report


def test_the_advice_on_small_pictures_names_only_what_this_host_has(tmp_path, monkeypatch):
    ctx = make_context(tmp_path)
    version = new_version(ctx)
    dataset_panel.on_import(ctx, "dog", "v1", [str(p) for p in pictures(tmp_path / "up", 2, size=(96, 80))], "")
    report = dataset_panel.host_report(ctx, version, 512, 512)
    assert "2 pictures are under 512 px on the short side — they will be upscaled and look soft" in report
    assert "can only enlarge them with Lanczos" in report and "pick one of the WebUI's upscalers" not in report
    monkeypatch.setattr(ctx.host, "upscalers", lambda: ["R-ESRGAN 4x+"])
    report = dataset_panel.on_refresh(ctx, "dog", "v1")[0]
    assert "pick one of the WebUI's upscalers under \"Enlarge small pictures with\"" in report
