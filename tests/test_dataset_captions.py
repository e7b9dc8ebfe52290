import json
import random
import threading
from pathlib import Path

import pytest
from PIL import Image

from lib_trainer.dataset.captions import journal as caption_journal
from lib_trainer.dataset.captions.caption_set import CaptionSet
from lib_trainer.dataset.captions.journal import BulkEdit, CaptionBusy, journal_path_for
from lib_trainer.dataset.captions.sidecar import caption_path, CaptionError, read_caption, read_tags, write_caption
from lib_trainer.dataset.captions.tags import keep_tokens_for, merge_tags, normalize_tag, parse_tags, tag_key
from lib_trainer.trainer.captions import process_caption
from lib_trainer.trainer.folders import scan_dataset


def make_dataset(tmp_path, folders):
    """folders: {"10_dog": {"a.png": "caption text" or None}} under <tmp>/v1/dataset/train."""
    train = tmp_path / "v1" / "dataset" / "train"
    for folder, pictures in folders.items():
        (train / folder).mkdir(parents=True)
        for name, caption in pictures.items():
            Image.new("RGB", (16, 16), (random.randrange(256), 0, 0)).save(train / folder / name)
            if caption is not None:
                caption_path(train / folder / name).write_text(caption, encoding="utf-8")
    return train


def text_of(picture):
    return caption_path(picture).read_text(encoding="utf-8")


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def train(tmp_path):
    return make_dataset(tmp_path, {
        "10_可爱的狗": {
            "图 1.png": "1girl, blue eyes, long_hair, smile",
            "b.png": "blue eyes,  long hair ,red dress,,",
            "c.png": "Blue Eyes, 1girl, white background, blue eyes",
        },
        "5_cat": {"d.jpg.png": "cat, sitting", "e.png": None},
    })


def pic(train, rel):
    return train / rel


# ---- tags ----------------------------------------------------------------------------------------------------
def test_tag_normalisation():
    assert normalize_tag("  long \t hair \n") == "long hair"
    assert normalize_tag("long_hair") == "long_hair"
    assert normalize_tag("long_hair", underscores_to_spaces=True) == "long hair"
    assert normalize_tag("^_^", underscores_to_spaces=True) == "^_^"  # an emoticon keeps its underscore
    assert normalize_tag("a\x00b\u200b") == "ab"
    assert normalize_tag("cafe\u0301") == "caf\u00e9"  # NFC
    assert parse_tags(" a ,b,, c  d\n e,") == ["a", "b", "c d", "e"]
    assert parse_tags(["x, y", "z"]) == ["x", "y", "z"]
    assert parse_tags(None) == []
    assert tag_key("Long_Hair") == tag_key("long hair")
    assert keep_tokens_for("sks dog") == 1 and keep_tokens_for("sks, dog") == 2
    assert merge_tags(["a", "B"], ["b", "c"], trigger_word="t") == ["t", "a", "B", "c"]


def test_write_and_read_caption_roundtrip_unicode(tmp_path):
    picture = tmp_path / "可爱 的狗.v2.png"
    path = write_caption(picture, ["柴犬", "  sitting  on grass ", "ñandú"])
    assert path == tmp_path / "可爱 的狗.v2.txt"
    assert path.read_bytes() == "柴犬, sitting on grass, ñandú".encode("utf-8")
    assert read_caption(picture) == "柴犬, sitting on grass, ñandú"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    # Windows Notepad's UTF-16 and a UTF-8 BOM are read; a .caption file is the fallback
    other = tmp_path / "x.png"
    caption_path(other).write_bytes("狗, dog".encode("utf-16"))
    assert read_caption(other) == "狗, dog"
    caption_path(other).write_bytes(b"\xef\xbb\xbfdog, cat")
    assert read_tags(other) == ["dog", "cat"]
    third = tmp_path / "y.png"
    assert read_caption(third) is None
    caption_path(third, ".caption").write_text("from caption", encoding="utf-8")
    assert read_caption(third) == "from caption"


# ---- the set -------------------------------------------------------------------------------------------------
def test_caption_set_reads_a_tree_or_one_folder(train):
    (train / "10_可爱的狗" / ".hidden.png").write_bytes(b"x")
    (train / "10_可爱的狗" / "notes.md").write_text("x")
    cs = CaptionSet(train)
    assert [cs.relative_name(p) for p in cs.pictures()] == [
        "10_可爱的狗/b.png", "10_可爱的狗/c.png", "10_可爱的狗/图 1.png", "5_cat/d.jpg.png", "5_cat/e.png"]
    caps = cs.captions()
    assert caps[train / "10_可爱的狗" / "b.png"] == ["blue eyes", "long hair", "red dress"]
    assert caps[train / "5_cat" / "e.png"] == []
    assert cs.uncaptioned() == [train / "5_cat" / "e.png"]
    one = CaptionSet(train / "5_cat")
    assert [p.name for p in one.pictures()] == ["d.jpg.png", "e.png"]
    assert one.journal == cs.journal == train.parent / ".caption_undo.json"
    assert journal_path_for(train.parent) == cs.journal
    assert journal_path_for(train / "5_cat") == cs.journal
    assert one.tags_of("d.jpg.png") == ["cat", "sitting"]
    assert cs.caption_text("5_cat/d.jpg.png") == "cat, sitting"
    with pytest.raises(CaptionError, match="not in this dataset"):
        cs.captions(["5_cat/nope.png"])


def test_frequency_counts_each_picture_once(train):
    cs = CaptionSet(train)
    freq = {tc.tag: tc.count for tc in cs.frequency()}
    # "blue eyes" twice in c.png and spelled "Blue Eyes" once: 3 pictures, shown in its commonest spelling
    assert freq["blue eyes"] == 3
    assert freq["1girl"] == 2
    assert freq["long hair"] == 2 and "long_hair" not in freq  # a tie of spellings: the first seen (b.png)
    assert cs.frequency()[0].tag == "blue eyes"
    only_cat = cs.frequency(["5_cat/d.jpg.png"])
    assert [(t.tag, t.count) for t in only_cat] == [("cat", 1), ("sitting", 1)]


def test_trigger_word_is_first_and_reported_keep_tokens(train):
    cs = CaptionSet(train)
    result = cs.set_trigger_word("sks")
    assert result.keep_tokens == 1
    assert "keep_tokens" in result.message
    assert text_of(pic(train, "10_可爱的狗/图 1.png")) == "sks, 1girl, blue eyes, long_hair, smile"
    assert text_of(pic(train, "5_cat/e.png")) == "sks"
    assert len(result.changed) == 5
    # a new trigger replaces the previous one and any copy of itself later in the caption
    write_caption(pic(train, "5_cat/d.jpg.png"), "sks, cat, ohwx dog, sitting")
    result = cs.set_trigger_word("ohwx dog, 柴犬", previous="sks")
    assert result.keep_tokens == 2
    assert text_of(pic(train, "5_cat/d.jpg.png")) == "ohwx dog, 柴犬, cat, sitting"
    with pytest.raises(CaptionError):
        cs.set_trigger_word("  , ")
    # what the trainer reads: keep_tokens keeps the trigger in front through shuffling
    scan = scan_dataset(train, caption_extension=".txt", check_images=False)
    entry = next(e for e in scan.entries if e.path.name == "d.jpg.png")
    for seed in range(5):
        out = process_caption(entry.caption, shuffle=True, keep_tokens=result.keep_tokens, caption_dropout_rate=0,
                              tag_dropout_rate=0, rng=random.Random(seed))
        assert out.startswith("ohwx dog, 柴犬, ")


def test_add_remove_replace_on_selection(train):
    cs = CaptionSet(train, trigger_word="sks")
    cs.set_trigger_word("sks")
    before_cat = snapshot(train / "5_cat")
    dog = ["10_可爱的狗/b.png", "10_可爱的狗/c.png"]
    result = cs.add_tags("outdoors, Red_Dress", dog)
    assert sorted(p.name for p in result.changed) == ["b.png", "c.png"]
    assert text_of(pic(train, "10_可爱的狗/b.png")) == "sks, blue eyes, long hair, red dress, outdoors"
    assert text_of(pic(train, "10_可爱的狗/c.png")) == (
        "sks, Blue Eyes, 1girl, white background, blue eyes, outdoors, Red_Dress")
    cs.add_tags(["masterpiece"], dog, at_start=True)
    assert text_of(pic(train, "10_可爱的狗/b.png")) == "sks, masterpiece, blue eyes, long hair, red dress, outdoors"
    assert snapshot(train / "5_cat") == before_cat  # not selected: untouched

    result = cs.remove_tags("BLUE_EYES, masterpiece")
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "sks, 1girl, white background, outdoors, Red_Dress"
    assert text_of(pic(train, "10_可爱的狗/图 1.png")) == "sks, 1girl, long_hair, smile"
    assert len(result.changed) == 3

    result = cs.replace_tags({"long hair": "very long hair", "1girl": "solo, 1girl", "smile": "", "outdoors": "dog"})
    assert text_of(pic(train, "10_可爱的狗/图 1.png")) == "sks, solo, 1girl, very long hair"
    assert text_of(pic(train, "10_可爱的狗/b.png")) == "sks, very long hair, red dress, dog"
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "sks, solo, 1girl, white background, dog, Red_Dress"
    # a replacement the caption already has is not doubled
    cs.replace_tags({"red dress": "dog"}, ["10_可爱的狗/b.png"])
    assert text_of(pic(train, "10_可爱的狗/b.png")) == "sks, very long hair, dog"
    with pytest.raises(CaptionError):
        cs.add_tags(" , ")
    with pytest.raises(CaptionError):
        cs.remove_tags([])


def test_remove_duplicates_and_sort(train):
    cs = CaptionSet(train)
    cs.set_trigger_word("sks")
    cs.remove_duplicates()
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "sks, Blue Eyes, 1girl, white background"
    cs.sort_tags("alphabetical")
    assert text_of(pic(train, "10_可爱的狗/b.png")) == "sks, blue eyes, long hair, red dress"
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "sks, 1girl, Blue Eyes, white background"
    assert text_of(pic(train, "5_cat/d.jpg.png")) == "sks, cat, sitting"
    cs.sort_tags("frequency")  # sks 5, blue eyes 3, 1girl 2, long hair 2, then 1s alphabetically
    assert text_of(pic(train, "10_可爱的狗/图 1.png")) == "sks, blue eyes, 1girl, long_hair, smile"
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "sks, Blue Eyes, 1girl, white background"
    cs.sort_tags("alphabetical", ["5_cat/d.jpg.png"], keep_first=0)
    assert text_of(pic(train, "5_cat/d.jpg.png")) == "cat, sitting, sks"
    with pytest.raises(CaptionError):
        cs.sort_tags("random")


def test_clean_tags_underscores(train):
    cs = CaptionSet(train)
    write_caption(pic(train, "5_cat/e.png"), "^_^, short_hair")
    caption_path(pic(train, "5_cat/d.jpg.png")).write_text("cat,sitting", encoding="utf-8")
    result = cs.clean_tags(underscores_to_spaces=True)
    assert text_of(pic(train, "10_可爱的狗/图 1.png")) == "1girl, blue eyes, long hair, smile"
    assert text_of(pic(train, "5_cat/e.png")) == "^_^, short hair"
    assert text_of(pic(train, "5_cat/d.jpg.png")) == "cat, sitting"
    # c.png was already in the normal form (clean does not remove duplicates)
    assert sorted(p.name for p in result.changed) == ["b.png", "d.jpg.png", "e.png", "图 1.png"]


def test_edit_one_caption(train):
    cs = CaptionSet(train)
    result = cs.edit_caption("5_cat/e.png", "a cat,  sleeping ,")
    assert result.changed == [pic(train, "5_cat/e.png")]
    assert text_of(pic(train, "5_cat/e.png")) == "a cat, sleeping"
    assert cs.last_edit() is None  # a hand edit is not a bulk edit
    cs.edit_caption(pic(train, "5_cat/e.png"), "")
    assert text_of(pic(train, "5_cat/e.png")) == ""
    assert cs.tags_of("5_cat/e.png") == []


def test_suggest_tags_to_remove(train):
    cs = CaptionSet(train, trigger_word="blue eyes")
    assert "blue eyes" not in [s.tag for s in cs.suggest_tags_to_remove("anime character")]
    cs = CaptionSet(train)
    suggested = cs.suggest_tags_to_remove("anime character")
    tags = [s.tag for s in suggested]
    assert tags[0] == "blue eyes" and suggested[0].count == 3 and suggested[0].share == pytest.approx(3 / 5)
    assert tag_key(tags[1]) == "long hair"
    for not_a_trait in ("1girl", "smile", "white background", "red dress", "cat"):
        assert not_a_trait not in tags
    assert "3 of 5" in suggested[0].reason
    assert cs.suggest_tags_to_remove("character", min_share=0.7) == []
    style = make_dataset(train.parent.parent.parent / "s", {"1_art": {
        f"{i}.png": f"1girl, watercolor (medium), traditional media, {'monochrome' if i < 2 else 'tree'}"
        for i in range(4)}})
    style_tags = [s.tag for s in CaptionSet(style).suggest_tags_to_remove("style")]
    assert style_tags == ["traditional media", "watercolor (medium)", "monochrome"]
    product = make_dataset(train.parent.parent.parent / "p", {"1_bottle": {
        f"{i}.png": "red bottle, glass, white background, no humans, dark blue background" for i in range(3)}})
    product_tags = [s.tag for s in CaptionSet(product).suggest_tags_to_remove("product")]
    assert product_tags == ["glass", "red bottle"]


# ---- undo -----------------------------------------------------------------------------------------------------
def test_undo_restores_exactly_and_survives_a_reload(train):
    utf16 = "狗, dog\r\n".encode("utf-16")
    caption_path(pic(train, "5_cat/d.jpg.png")).write_bytes(utf16)
    before = snapshot(train)
    CaptionSet(train).set_trigger_word("sks")
    journal = train.parent / ".caption_undo.json"
    data = json.loads(journal.read_text(encoding="utf-8"))
    assert data["action"] == "set_trigger_word" and len(data["files"]) == 5
    assert all(not Path(f["path"]).is_absolute() and f["path"].startswith("train/") for f in data["files"])
    assert (train / "5_cat" / "e.txt").exists()
    assert snapshot(train) != before

    fresh = CaptionSet(train)  # a page reload: a new object reads the journal from disk
    info = fresh.last_edit()
    assert info.action == "set_trigger_word" and info.files == 5
    result = fresh.undo()
    assert len(result.restored) == 5 and not result.skipped
    assert snapshot(train) == before  # byte for byte; e.txt (created by the edit) is gone again
    assert not journal.exists()
    assert fresh.last_edit() is None
    assert "no caption edit" in fresh.undo().message


def test_only_the_last_edit_is_undone_and_no_op_keeps_it(train):
    cs = CaptionSet(train)
    cs.add_tags("one")
    after_first = snapshot(train)
    cs.add_tags("two")
    noop = cs.add_tags("two")  # changes nothing: the undo of "two" stays available
    assert noop.changed == [] and "no caption" in noop.message
    assert "two" in cs.last_edit().label
    cs.undo()
    assert snapshot(train) == after_first
    assert cs.last_edit() is None


def test_undo_leaves_captions_edited_afterwards(train):
    cs = CaptionSet(train)
    original = text_of(pic(train, "10_可爱的狗/b.png"))
    cs.remove_tags("blue eyes")
    cs.edit_caption("10_可爱的狗/c.png", "fixed by hand")
    result = cs.undo()
    assert [p.name for p, _ in result.skipped] == ["c.txt"]
    assert "c.txt" in result.message
    assert text_of(pic(train, "10_可爱的狗/c.png")) == "fixed by hand"
    assert text_of(pic(train, "10_可爱的狗/b.png")) == original


def test_interrupted_edit_keeps_written_files_and_undoes_them(train, monkeypatch):
    before = snapshot(train)
    real = caption_journal.atomic_write_bytes
    calls = {"n": 0}

    def failing(path, data):
        if path.suffix == ".txt":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(caption_journal, "atomic_write_bytes", failing)
    with pytest.raises(OSError):
        CaptionSet(train).add_tags("x")
    monkeypatch.setattr(caption_journal, "atomic_write_bytes", real)
    assert snapshot(train) != before  # two captions were written
    result = CaptionSet(train).undo()
    assert len(result.restored) == 5 and not result.skipped
    assert snapshot(train) == before


def test_bulk_edits_of_one_dataset_do_not_interleave(train, monkeypatch):
    monkeypatch.setattr(caption_journal, "_LOCK_TIMEOUT_S", 0.2)
    cs = CaptionSet(train)
    holding = threading.Event()
    release = threading.Event()

    def long_edit():
        with BulkEdit(cs.journal, "caption", "long"):
            holding.set()
            release.wait(5)

    worker = threading.Thread(target=long_edit)
    worker.start()
    try:
        assert holding.wait(5)
        with pytest.raises(CaptionBusy):
            cs.add_tags("x")
        with pytest.raises(CaptionBusy):
            cs.undo()
    finally:
        release.set()
        worker.join()
    assert cs.add_tags("x").changed


def test_bulk_edit_flushes_in_batches(train):
    journal = train.parent / ".caption_undo.json"
    pictures = CaptionSet(train).pictures()
    with BulkEdit(journal, "caption", "batch", flush_every=2, flush_seconds=1e9) as edit:
        assert edit.stage(pictures[0], "a")
        assert not caption_path(pictures[0]).read_text(encoding="utf-8") == "a"
        assert edit.stage(pictures[1], ["b"])  # second staged: batch written
        assert text_of(pictures[0]) == "a" and text_of(pictures[1]) == "b"
        assert len(json.loads(journal.read_text(encoding="utf-8"))["files"]) == 2
        assert not edit.stage(pictures[1], "b")  # already says exactly that
        assert edit.stage(pictures[4], "e")
        assert not caption_path(pictures[4]).exists()
    assert text_of(pictures[4]) == "e"
    assert [p.name for p in edit.result.changed] == [pictures[0].name, pictures[1].name, "e.png"]
    with pytest.raises(CaptionError, match="outside"):
        with BulkEdit(journal, "caption", "x") as edit:
            edit.stage(train.parent.parent / "elsewhere.png", "a")


def test_undo_never_writes_outside_the_dataset(train, tmp_path):
    cs = CaptionSet(train)
    cs.add_tags("x")
    journal = json.loads(cs.journal.read_text(encoding="utf-8"))
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me", encoding="utf-8")
    journal["files"].append({"path": "../../outside.txt", "before": "evil", "after": "keep me"})
    cs.journal.write_text(json.dumps(journal), encoding="utf-8")
    result = cs.undo()
    assert len(result.restored) == 5
    assert outside.read_text(encoding="utf-8") == "keep me"


# ---- what the messages say ------------------------------------------------------------------------------------
def test_keep_tokens_is_told_only_when_it_changes(train):
    cs = CaptionSet(train)
    kept = cs.set_trigger_word("sks", keep_tokens_now=1)
    assert kept.keep_tokens == 1 and "keep_tokens" not in kept.message
    assert kept.message == "Trigger word sks: 5 caption(s) changed. Undo puts them back."
    changed = cs.set_trigger_word("ohwx dog, 柴犬", previous="sks", keep_tokens_now=1)
    assert changed.keep_tokens == 2
    assert changed.message == ("Trigger word ohwx dog, 柴犬: 5 caption(s) changed. Undo puts them back. "
                               "keep_tokens is now 2 (it was 1), so that caption shuffling and tag dropout leave "
                               "the trigger word in front.")
    unknown = cs.set_trigger_word("ohwx dog, 柴犬", previous="ohwx dog, 柴犬")
    assert unknown.message == ("Trigger word ohwx dog, 柴犬: no caption needed a change. keep_tokens is now 2, so "
                               "that caption shuffling and tag dropout leave the trigger word in front.")


def test_the_undo_label_is_shown_in_the_language_of_the_page(train):
    from lib_trainer.common import i18n

    i18n.set_language("zh_CN")
    try:
        made = CaptionSet(train).add_tags("sks")
        assert made.label == "添加 sks"  # the edit's own message speaks the language it was made in
    finally:
        i18n.set_language(None)
    assert CaptionSet(train).last_edit().label == "Add sks"
    i18n.set_language("zh_CN")
    try:
        assert CaptionSet(train).last_edit().label == "添加 sks"
    finally:
        i18n.set_language(None)
    assert CaptionSet(train).undo().label == "Add sks"


def test_a_journal_written_before_label_templates_keeps_its_label(train):
    cs = CaptionSet(train)
    cs.add_tags("sks")
    journal = json.loads(cs.journal.read_text(encoding="utf-8"))
    del journal["label_template"]
    journal["label"] = "添加 sks"
    cs.journal.write_text(json.dumps(journal, ensure_ascii=False), encoding="utf-8")
    assert cs.last_edit().label == "添加 sks"
    result = cs.undo()
    assert result.label == "添加 sks" and len(result.restored) == 5


def test_every_edit_label_has_a_chinese_translation():
    import ast

    from lib_trainer.common import i18n

    root = Path(__file__).resolve().parents[1]
    table = i18n.load_table("zh_CN")
    templates = []
    for path in sorted((root / "lib_trainer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "EditLabel":
                for arg in node.args[:1]:
                    if isinstance(arg, ast.IfExp):
                        templates += [arg.body.value, arg.orelse.value]
                    elif isinstance(arg, ast.Constant):
                        templates.append(arg.value)
    assert len(templates) >= 10
    assert [t for t in templates if t not in table] == []
