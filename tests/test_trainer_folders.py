import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from lib_trainer.trainer.folders import (
    MAX_PIXELS,
    DatasetScan,
    ImageEntry,
    check_image,
    describe_empty,
    epoch_items,
    open_rgb,
    parse_folder_name,
    reg_balance,
    scan_dataset,
)


def picture(path: Path, size=(48, 32), fmt=None, color=None, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if color is None:
        arr = (np.random.default_rng(len(str(path))).random((h, w, 3)) * 255).astype("uint8")
        im = Image.fromarray(arr)
    else:
        im = Image.new("RGB", size, color)
    im.save(path, format=fmt, **save_kwargs)
    return path


def caption(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def jpeg_bytes(size=(64, 48)) -> bytes:
    arr = (np.random.default_rng(1).random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------------------


def test_parse_folder_name():
    assert parse_folder_name("10_cute_dog") == (10, "cute_dog")
    assert parse_folder_name("1_dog") == (1, "dog")
    assert parse_folder_name("5_可爱的狗") == (5, "可爱的狗")
    assert parse_folder_name("10") == (10, "")
    assert parse_folder_name("0_dog") == (0, "dog")
    assert parse_folder_name("dog") is None
    assert parse_folder_name("10dog") is None
    assert parse_folder_name("x_10_dog") is None
    assert parse_folder_name(".ipynb_checkpoints") is None


def test_scan_reads_folders_captions_and_sizes(tmp_path):
    train = tmp_path / "train"
    d = train / "10_cute_dog"
    picture(d / "a.png", (64, 32))
    caption(d / "a.txt", "cute_dog, sitting,  grass \n")
    picture(d / "b.JPG", (30, 40), fmt="JPEG")
    caption(d / "b.txt", "\ufeffcute_dog, running")  # BOM
    picture(d / "c.webp", (16, 16), fmt="WEBP")  # no caption: the concept
    (d / "notes.md").write_text("not a picture")
    uni = train / "5_可爱的狗"
    picture(uni / "照片.png")
    caption(uni / "照片.txt", "可爱的狗, 草地")

    scan = scan_dataset(train, caption_extension=".txt")
    assert isinstance(scan, DatasetScan)
    assert scan.skipped == []
    assert not scan.is_empty
    by_name = {e.path.name: e for e in scan.entries}
    assert set(by_name) == {"a.png", "b.JPG", "c.webp", "照片.png"}

    a = by_name["a.png"]
    assert a == ImageEntry(
        path=d / "a.png",
        caption="cute_dog, sitting,  grass",
        repeats=10,
        concept="cute_dog",
        folder="10_cute_dog",
        is_reg=False,
        size=(64, 32),
        caption_file=d / "a.txt",
    )
    assert by_name["b.JPG"].caption == "cute_dog, running"
    assert by_name["b.JPG"].size == (30, 40)
    assert by_name["c.webp"].caption == "cute_dog"
    assert by_name["c.webp"].caption_file is None
    assert any("c.webp" in w for w in scan.warnings)
    u = by_name["照片.png"]
    assert (u.repeats, u.concept, u.folder, u.caption) == (5, "可爱的狗", "5_可爱的狗", "可爱的狗, 草地")

    assert scan.num_train_items == 3 * 10 + 5
    assert scan.dataset_dirs() == {
        "10_cute_dog": {"n_repeats": 10, "img_count": 3},
        "5_可爱的狗": {"n_repeats": 5, "img_count": 1},
    }
    assert scan.dataset_dirs(reg=True) == {}
    assert scan.tag_frequency() == {
        "10_cute_dog": {"cute_dog": 3, "sitting": 1, "grass": 1, "running": 1},
        "5_可爱的狗": {"可爱的狗": 1, "草地": 1},
    }
    # Deterministic order: by folder name, then file name.
    assert [e.path.name for e in scan.entries] == ["a.png", "b.JPG", "c.webp", "照片.png"]


def test_bad_files_are_skipped_with_plain_reasons(tmp_path):
    d = tmp_path / "train" / "3_dog"
    picture(d / "good.png")
    (d / "zero.png").write_bytes(b"")
    data = jpeg_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("this is not a picture")
    (d / "huge.png").write_bytes(png_claiming(30000, 30000))
    picture(d / "anim.gif", fmt="GIF")
    picture(d / "scan.tif", fmt="TIFF")
    picture(d / "old.bmp", fmt="BMP")

    scan = scan_dataset(tmp_path / "train", caption_extension=".txt")
    reasons = {p.name: r for p, r in scan.skipped}
    assert reasons == {
        "zero.png": "empty file",
        "truncated.jpg": "truncated or corrupt JPEG",
        "text.png": "not an image",
        "huge.png": reasons["huge.png"],
    }
    assert reasons["huge.png"].startswith("too large: 30000×30000")
    assert sorted(e.path.name for e in scan.entries) == ["anim.gif", "good.png", "old.bmp", "scan.tif"]
    folder = scan.folders[0]
    assert (folder.name, folder.image_count, folder.skipped_count) == ("3_dog", 4, 4)
    assert scan.dataset_dirs() == {"3_dog": {"n_repeats": 3, "img_count": 4}}


def test_check_image_limits_and_header_only_mode(tmp_path):
    p = picture(tmp_path / "p.png", (100, 50))
    assert check_image(p) == ((100, 50), None)
    size, reason = check_image(p, max_pixels=4999)
    assert size is None and reason.startswith("too large: 100×50")
    data = jpeg_bytes()
    t = tmp_path / "t.jpg"
    t.write_bytes(data[: len(data) * 3 // 4])
    assert check_image(t)[1] == "truncated or corrupt JPEG"
    # Header-only check is fast but cannot see truncation.
    assert check_image(t, decode=False) == ((64, 48), None)
    truncated_png = tmp_path / "t.png"
    truncated_png.write_bytes(p.read_bytes()[:-40])
    assert check_image(truncated_png)[1] == "truncated or corrupt PNG"
    assert MAX_PIXELS == 178_956_970


def test_exif_orientation_size_and_open_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    p = picture(tmp_path / "train" / "1_x" / "r.jpg", (60, 20), fmt="JPEG", exif=exif)
    scan = scan_dataset(tmp_path / "train")
    assert scan.entries[0].size == (20, 60)
    im = open_rgb(p)
    assert im.mode == "RGB" and im.size == (20, 60)

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    out = open_rgb(tmp_path / "alpha.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)

    gray16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    gray16.save(tmp_path / "g16.png")
    assert open_rgb(tmp_path / "g16.png").getpixel((0, 0)) == (255, 255, 255)


def test_caption_extension_fallback_encodings_and_lines(tmp_path):
    d = tmp_path / "train" / "2_cat"
    picture(d / "a.png")
    caption(d / "a.caption", "from caption file")
    picture(d / "b.png")
    caption(d / "b.TXT", "upper-case extension")
    picture(d / "c.png")
    caption(d / "c.txt", "windows notepad, unicode", encoding="utf-16")  # BOM included by the codec
    picture(d / "d.png")
    caption(d / "d.txt", "\n\nfirst line\nsecond line\n")
    picture(d / "e.png")
    caption(d / "e.txt", "   \n")
    picture(d / "f.png")
    (d / "f.txt").write_bytes("café latin-1".encode("latin-1"))

    scan = scan_dataset(tmp_path / "train", caption_extension="txt")
    assert scan.caption_extension == ".txt"
    caps = {e.path.name: e.caption for e in scan.entries}
    assert caps["a.png"] == "from caption file"
    assert caps["b.png"] == "upper-case extension"
    assert caps["c.png"] == "windows notepad, unicode"
    assert caps["d.png"] == "first line"
    assert caps["e.png"] == "cat"  # empty caption file: the concept
    assert caps["f.png"].startswith("caf") and caps["f.png"].endswith("latin-1")
    text = "\n".join(scan.warnings)
    assert ".caption files" in text
    assert "only the first is used" in text
    assert "is empty" in text
    assert "not UTF-8" in text

    # The configured extension wins when both exist; sd-scripts' default is .caption.
    caption(d / "a.txt", "from txt")
    default = scan_dataset(tmp_path / "train")
    assert {e.path.name: e.caption for e in default.entries}["a.png"] == "from caption file"
    configured = scan_dataset(tmp_path / "train", caption_extension=".txt")
    assert {e.path.name: e.caption for e in configured.entries}["a.png"] == "from txt"


def test_ignored_folders_and_files_are_reported(tmp_path):
    train = tmp_path / "train"
    picture(train / "dog" / "a.png")  # no repeat count
    picture(train / "0_dog" / "a.png")  # zero repeats
    picture(train / ".ipynb_checkpoints" / "a.png")  # hidden: silently skipped
    picture(train / "loose.png")  # picture outside a folder
    picture(train / "4_dog" / "sub" / "deep.png")  # subfolders are not read
    picture(train / "4_dog" / "ok.png")
    (train / "4_dog" / "._ok.png").write_bytes(b"\0\5\x16\x07")  # macOS resource fork: hidden

    scan = scan_dataset(train)
    ignored = {p.relative_to(train).as_posix(): r for p, r in scan.ignored}
    assert set(ignored) == {"dog", "0_dog", "loose.png", "4_dog/sub"}
    assert "repeat count" in ignored["dog"]
    assert "0" in ignored["0_dog"]
    assert "10_concept" in ignored["loose.png"]
    assert [e.path.name for e in scan.entries] == ["ok.png"]
    assert scan.skipped == []


def test_reg_balancing_matches_sd_scripts(tmp_path):
    train, reg = tmp_path / "train", tmp_path / "reg"
    for i in range(3):
        picture(train / "4_sks dog" / f"{i}.png")
    for i in range(5):
        picture(reg / "1_dog" / f"{i}.png")
    scan = scan_dataset(train, reg, caption_extension=".txt")
    assert len(scan.train_entries) == 3 and len(scan.reg_entries) == 5
    assert all(e.is_reg and e.caption == "dog" for e in scan.reg_entries)
    assert scan.dataset_dirs(reg=True) == {"1_dog": {"n_repeats": 1, "img_count": 5}}
    assert scan.num_train_items == 12 and scan.num_reg_items == 5
    # 12 training uses; 5 reg pictures: first pass 5, then one more each in order until 12.
    balance = reg_balance(scan)
    assert [count for _, count in balance] == [3, 3, 2, 2, 2]
    items = epoch_items(scan)
    assert len(items) == 24
    assert sum(1 for e in items if e.is_reg) == 12
    assert items == epoch_items(scan)  # deterministic
    assert items[:4] == [scan.train_entries[0]] * 4

    # More reg pictures than needed: truncated to the first ones.
    for i in range(5, 30):
        picture(reg / "1_dog" / f"{i:02d}.png", (8, 8))
    scan = scan_dataset(train, reg)
    assert sum(c for _, c in reg_balance(scan)) == 12
    assert len(reg_balance(scan)) == 12

    # Reg folders with repeats > 1 are taken in whole folder-repeat steps on the first pass (sd-scripts):
    # 12 needed, 5 each → three pictures, 15 uses.
    reg2 = tmp_path / "reg2"
    for i in range(4):
        picture(reg2 / "5_dog" / f"{i}.png", (8, 8))
    scan = scan_dataset(train, reg2)
    assert [c for _, c in reg_balance(scan)] == [5, 5, 5]

    # No reg dir or no training pictures: nothing to balance.
    assert reg_balance(scan_dataset(train)) == []
    same = scan_dataset(train, train)
    assert any("is the training folder" in w for w in same.warnings)
    only_reg = scan_dataset(tmp_path / "nothing", reg)
    assert only_reg.is_empty and reg_balance(only_reg) == [] and epoch_items(only_reg) == []


def test_tag_frequency_counts_each_picture_and_includes_reg(tmp_path):
    train, reg = tmp_path / "train", tmp_path / "reg"
    picture(train / "2_sks" / "a.png")
    caption(train / "2_sks" / "a.txt", "sks, Red Hat, smile,, ")
    picture(train / "2_sks" / "b.png")
    caption(train / "2_sks" / "b.txt", "sks,red hat")
    picture(reg / "1_person" / "r.png")
    freq = scan_dataset(train, reg, ".txt").tag_frequency()
    assert freq == {"2_sks": {"sks": 2, "red hat": 2, "smile": 1}, "1_person": {"person": 1}}


def test_empty_datasets_are_described_not_raised(tmp_path):
    missing = scan_dataset(tmp_path / "missing")
    assert missing.is_empty and missing.entries == []
    assert "does not exist" in describe_empty(missing)

    train = tmp_path / "train"
    picture(train / "dog" / "a.png")
    picture(train / "loose.jpg", fmt="JPEG")
    msg = describe_empty(scan_dataset(train))
    assert "No folder named like 10_concept" in msg and str(train) in msg
    assert "dog" in msg and "loose.jpg" not in msg and "1 picture(s) lie directly" in msg

    broken = tmp_path / "broken"
    (broken / "10_dog").mkdir(parents=True)
    for i in range(3):
        (broken / "10_dog" / f"{i}.png").write_bytes(b"")
    (broken / "2_cat").mkdir()
    scan = scan_dataset(broken)
    msg = describe_empty(scan)
    assert "folder 10_dog has no readable pictures (3 skipped" in msg.lower()
    assert "empty file" in msg
    assert "Folder 2_cat has no pictures" in msg
    assert len(scan.skipped) == 3

    ok = tmp_path / "ok"
    picture(ok / "1_x" / "a.png")
    assert describe_empty(scan_dataset(ok)) == ""


def test_scan_is_deterministic_with_and_without_threads(tmp_path):
    train = tmp_path / "train"
    for folder in ("3_b", "1_a", "2_c"):
        for i in range(6):
            picture(train / folder / f"{5 - i}.png", (8 + i, 8))
    one = scan_dataset(train, workers=1)
    many = scan_dataset(train, workers=4)
    assert one.entries == many.entries
    assert [e.folder for e in one.entries][:6] == ["1_a"] * 6
    assert [e.path.name for e in one.entries][:3] == ["0.png", "1.png", "2.png"]
