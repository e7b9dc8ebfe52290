"""lib_trainer.dataset.importer: files, archives and folders into dataset/source/, every bad file named."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import unicodedata
import zipfile


from lib_trainer.dataset.importer import (
    INDEX_NAME,
    ImportOptions,
    import_folder,
    import_pictures,
    import_zip,
    safe_name_stem,
    source_index,
)
from tests.dataset_corpus import corpus, encode, noise


def _pictures(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _by_name(report):
    return {item.name: item for item in report.items}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_bad_file_corpus_each_named_nothing_else_lost(tmp_path):
    upload = tmp_path / "upload"
    for name, (data, _) in corpus().items():
        _write(upload / name, data)
    source = tmp_path / "dataset" / "source"
    report = import_pictures(sorted(upload.iterdir()), source)
    items = _by_name(report)
    assert set(items) == set(corpus())
    for name, (data, expected) in corpus().items():
        item = items[name]
        if expected == "ok":
            assert item.status == "imported", (name, item.message)
            stored = source / item.stored_as
            assert stored.read_bytes() == data  # the original, byte for byte
            assert item.sha256 == hashlib.sha256(data).hexdigest()
        else:
            assert item.status == "skipped" and item.reason == expected, (name, item.reason, item.message)
            assert item.message
    ok = [n for n, (_, e) in corpus().items() if e == "ok"]
    assert len(report.imported) == len(ok) == len(_pictures(source))
    assert "animated" in " ".join(items["animated.gif"].notes)
    assert items["rotated.jpg"].size == (200, 300)
    md = report.to_markdown()
    assert "huge.png" in md and "30000×30000" in md and "truncated.jpg" in md
    json.dumps(report.to_dict())
    assert report.to_dict()["summary"] == report.summary()


def test_zip_with_unsafe_paths_refuses_them_and_imports_the_rest(tmp_path):
    archive = tmp_path / "pack.zip"
    good = encode(noise((200, 160), 11), "PNG")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/good.png", good)
        zf.writestr("set/good.txt", "a dog, sitting")
        zf.writestr("../evil.png", encode(noise((200, 160), 12), "PNG"))
        zf.writestr("set/../../evil2.png", encode(noise((200, 160), 13), "PNG"))
        zf.writestr("/etc/abs.png", encode(noise((200, 160), 14), "PNG"))
        zf.writestr("C:/windows/drive.png", encode(noise((200, 160), 15), "PNG"))
        zf.writestr("__MACOSX/set/._good.png", b"\x00\x05\x16\x07resource fork")
        zf.writestr("set/notes.pdf", b"%PDF-1.4\n")
        zf.writestr("set/inner.zip", b"PK\x03\x04")
    source = tmp_path / "v1" / "dataset" / "source"
    report = import_zip(archive, source)
    items = _by_name(report)
    for name in ("../evil.png", "set/../../evil2.png", "/etc/abs.png", "C:/windows/drive.png"):
        assert items[f"pack.zip/{name}"].reason == "zip_slip"
    assert items["pack.zip/__MACOSX/set/._good.png"].reason == "system_file"
    assert items["pack.zip/set/notes.pdf"].reason == "unsupported"
    assert items["pack.zip/set/inner.zip"].reason == "nested_archive"
    assert items["pack.zip/set/good.png"].status == "imported"
    assert items["pack.zip/set/good.txt"].status == "imported"
    assert _pictures(source) == ["good.png", "good.txt"]
    assert (source / "good.txt").read_text() == "a dog, sitting"
    assert not list(tmp_path.rglob("evil*.png")) and not list(tmp_path.rglob("abs.png"))


def test_zip_bombs_are_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    zeros = b"\x00" * (24 * 2**20)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bmp", zeros)
        zf.writestr("a.png", encode(noise((200, 160), 21), "PNG"))
        zf.writestr("b.png", encode(noise((200, 160), 22), "PNG"))
    source = tmp_path / "source"
    report = import_zip(archive, source)
    items = _by_name(report)
    assert items["bomb.zip/big.bmp"].reason == "zip_bomb" and "zip bomb" in items["bomb.zip/big.bmp"].message
    assert _pictures(source) == ["a.png", "b.png"]
    # A total budget: members beyond it are not extracted.
    small_budget = ImportOptions(max_archive_bytes=len(encode(noise((200, 160), 21), "PNG")) + 10)
    report = import_zip(archive, tmp_path / "other", options=small_budget)
    assert _by_name(report)["bomb.zip/b.png"].reason == "zip_bomb"
    # A member larger than the file limit is not read at all.
    report = import_zip(archive, tmp_path / "third", options=ImportOptions(max_file_bytes=1000))
    assert {i.reason for i in report.skipped} == {"too_large", "zip_bomb"}


def test_a_damaged_archive_is_named(tmp_path):
    bad = _write(tmp_path / "broken.zip", b"PK\x03\x04 this is not really a zip")
    report = import_pictures([bad], tmp_path / "source")
    assert report.skipped[0].reason == "bad_archive" and report.skipped[0].name == "broken.zip"


def test_unicode_names_round_trip(tmp_path):
    names = ["可爱的狗 01.png", "café au lait.jpg", "Ünïcödé — 名前.webp", unicodedata.normalize("NFD", "Åsa.png")]
    upload = tmp_path / "up"
    for i, name in enumerate(names):
        fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        _write(upload / name, encode(noise((160, 120), 30 + i), fmt))
    _write(upload / "可爱的狗 01.txt", "可爱, 狗".encode("utf-8"))
    source = tmp_path / "source"
    report = import_pictures(sorted(upload.iterdir()), source)
    stored = sorted(i.stored_as for i in report.imported)
    assert stored == sorted(unicodedata.normalize("NFC", n) for n in names)
    assert (source / "可爱的狗 01.txt").read_text(encoding="utf-8") == "可爱, 狗"
    # The same names inside a zip (UTF-8 flag set by Python's zipfile).
    archive = tmp_path / "名前.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("狗/小狗.png", encode(noise((160, 120), 40), "PNG"))
    report = import_zip(archive, source)
    assert report.imported[0].stored_as == "小狗.png" and report.imported[0].name == "名前.zip/狗/小狗.png"
    index = json.loads((source / INDEX_NAME).read_text(encoding="utf-8"))
    assert index["files"]["小狗.png"]["original"] == "名前.zip/狗/小狗.png"


def test_unsafe_names_become_safe_on_every_os(tmp_path):
    assert safe_name_stem('a:b*c?"d<e>f|g') == "a_b_c__d_e_f_g"
    assert safe_name_stem("CON") == "_CON" and safe_name_stem("lpt1.backup") == "_lpt1.backup"
    assert safe_name_stem("...hidden. ") == "hidden"
    assert safe_name_stem("  \t ") == "picture"
    assert safe_name_stem("tab\tand\nnewline") == "tab and newline"
    long = safe_name_stem("狗" * 200)
    assert len(long.encode("utf-8")) <= 120 and set(long) == {"狗"}
    upload = tmp_path / "up"
    _write(upload / "CON.png", encode(noise((160, 120), 50), "PNG"))
    report = import_pictures([upload / "CON.png"], tmp_path / "source")
    assert report.imported[0].stored_as == "_CON.png"


def test_duplicates_and_already_imported_are_noticed(tmp_path):
    data = encode(noise((200, 160), 60), "PNG")
    upload = tmp_path / "up"
    _write(upload / "one.png", data)
    _write(upload / "sub" / "copy of one.png", data)
    source = tmp_path / "source"
    report = import_pictures([upload / "one.png", upload / "sub" / "copy of one.png"], source)
    items = _by_name(report)
    assert items["one.png"].status == "imported"
    dup = items["copy of one.png"]
    assert dup.status == "duplicate" and dup.stored_as == "one.png" and "one.png" in dup.message
    assert _pictures(source) == ["one.png"]
    again = import_pictures([upload / "one.png"], source)
    assert again.items[0].status == "already_imported" and "one.png" in again.items[0].message
    # A picture someone put into source/ by hand counts too (hashed, then remembered in the index).
    manual = encode(noise((200, 160), 61), "JPEG")
    _write(source / "by hand.jpg", manual)
    _write(upload / "later.jpg", manual)
    report = import_pictures([upload / "later.jpg"], source)
    assert report.items[0].status == "already_imported" and report.items[0].stored_as == "by hand.jpg"
    assert source_index(source)["by hand.jpg"]["sha256"] == hashlib.sha256(manual).hexdigest()
    assert len(report.duplicates) == 1 and not report.imported


def test_name_clashes_get_a_hash_and_stems_stay_unique(tmp_path):
    upload = tmp_path / "up"
    a1 = _write(upload / "x" / "a.png", encode(noise((200, 160), 70), "PNG"))
    a2 = _write(upload / "y" / "a.png", encode(noise((200, 160), 71), "PNG"))
    a3 = _write(upload / "z" / "A.jpg", encode(noise((200, 160), 72), "JPEG"))
    source = tmp_path / "source"
    report = import_pictures([a1, a2, a3], source)
    stored = [i.stored_as for i in report.imported]
    assert stored[0] == "a.png"
    assert stored[1].startswith("a_") and stored[1].endswith(".png")
    assert stored[2].startswith("A_") and stored[2].endswith(".jpg")
    stems = [s.rsplit(".", 1)[0].lower() for s in _pictures(source)]
    assert len(stems) == len(set(stems)) == 3


def test_sidecar_captions_follow_their_picture(tmp_path):
    folder = tmp_path / "server" / "photos"
    _write(folder / "dog.jpg", encode(noise((200, 160), 80), "JPEG"))
    _write(folder / "dog.txt", b"dog, grass")
    _write(folder / "dog.caption", b"a dog on grass")
    _write(folder / "cat.png", encode(noise((200, 160), 81), "PNG"))
    _write(folder / "CAT.TXT", b"cat")
    _write(folder / "lonely.txt", b"no picture here")
    _write(folder / "broken.png", b"\x89PNG\r\n\x1a\n broken")
    _write(folder / "broken.txt", b"caption of a broken picture")
    _write(folder / "deeper" / "bird.webp", encode(noise((200, 160), 82), "WEBP"))
    _write(folder / "deeper" / "bird.txt", b"bird")
    _write(folder / "deeper" / "dog.txt", b"this caption is not beside dog.jpg")
    _write(folder / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    source = tmp_path / "v1" / "dataset" / "source"
    report = import_folder(folder, source)
    items = _by_name(report)
    assert (source / "dog.txt").read_bytes() == b"dog, grass"
    assert (source / "dog.caption").read_bytes() == b"a dog on grass"
    assert (source / "cat.txt").read_bytes() == b"cat"  # extension lower-cased: the trainer looks for .txt
    assert (source / "bird.txt").read_bytes() == b"bird"
    assert items["lonely.txt"].reason == "orphan_caption"
    assert items["broken.txt"].reason == "orphan_caption"
    assert items["deeper/dog.txt"].reason == "orphan_caption"
    assert items["broken.png"].status == "skipped"
    assert ".DS_Store" not in items  # hidden files in a server folder are not worth a line
    assert len(report.captions) == 4


def test_a_new_caption_for_an_already_imported_picture(tmp_path):
    data = encode(noise((200, 160), 90), "PNG")
    up = tmp_path / "up"
    _write(up / "p.png", data)
    source = tmp_path / "source"
    import_pictures([up / "p.png"], source)
    _write(up / "p.txt", b"now with a caption")
    report = import_pictures([up / "p.png", up / "p.txt"], source)
    assert (source / "p.txt").read_bytes() == b"now with a caption"
    _write(up / "p.txt", b"a different caption")
    report = import_pictures([up / "p.png", up / "p.txt"], source)
    assert _by_name(report)["p.txt"].reason == "caption_exists"
    assert (source / "p.txt").read_bytes() == b"now with a caption"


def test_uploads_keep_their_real_names_and_unknown_extensions_are_sniffed(tmp_path):
    tmp_upload = _write(tmp_path / "gradio" / "tmpab12cd", encode(noise((200, 160), 100), "JPEG"))
    sniffed = _write(tmp_path / "photo.jpg_large", encode(noise((200, 160), 101), "JPEG"))
    pdf = _write(tmp_path / "doc.pdf", b"%PDF-1.4 hello")
    report = import_pictures([("Holiday 1.jpg", tmp_upload), sniffed, pdf], tmp_path / "source")
    items = _by_name(report)
    assert items["Holiday 1.jpg"].stored_as == "Holiday 1.jpg"
    assert items["photo.jpg_large"].stored_as == "photo.jpg"
    assert items["doc.pdf"].reason == "unsupported" and ".pdf" in items["doc.pdf"].message


def test_progress_and_stop(tmp_path):
    up = tmp_path / "up"
    files = [_write(up / f"p{i}.png", encode(noise((120, 100), 200 + i), "PNG")) for i in range(8)]
    seen = []
    stop = threading.Event()

    def progress(done, total, name):
        seen.append((done, total, name))
        if done == 3:
            stop.set()

    report = import_pictures(files, tmp_path / "source", progress=progress, stop=stop,
                             options=ImportOptions(workers=2))
    assert report.stopped and "stopped" in report.summary()
    assert 3 <= len(report.imported) < 8
    assert seen[0][:2] == (1, 8) and seen[2][0] == 3
    # Running again picks up the rest; the first ones are noticed as already there.
    report = import_pictures(files, tmp_path / "source")
    assert len(report.imported) + len(report.duplicates) == 8 and not report.stopped
    assert len(_pictures(tmp_path / "source")) == 8


def test_folder_rules(tmp_path):
    source = tmp_path / "v1" / "dataset" / "source"
    source.mkdir(parents=True)
    report = import_folder(tmp_path / "v1", source)
    assert report.notes and not report.items  # never import the dataset into itself
    outside = tmp_path / "elsewhere"
    _write(outside / "a.png", encode(noise((120, 100), 300), "PNG"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    report = import_folder(outside, source, allowed_roots=[allowed])
    assert report.skipped[0].reason == "not_allowed" and not _pictures(source)
    link_dir = allowed / "set"
    link_dir.mkdir()
    (link_dir / "link.png").symlink_to(outside / "a.png")
    _write(link_dir / "real.png", encode(noise((120, 100), 301), "PNG"))
    _write(link_dir / "old.zip", b"PK\x03\x04")
    report = import_folder(link_dir, source, allowed_roots=[allowed])
    items = _by_name(report)
    assert items["link.png"].reason == "link_outside"
    assert items["old.zip"].reason == "archive_in_folder"
    assert _pictures(source) == ["real.png"]
    # Uploads ((name, path) pairs) are the server's own temporary files: the folder rule is not theirs.
    upload = _write(tmp_path / "tmp" / "gradio" / "abc123", encode(noise((120, 100), 302), "PNG"))
    report = import_pictures([("dropped.png", upload), outside / "a.png"], source, allowed_roots=[allowed])
    items = _by_name(report)
    assert items["dropped.png"].status == "imported" and items["a.png"].reason == "not_allowed"


def test_max_files_cuts_off_and_says_so(tmp_path):
    up = tmp_path / "up"
    files = [_write(up / f"p{i}.png", encode(noise((100, 100), 400 + i), "PNG")) for i in range(5)]
    report = import_pictures(files, tmp_path / "source", options=ImportOptions(max_files=3))
    assert len(report.imported) == 3 and any("3" in n for n in report.notes)


def test_damaged_zip_member_is_named(tmp_path):
    good = encode(noise((120, 100), 500), "PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("ok.png", good)
        zf.writestr("bad.png", good)
    data = bytearray(buf.getvalue())
    second = data.find(b"bad.png") + len(b"bad.png") + 200  # inside bad.png's stored bytes
    data[second] ^= 0xFF
    archive = _write(tmp_path / "crc.zip", bytes(data))
    report = import_zip(archive, tmp_path / "source")
    items = _by_name(report)
    assert items["crc.zip/ok.png"].status == "imported"
    assert items["crc.zip/bad.png"].status == "skipped" and items["crc.zip/bad.png"].reason in ("corrupt", "truncated")


def test_zip_names_from_chinese_windows_and_without_the_utf8_flag_keep_their_characters(tmp_path):
    # Windows' "Compressed folder" stores names in the system code page (GBK on Chinese Windows) and sets no
    # UTF-8 flag; some tools store UTF-8 without the flag. Written here with ASCII stand-ins of the same length,
    # then the stored bytes swapped (zipfile itself always flags non-ASCII names as UTF-8).
    names = {b"AAAAAAAA.png": "可爱的狗.png".encode("gbk"), b"BBBBBB.png": "小狗.png".encode("utf-8")}
    archive = tmp_path / "windows.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i, stand_in in enumerate(names):
            zf.writestr(stand_in.decode("ascii"), encode(noise((120, 100), 40 + i), "PNG"))
        zf.writestr("plain.png", encode(noise((120, 100), 50), "PNG"))
    data = buffer.getvalue()
    for stand_in, stored in names.items():
        assert len(stand_in) == len(stored) and data.count(stand_in) == 2  # local header + central directory
        data = data.replace(stand_in, stored)
    archive.write_bytes(data)
    source = tmp_path / "source"
    report = import_zip(archive, source)
    assert len(report.imported) == 3, report.to_markdown()
    assert _pictures(source) == sorted(["plain.png", "可爱的狗.png", "小狗.png"])
