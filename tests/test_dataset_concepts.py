import pytest
from PIL import Image

from lib_trainer.common import i18n
from lib_trainer.dataset.captions.caption_set import CaptionSet
from lib_trainer.dataset.captions.sidecar import caption_path
from lib_trainer.dataset.concepts import (
    DEFAULT_EPOCHS, MAX_REPEATS, PICTURE_USE_BUDGET, ConceptError, create_concept, find_concept, list_concepts, rename_concept,
    set_repeats, suggest_repeats, validate_concept_name, validate_repeats,
)
from lib_trainer.trainer.folders import scan_dataset


@pytest.fixture
def dataset(tmp_path):
    return tmp_path / "v1" / "dataset"


def add_pictures(folder, n, caption="dog"):
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20 % 256, 0, 0)).save(folder / f"{i}.png")
        caption_path(folder / f"{i}.png").write_text(caption, encoding="utf-8")


def test_create_and_list_train_and_reg(dataset):
    dog = create_concept(dataset, "  可爱的狗  ", 10)
    assert dog.path == dataset / "train" / "10_可爱的狗" and dog.path.is_dir()
    assert dog.name == "可爱的狗" and dog.repeats == 10 and not dog.is_reg and dog.folder_name == "10_可爱的狗"
    create_concept(dataset, "cute dog v2", 3)
    reg = create_concept(dataset, "dog", 1, reg=True)
    assert reg.path == dataset / "reg" / "1_dog" and reg.is_reg
    add_pictures(dog.path, 2)
    (dataset / "train" / "not_a_concept").mkdir()
    (dataset / "train" / "7").mkdir()
    (dataset / "train" / ".hidden_3").mkdir()
    listed = list_concepts(dataset)
    assert [(c.name, c.repeats, c.pictures) for c in listed] == [("cute dog v2", 3, 0), ("可爱的狗", 10, 2)]
    assert [c.folder_name for c in list_concepts(dataset, reg=True)] == ["1_dog"]
    assert find_concept(dataset, "CUTE DOG V2").repeats == 3
    with pytest.raises(ConceptError, match="no concept"):
        find_concept(dataset, "dog")  # only a reg class of that name
    # the trainer reads exactly these folders
    scan = scan_dataset(dataset / "train", dataset / "reg", caption_extension=".txt", check_images=False)
    assert scan.dataset_dirs() == {"10_可爱的狗": {"n_repeats": 10, "img_count": 2}}


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "a\\b", "..", "x..y", "tab\there", "nul\x00", "é" * 65,
                                 ".hidden", "trailing."])
def test_bad_names_are_refused_with_a_reason(dataset, bad):
    with pytest.raises(ConceptError) as info:
        create_concept(dataset, bad, 10)
    assert str(info.value)
    assert not (dataset / "train").exists() or not any((dataset / "train").iterdir())


def test_names_and_repeats_validation(dataset):
    assert validate_concept_name("ﾌﾞﾙｰ dog_1") == "ﾌﾞﾙｰ dog_1"
    assert validate_concept_name("cafe\u0301") == "caf\u00e9"
    for bad in (0, -1, 1.5, "x", None, True, MAX_REPEATS + 1):
        with pytest.raises(ConceptError, match="whole number"):
            validate_repeats(bad)
    assert validate_repeats(4.0) == 4 and validate_repeats("12") == 12
    create_concept(dataset, "Dog", 10)
    with pytest.raises(ConceptError, match="already exists"):
        create_concept(dataset, "dog", 5)  # differs only in case and repeats
    create_concept(dataset, "dog", 5, reg=True)  # a reg class may share the name


def test_rename_and_repeats_move_the_folder_and_keep_undo(dataset):
    dog = create_concept(dataset, "dog", 10)
    add_pictures(dog.path, 3, caption="dog, grass")
    cat = create_concept(dataset, "cat", 2)
    cs = CaptionSet(dataset / "train")
    cs.add_tags("sks", ["10_dog/0.png", "10_dog/1.png"])

    moved = rename_concept(dataset, "dog", "柴犬")
    assert moved.path == dataset / "train" / "10_柴犬" and moved.pictures == 3
    assert not dog.path.exists()
    assert sorted(p.name for p in moved.path.iterdir()) == ["0.png", "0.txt", "1.png", "1.txt", "2.png", "2.txt"]
    again = set_repeats(dataset, "柴犬", 25)
    assert again.path == dataset / "train" / "25_柴犬" and again.repeats == 25
    assert caption_path(again.path / "0.png").read_text(encoding="utf-8") == "dog, grass, sks"
    # the caption undo journal followed the folder
    result = CaptionSet(dataset / "train").undo()
    assert len(result.restored) == 2 and not result.skipped
    assert caption_path(again.path / "0.png").read_text(encoding="utf-8") == "dog, grass"

    with pytest.raises(ConceptError, match="already exists"):
        rename_concept(dataset, "柴犬", "CAT")
    assert rename_concept(dataset, "cat", "Cat").path == cat.path.with_name("2_Cat")  # a change of case only
    assert set_repeats(dataset, "cat", 2).path == cat.path.with_name("2_Cat")  # nothing to do
    with pytest.raises(ConceptError):
        rename_concept(dataset, "cat", "a/b")
    with pytest.raises(ConceptError):
        set_repeats(dataset, "cat", 0)
    with pytest.raises(ConceptError, match="no concept"):
        rename_concept(dataset, "bird", "x")
    assert [c.folder_name for c in list_concepts(dataset)] == ["2_Cat", "25_柴犬"]


def test_suggest_repeats_spends_the_kinds_budget_over_the_epochs():
    # The budgets: kohya_ss' face preset 20 × 20 × 10, its AI_characters preset 20 × 3 × 50, sd-scripts' 1,600
    # steps at batch 1, lora-scripts' 20 × 5 × 10.
    assert PICTURE_USE_BUDGET == {"person": 4000, "character": 3000, "product": 3000, "general": 1600, "style": 1000}
    assert DEFAULT_EPOCHS == 10
    for kind, budget in PICTURE_USE_BUDGET.items():
        for n in range(1, 300):
            for epochs in (1, 5, 10, 12):
                repeats, _ = suggest_repeats(n, kind, epochs=epochs)
                assert repeats == max(1, min(MAX_REPEATS, budget // (n * epochs)))  # the most within it, ≥ 1
    assert suggest_repeats(20, "anime character")[0] == 3000 // (20 * 10)  # free text: 10 epochs
    assert suggest_repeats(20, None)[0] == suggest_repeats(20, "something else")[0] == 1600 // (20 * 10)

    repeats, why = suggest_repeats(20, "something else", 1, 10)  # the worked example
    assert repeats == 8
    assert ("a budget of 1,600 picture uses per run" in why
            and "20 pictures × 8 repeats × 10 epochs = 1,600 picture uses, 1,600 steps at batch 1." in why)
    assert "over the budget" not in why
    repeats, why = suggest_repeats(300, "style", 1, 12)  # 300 × 1 × 12 = 3,600 > 1,000
    assert repeats == 1 and "= 3,600 picture uses" in why and "over the budget" in why


def test_the_presets_epochs_are_the_default():
    from lib_trainer.presets import PRESET_VALUES

    for preset, values in PRESET_VALUES.items():
        epochs = values["max_train_epochs"]
        repeats, why = suggest_repeats(20, preset)
        assert repeats == PICTURE_USE_BUDGET[preset] // (20 * epochs) and f"× {epochs} epochs =" in why


def test_the_person_preset_with_20_pictures_stays_within_its_budget():
    # It gave 50–100 repeats × 10 epochs before: 20 × 85 × 10 = 17,000 picture uses.
    repeats, why = suggest_repeats(20, "person", 1, 10)
    assert repeats == 20 and 20 * repeats * 10 == 4000 <= PICTURE_USE_BUDGET["person"]
    assert "20 pictures × 20 repeats × 10 epochs = 4,000 picture uses, 4,000 steps at batch 1." in why
    for batch in (1, 2, 4, 6):
        repeats, why = suggest_repeats(20, "person", batch, 10)
        assert 20 * repeats * 10 <= 4000 and f"{-(-20 * repeats // batch) * 10:,} steps at batch {batch}." in why


def test_batch_size_fills_the_last_batch():
    repeats, why = suggest_repeats(7, "character", 4, 10)
    assert repeats == 40 and 7 * 40 % 4 == 0  # 3,000 // 70 = 42 → 40, the nearest below that fills every batch
    assert "7 pictures × 40 repeats × 10 epochs = 2,800 picture uses, 700 steps at batch 4." in why
    for n in range(1, 60):
        for batch in (2, 3, 4, 8):
            repeats, _ = suggest_repeats(n, "character", batch, 10)
            most = max(1, 3000 // (n * 10))
            filling = [r for r in range(max(1, most - most // 4), most + 1) if (n * r) % batch == 0]
            assert repeats == (max(filling) if filling else most)  # lowered by at most a quarter to fill batches
    repeats, why = suggest_repeats(0, "person", 1, 10)
    assert repeats == 4000 // (20 * 10) and "no pictures" in why and "for 20 pictures and 10 epochs" in why
    for bad in ((-1, "person", 1), (5, "person", 0), (2.5, "person", 1), (5, "person", 1, 0), (5, "person", 1, 2.0)):
        with pytest.raises(ConceptError):
            suggest_repeats(*bad)


def test_explanation_is_translated():
    try:
        i18n.set_language("zh_CN")
        repeats, why = suggest_repeats(20, "anime character", 1, 10)
        assert repeats == 15 and "20 张图片 × 15 次重复 × 10 轮 = 3,000 次图片使用" in why
        assert why.startswith(i18n.tr("Anime character") + "：") and "预算为 3,000 次图片使用" in why
    finally:
        i18n.set_language(None)


def test_no_rename_under_a_running_caption_edit(dataset, monkeypatch):
    import threading

    from lib_trainer.dataset.captions import journal as caption_journal
    from lib_trainer.dataset.captions.journal import BulkEdit, CaptionBusy, journal_path_for

    monkeypatch.setattr(caption_journal, "_LOCK_TIMEOUT_S", 0.2)
    dog = create_concept(dataset, "dog", 10)
    holding, release = threading.Event(), threading.Event()

    def captioning():
        with BulkEdit(journal_path_for(dataset), "caption", "run"):
            holding.set()
            release.wait(5)

    worker = threading.Thread(target=captioning)
    worker.start()
    try:
        assert holding.wait(5)
        with pytest.raises(CaptionBusy):
            set_repeats(dataset, "dog", 20)
        assert dog.path.is_dir()
    finally:
        release.set()
        worker.join()
    assert set_repeats(dataset, "dog", 20).path.name == "20_dog"
