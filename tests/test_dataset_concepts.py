import pytest
from PIL import Image

from lib_trainer.common import i18n
from lib_trainer.dataset.captions.caption_set import CaptionSet
from lib_trainer.dataset.captions.sidecar import caption_path
from lib_trainer.dataset.concepts import (
    MAX_REPEATS, REPEAT_GUIDE, ConceptError, create_concept, find_concept, list_concepts, rename_concept,
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


def test_suggest_repeats_follows_the_seeds_guidance():
    # anime characters 15–30 and real persons 50–100 uses of each picture per epoch; few pictures → the top
    assert suggest_repeats(5, "anime character")[0] == 30
    assert suggest_repeats(10, "character")[0] == 30
    assert suggest_repeats(100, "anime character")[0] == 15
    assert suggest_repeats(400, "anime character")[0] == 15
    assert suggest_repeats(8, "real person")[0] == 100
    assert suggest_repeats(150, "person")[0] == 50
    previous = None
    for n in range(1, 200):
        for preset, (low, high) in (("character", REPEAT_GUIDE["character"]), ("person", REPEAT_GUIDE["person"]),
                                    ("style", REPEAT_GUIDE["style"]), ("product", REPEAT_GUIDE["product"])):
            repeats, _ = suggest_repeats(n, preset)
            assert low <= repeats <= high
        repeats = suggest_repeats(n, "character")[0]
        assert previous is None or repeats <= previous  # more pictures never need more repeats
        previous = repeats
    assert suggest_repeats(20, "style")[0] < suggest_repeats(20, "product")[0] < suggest_repeats(20, "person")[0]
    assert suggest_repeats(20, None)[0] == suggest_repeats(20, "something else")[0]

    repeats, why = suggest_repeats(20, "anime character")
    assert repeats == 25
    assert "15–30" in why and "20 × 25 = 500" in why and "500 steps at batch size 1" in why


def test_batch_size_fills_the_last_batch():
    repeats, why = suggest_repeats(7, "character", batch_size=4)
    assert repeats == 28 and 7 * 28 % 4 == 0  # 30 → nearest in range filling every batch
    assert "49 steps at batch size 4" in why
    for n in range(1, 60):
        for batch in (2, 3, 4, 8):
            repeats, _ = suggest_repeats(n, "character", batch_size=batch)
            assert 15 <= repeats <= 30
            assert (n * repeats) % batch == 0 or not any((n * r) % batch == 0 for r in range(15, 31))
    repeats, why = suggest_repeats(0, "person")
    assert repeats == 100 and "no pictures" in why
    for bad in ((-1, "person", 1), (5, "person", 0), (2.5, "person", 1)):
        with pytest.raises(ConceptError):
            suggest_repeats(*bad)


def test_explanation_is_translated():
    try:
        i18n.set_language("zh_CN")
        repeats, why = suggest_repeats(20, "anime character")
        assert repeats == 25 and "20 × 25 = 500" in why
        assert why.startswith(i18n.tr("Anime character") + "：") and "重复次数 15–30" in why
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
