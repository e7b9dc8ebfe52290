"""lib_trainer.dataset.report: the dataset doctor."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from lib_trainer.common import i18n
from lib_trainer.dataset.report import (
    build_report,
    dhash,
    hamming,
    near_duplicate_groups,
    phash,
    read_caption,
    split_caption,
)
from lib_trainer.trainer.buckets import assign_bucket, make_buckets
from tests.dataset_corpus import encode, noise, save_picture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 pictures: 8 big distinct ones, 1 recompressed smaller copy, 2 small ones, 1 panorama; 1 broken file.
    Shared by the tests of this module: read only."""
    src = tmp_path_factory.mktemp("report") / "source"
    for i in range(8):
        size = (768, 1024) if i % 2 else (1024, 768)
        save_picture(src / f"photo{i}.png", noise(size, seed=i))
    save_picture(src / "photo0 copy.jpg", noise((1024, 768), seed=0).resize((640, 480)), quality=80)
    save_picture(src / "small1.png", noise((300, 400), seed=20))
    save_picture(src / "small2.png", noise((480, 480), seed=21))
    save_picture(src / "panorama.png", noise((1500, 500), seed=22))
    (src / "broken.jpg").write_bytes(encode(noise((640, 480), 23), "JPEG")[:3000])
    for i in range(4):
        (src / f"photo{i}.txt").write_text("sks dog, grass, " + ("blue eyes" if i < 2 else "sitting"), encoding="utf-8")
    (src / "small1.caption").write_bytes("\ufeffsks dog, Grass".encode("utf-8"))
    (src / "small2.txt").write_text("   \n", encoding="utf-8")
    return src


def test_counts_sizes_buckets_and_advice(dataset):
    report = build_report(dataset, 512)
    assert report.pictures == 12
    assert [u["name"] for u in report.unreadable] == ["broken.jpg"]
    assert report.unreadable[0]["code"] == "truncated"
    assert report.sizes["short_side"]["min"] == 300 and report.sizes["short_side"]["max"] == 768
    assert sum(b["count"] for b in report.short_side_bins) == 12
    assert sum(a["count"] for a in report.aspect_ratios) == 12
    very_wide = [a for a in report.aspect_ratios if "wider than 2:1" in a["label"]][0]
    assert very_wide["count"] == 1
    # The bucket plan is the trainer's.
    buckets = make_buckets((512, 512), 256, 1024, 64)
    for entry in report.entries:
        assert tuple(entry.bucket) == assign_bucket((entry.width, entry.height), buckets)
    assert sum(b["count"] for b in report.buckets) == 12
    assert report.buckets[0]["count"] >= report.buckets[-1]["count"]
    # small1 (300×400) has to be enlarged for its bucket; photo0 copy (640×480) does not.
    assert "small1.png" in report.small and "photo0 copy.jpg" not in report.small
    assert report.extreme == ["panorama.png"]
    text = "\n".join(report.advice)
    assert "broken.jpg" in text and "cannot be read" in text
    assert "upscaled and look soft" in text
    assert "near-duplicate" in text
    assert "no caption" in text and "panorama.png" in text
    assert "wider or taller than 2:1" in text


def test_small_pictures_in_plain_words_when_cropping_to_a_square(dataset):
    report = build_report(dataset, 512, bucketing=False)
    # 1500×500 and 640×480 are under 512 on the short side too
    assert sorted(report.small) == ["panorama.png", "photo0 copy.jpg", "small1.png", "small2.png"]
    assert any(line.startswith("4 pictures are under 512 px on the short side — they will be upscaled and look soft")
               for line in report.advice)
    assert report.buckets == [{"resolution": [512, 512], "count": 12, "upscaled": 4}]


def test_near_duplicates_found_and_distinct_pictures_not(dataset):
    report = build_report(dataset, 512)
    assert report.near_duplicates == [["photo0 copy.jpg", "photo0.png"]] or report.near_duplicates == [
        ["photo0.png", "photo0 copy.jpg"]
    ]
    off = build_report(dataset, 512, near_duplicates=False)
    assert off.near_duplicates == [] and off.entries[0].phash is None


def test_captions_coverage_and_tags(dataset):
    report = build_report(dataset, 512)
    assert report.captioned == 5  # photo0-3 and small1 (.caption read as fallback, BOM removed)
    assert report.empty_captions == ["small2.png"]
    assert sorted(report.uncaptioned) == ["panorama.png", "photo0 copy.jpg", "photo4.png", "photo5.png",
                                          "photo6.png", "photo7.png"]
    assert report.caption_coverage == pytest.approx(5 / 12)
    freq = dict(report.tag_frequency)
    assert freq["sks dog"] == 5 and freq["grass"] == 5  # "Grass" counts as "grass"
    assert freq["blue eyes"] == 2 and freq["sitting"] == 2
    assert report.tag_frequency[0][1] == 5
    entry = {e.name: e for e in report.entries}["small1.png"]
    assert entry.caption_file == "small1.caption" and entry.tags == ["sks dog", "Grass"]


def test_json_and_markdown(dataset):
    report = build_report(dataset, (768, 512))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["resolution"] == [768, 512] and data["pictures"] == 12
    assert data["entries"][0]["bucket"] and len(data["entries"][0]["phash"]) == 16
    md = report.to_markdown()
    for heading in ("Dataset report", "What to fix", "Buckets at 768×512", "Near-duplicates", "Most frequent tags",
                    "Unreadable files"):
        assert heading in md
    assert "| sks dog | 5 |" in md


def test_train_folder_with_concept_folders(tmp_path):
    train = tmp_path / "train"
    for i in range(3):
        save_picture(train / "10_sks dog" / f"{i}.png", noise((512, 512), seed=100 + i))
    save_picture(train / "2_style" / "a.png", noise((512, 768), seed=110))
    (train / "5_empty").mkdir()
    report = build_report(train, 512)
    assert report.pictures == 4
    assert report.folders == [
        {"name": "10_sks dog", "repeats": 10, "concept": "sks dog", "pictures": 3},
        {"name": "2_style", "repeats": 2, "concept": "style", "pictures": 1},
        {"name": "5_empty", "repeats": 5, "concept": "empty", "pictures": 0},
    ]
    assert {e.folder for e in report.entries} == {"10_sks dog", "2_style"}
    assert any("5_empty" in line for line in report.advice)
    assert "| 10_sks dog | 10 | 3 |" in report.to_markdown()


def test_empty_and_missing_folder(tmp_path):
    report = build_report(tmp_path / "nothing", 512)
    assert report.pictures == 0 and report.advice == ["There are no pictures yet — import some first."]
    json.dumps(report.to_dict())
    assert "Dataset report" in report.to_markdown()


def test_batch_size_advice_and_few_pictures(tmp_path):
    save_picture(tmp_path / "a.png", noise((512, 512), 1))
    save_picture(tmp_path / "b.png", noise((512, 512), 2))
    save_picture(tmp_path / "c.png", noise((512, 1024), 3))
    report = build_report(tmp_path, 512, batch_size=2)
    text = "\n".join(report.advice)
    assert "Only 3 pictures" in text
    assert "1 bucket holds fewer pictures than the batch size (2)" in text


def test_progress_and_stop(dataset):
    seen = []
    stop = threading.Event()

    def progress(done, total, name):
        seen.append(done)
        if done == 2:
            stop.set()

    report = build_report(dataset, 512, progress=progress, stop=stop, workers=1)
    assert seen[:2] == [1, 2] and len(seen) == 13
    assert report.pictures + len(report.unreadable) <= 3


def test_hashes_survive_resizing_and_recompression():
    a = noise((800, 600), seed=1)
    b = Image.open(__import__("io").BytesIO(encode(a.resize((400, 300)), "JPEG", quality=60)))
    c = noise((800, 600), seed=2)
    assert hamming(phash(a), phash(b)) <= 6 and hamming(dhash(a), dhash(b)) <= 8
    assert hamming(phash(a), phash(c)) > 16
    flat = Image.new("RGB", (64, 64), "gray")
    assert phash(flat) == phash(Image.new("RGB", (128, 32), "gray"))
    assert near_duplicate_groups([phash(a), phash(c), phash(b)], [dhash(a), dhash(c), dhash(b)]) == [[0, 2]]
    assert near_duplicate_groups([1], [1]) == []


def test_near_duplicate_groups_are_transitive():
    base = 0
    # 0 ~ 1 ~ 2 (chained by single-bit changes) and 3 far away.
    ph = [base, base ^ 0b1, base ^ 0b11, (1 << 64) - 1]
    groups = near_duplicate_groups(ph, ph, max_phash=1, max_dhash=1)
    assert groups == [[0, 1, 2]]


def test_read_caption_encodings(tmp_path):
    (tmp_path / "a.txt").write_bytes("\n  tag one,  tag   two \nsecond line".encode("utf-16"))
    assert read_caption(tmp_path / "a.txt") == "tag one,  tag   two"
    assert split_caption("tag one,  tag   two ,, ") == ["tag one", "tag two"]


def test_messages_are_translated(dataset):
    i18n.set_language("zh_CN")
    try:
        report = build_report(dataset, 512, bucketing=False)
        assert any("张" in line or "图片" in line for line in report.advice)
        assert "数据集报告" in report.to_markdown()
    finally:
        i18n.set_language(None)


def test_hash_arrays_handle_many_pictures():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, size=400, dtype=np.int64)]
    hashes[399] = hashes[5]
    groups = near_duplicate_groups(hashes, hashes, max_phash=0, max_dhash=0)
    assert groups == [[5, 399]]


def test_every_message_of_the_dataset_modules_has_a_chinese_translation():
    import ast
    import string
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = i18n.load_table("zh_CN")
    fields = string.Formatter()
    missing = []
    for module in ("images", "importer", "report", "preprocess"):
        tree = ast.parse((root / "lib_trainer" / "dataset" / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id == "tr":
                args = node.args[:1]
            elif node.func.id == "_plural":
                args = node.args[1:3]
            else:
                continue
            for arg in args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    template = arg.value
                    if template not in table:
                        missing.append(template)
                        continue
                    names = sorted(f for _, f, _, _ in fields.parse(template) if f)
                    assert names == sorted(f for _, f, _, _ in fields.parse(table[template]) if f), template
    assert missing == []
