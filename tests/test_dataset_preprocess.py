"""lib_trainer.dataset.preprocess: source/ → train/<repeats>_<concept>/, idempotent, source untouched."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from lib_trainer.dataset import crop as crop_mod
from lib_trainer.dataset.crop import (crop_window, detect_faces, face_crop_boxes, focal_point, haar_cascade_path,
                                      interest_map)
from lib_trainer.dataset.preprocess import (MANIFEST_NAME, PreprocessError, PreprocessOptions, concept_folder_name,
                                            preprocess, validate_target)
from lib_trainer.trainer.buckets import assign_bucket, make_buckets
from tests.dataset_corpus import exif_rotated_jpeg, noise, save_picture


def _snapshot(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _off_centre_patch(size=(1536, 512), patch_x=1100):
    """Flat grey with a noisy 300×300 patch well right of the middle."""
    im = Image.new("RGB", size, (128, 128, 128))
    rng = np.random.default_rng(0)
    patch = Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8))
    im.paste(patch, (patch_x, (size[1] - 300) // 2))
    return im


def _no_faces(_image):
    return []


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "v1" / "dataset" / "source"
    save_picture(src / "wide.png", noise((1024, 512), 1))
    save_picture(src / "tall.jpg", noise((600, 900), 2), quality=90)
    save_picture(src / "small.png", noise((200, 150), 3))
    (src / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (src / "wide.txt").write_text("sks dog, grass", encoding="utf-8")
    (src / "tall.caption").write_bytes("\ufeffsks dog, standing\r\n".encode("utf-8"))
    (src / ".import-index.json").write_text("{}", encoding="utf-8")
    return src


def test_target_must_be_multiples_of_64():
    assert validate_target(512, 768) == (512, 768)
    for w, h in ((500, 512), (512, 0), (32, 64), (512.5, 512)):
        with pytest.raises(PreprocessError) as caught:
            validate_target(w, h)
        assert "64" in str(caught.value)
    with pytest.raises(PreprocessError) as caught:
        validate_target(500, 700)
    assert "512×704" in str(caught.value)


def test_concept_folder_names():
    assert concept_folder_name(10, "sks dog") == "10_sks dog"
    assert concept_folder_name(3, " 可爱的狗 ") == "3_可爱的狗"
    for repeats, concept in ((0, "dog"), (True, "dog"), (2.5, "dog"), (1, ""), (1, "a/b"), (1, ".."), (1, "dog."),
                             (1, "a:b"), (1, "x" * 200)):
        with pytest.raises(PreprocessError):
            concept_folder_name(repeats, concept)


def test_bad_options_are_refused(source, tmp_path):
    for options in (PreprocessOptions(width=500), PreprocessOptions(crop="zoom"), PreprocessOptions(image_format="gif"),
                    PreprocessOptions(face_crops=-1), PreprocessOptions(background="plaid"),
                    PreprocessOptions(caption_extension=".md"), PreprocessOptions(resample="nearest")):
        with pytest.raises(PreprocessError):
            preprocess(source, tmp_path / "train", repeats=1, concept="dog", options=options)
    with pytest.raises(PreprocessError):
        preprocess(tmp_path / "missing", tmp_path / "train", repeats=1, concept="dog")
    with pytest.raises(PreprocessError):
        preprocess(source, source, repeats=1, concept="dog")


def test_center_crop_sizes_captions_and_source_untouched(source, tmp_path):
    before = _snapshot(source)
    train = tmp_path / "v1" / "dataset" / "train"
    result = preprocess(source, train, repeats=10, concept="sks dog", options=PreprocessOptions(width=512, height=512),
                        face_detector=_no_faces)
    out = train / "10_sks dog"
    assert result.folder == str(out)
    # image_format "auto": JPEG sources give JPEG outputs, the others PNG.
    assert _files(out) == ["rotated.jpg", "small.png", "tall.jpg", "tall.txt", "wide.png", "wide.txt"]
    for name in ("rotated.jpg", "small.png", "tall.jpg", "wide.png"):
        with Image.open(out / name) as im:
            assert im.size == (512, 512) and im.mode == "RGB"
    assert (out / "wide.txt").read_text(encoding="utf-8") == "sks dog, grass"
    assert (out / "tall.txt").read_text(encoding="utf-8") == "sks dog, standing"  # from .caption, BOM and CRLF gone
    assert _snapshot(source) == before
    assert not [p for p in out.iterdir() if p.suffix == ".tmp" or ".tmp" in p.name]
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["sources"]["wide.png"]["outputs"] == ["wide.png"]
    assert sorted(result.written) == ["rotated.jpg", "small.png", "tall.jpg", "wide.png"]
    with Image.open(out / "tall.jpg") as im:
        assert im.format == "JPEG"
    with Image.open(out / "wide.png") as im:
        assert im.format == "PNG"
    assert result.sources == 4 and "4 training pictures" in result.summary()


def test_center_crop_takes_the_middle(tmp_path):
    src = tmp_path / "source"
    im = Image.new("RGB", (1024, 512), (255, 0, 0))
    im.paste((0, 0, 255), (512, 0, 1024, 512))
    im.paste((0, 255, 0), (0, 0, 100, 512))  # the left edge is cut away
    save_picture(src / "halves.png", im)
    preprocess(src, tmp_path / "train", repeats=1, concept="x", options=PreprocessOptions(), face_detector=_no_faces)
    with Image.open(tmp_path / "train" / "1_x" / "halves.png") as out:
        out = out.convert("RGB")
        assert out.getpixel((10, 256)) == (255, 0, 0) and out.getpixel((500, 256)) == (0, 0, 255)


def test_focal_crop_moves_toward_the_busy_region(tmp_path):
    src = tmp_path / "source"
    save_picture(src / "patch.png", _off_centre_patch())
    options = PreprocessOptions(crop="focal")
    preprocess(src, tmp_path / "train", repeats=1, concept="x", options=options, face_detector=_no_faces)
    with Image.open(tmp_path / "train" / "1_x" / "patch.png") as out:
        arr = np.asarray(out.convert("L"), dtype=np.float32)
    # Scaled 1536×512 → the crop is 512 wide; the patch spans x 1100–1400, so a crop centred on it keeps it all.
    busy_columns = (arr.std(axis=0) > 20).sum()
    assert busy_columns >= 280
    (focus_x, _), why = focal_point(_off_centre_patch(), (512, 512), None)
    assert why == "detail" and 1100 <= focus_x <= 1400
    # A flat picture keeps the centre.
    (fx, fy), why = focal_point(Image.new("RGB", (1536, 512), "gray"), (512, 512), None)
    assert why == "center" and (fx, fy) == (768, 256)


def test_focal_crop_prefers_faces(tmp_path):
    src = tmp_path / "source"
    save_picture(src / "face.png", _off_centre_patch(patch_x=1100))

    def face_on_the_left(image):
        w, h = image.size
        return [(int(w * 0.05), int(h * 0.3), int(h * 0.3), int(h * 0.3))]

    preprocess(src, tmp_path / "train", repeats=1, concept="x", options=PreprocessOptions(crop="focal"),
               face_detector=face_on_the_left)
    with Image.open(tmp_path / "train" / "1_x" / "face.png") as out:
        arr = np.asarray(out.convert("L"), dtype=np.float32)
    assert (arr.std(axis=0) > 20).sum() == 0  # the crop went left, to the face, away from the noisy patch
    (fx, _), why = focal_point(_off_centre_patch(), (512, 512), face_on_the_left)
    assert why == "face" and fx < 300


def test_extra_face_crops_through_an_injected_detector(tmp_path):
    src = tmp_path / "source"
    im = Image.new("RGB", (1200, 900), (40, 40, 40))
    im.paste((250, 200, 150), (700, 200, 900, 440))  # the "face": 200×240 at (700, 200)
    save_picture(src / "person.png", im)
    calls = []

    def detector(image):
        calls.append(image.size)
        return [(700, 200, 200, 240), (100, 100, 30, 30)]

    options = PreprocessOptions(face_crops=1, flip=True)
    result = preprocess(src, tmp_path / "train", repeats=1, concept="p", options=options, face_detector=detector)
    out = tmp_path / "train" / "1_p"
    assert _files(out) == ["person.png", "person_face1.png", "person_face1_flip.png", "person_flip.png"]
    assert calls and calls[0] == (1200, 900)  # faces are looked for in the full-size picture
    with Image.open(out / "person_face1.png") as close_up:
        assert close_up.size == (512, 512)
        arr = np.asarray(close_up.convert("RGB"), dtype=np.int32)
    face_share = (np.abs(arr - np.array([250, 200, 150])).sum(axis=2) < 30).mean()
    assert 0.1 < face_share < 0.5  # the face, with room around it
    with Image.open(out / "person_face1.png") as a, Image.open(out / "person_face1_flip.png") as b:
        assert np.array_equal(np.asarray(ImageOps.mirror(a.convert("RGB"))), np.asarray(b.convert("RGB")))
    assert len(result.written) == 4
    assert result.messages[-1] == "1 face close-up(s) added, from 1 of the pictures."
    faceless = preprocess(src, tmp_path / "faceless", repeats=1, concept="p", options=options,
                          face_detector=_no_faces)
    assert faceless.messages[-1] == "No face was found in the pictures, so no close-up was added."
    boxes = face_crop_boxes((1200, 900), [(700, 200, 200, 240), (100, 100, 30, 30)], (512, 512), 2.2, 2)
    assert len(boxes) == 2 and boxes[0][2] == boxes[0][3]  # square like the target
    for x, y, w, h in boxes:
        assert 0 <= x and 0 <= y and x + w <= 1200 and y + h <= 900
    # A face filling most of the picture gives no extra crop (the main output already is that).
    assert face_crop_boxes((400, 400), [(50, 50, 300, 300)], (512, 512), 2.2, 1) == []


def test_none_keeps_the_aspect_ratio_in_its_bucket(source, tmp_path):
    options = PreprocessOptions(crop="none", width=512, height=512, image_format="png")
    preprocess(source, tmp_path / "train", repeats=2, concept="b", options=options, face_detector=_no_faces)
    buckets = make_buckets((512, 512), 256, 1024, 64)
    expected = {"wide.png": (1024, 512), "tall.png": (600, 900), "small.png": (200, 150), "rotated.png": (200, 300)}
    for name, size in expected.items():
        with Image.open(tmp_path / "train" / "2_b" / name) as out:
            assert out.size == assign_bucket(size, buckets)


def test_flip_copies_are_mirrors(source, tmp_path):
    preprocess(source, tmp_path / "train", repeats=1, concept="f", options=PreprocessOptions(flip=True),
               face_detector=_no_faces)
    out = tmp_path / "train" / "1_f"
    assert "wide_flip.png" in _files(out) and "wide_flip.txt" in _files(out)
    with Image.open(out / "wide.png") as a, Image.open(out / "wide_flip.png") as b:
        assert np.array_equal(np.asarray(ImageOps.mirror(a)), np.asarray(b))


def test_upscaler_is_used_for_small_pictures_only(source, tmp_path):
    calls = []

    def upscale(image, scale):
        calls.append((image.size, scale))
        return Image.new("RGB", (round(image.width * scale), round(image.height * scale)), (0, 255, 0))

    options = PreprocessOptions(upscaler_name="test")
    result = preprocess(source, tmp_path / "train", repeats=1, concept="u", options=options, upscale=upscale,
                        face_detector=_no_faces)
    sizes = sorted(size for size, _ in calls)
    # The crop regions of small.png (200×150) and rotated.png (200×300); the big pictures are only shrunk.
    assert sizes == [(150, 150), (200, 200)]
    scale = dict(calls)[(150, 150)]
    assert scale == pytest.approx(512 / 150, rel=0.01)
    with Image.open(tmp_path / "train" / "1_u" / "small.png") as out:
        assert out.convert("RGB").getpixel((100, 100)) == (0, 255, 0)
    with Image.open(tmp_path / "train" / "1_u" / "wide.png") as out:
        assert out.convert("RGB").getpixel((100, 100)) != (0, 255, 0)
    assert not result.messages


def test_a_failing_upscaler_falls_back_to_lanczos(source, tmp_path):
    def broken(image, scale):
        raise RuntimeError("no VRAM")

    result = preprocess(source, tmp_path / "train", repeats=1, concept="u", upscale=broken, face_detector=_no_faces)
    assert len(result.written) == 4 and any("no VRAM" in m for m in result.messages)


def test_rerun_is_idempotent_and_cleans_up(source, tmp_path):
    train = tmp_path / "train"
    options = PreprocessOptions(flip=True)
    first = preprocess(source, train, repeats=5, concept="d", options=options, face_detector=_no_faces)
    out = train / "5_d"
    snap = _snapshot(out)
    second = preprocess(source, train, repeats=5, concept="d", options=options, face_detector=_no_faces)
    assert second.written == [] and second.removed == [] and second.unchanged == first.written
    assert _snapshot(out) == snap  # nothing rewritten, not even the same bytes
    # A source picture removed: its outputs and their captions go.
    (source / "wide.png").unlink()
    third = preprocess(source, train, repeats=5, concept="d", options=options, face_detector=_no_faces)
    assert third.removed == ["wide.png", "wide_flip.png"]
    assert not [n for n in _files(out) if n.startswith("wide")]
    # Options changed: everything is redone, outputs no longer asked for are removed.
    fourth = preprocess(source, train, repeats=5, concept="d", options=PreprocessOptions(flip=False),
                        face_detector=_no_faces)
    assert sorted(fourth.written) == ["rotated.jpg", "small.png", "tall.jpg"]
    assert _files(out) == ["rotated.jpg", "small.png", "tall.jpg", "tall.txt"]
    # A source picture changed: only it is redone.
    save_picture(source / "small.png", noise((200, 150), 99))
    fifth = preprocess(source, train, repeats=5, concept="d", options=PreprocessOptions(flip=False),
                       face_detector=_no_faces)
    assert fifth.written == ["small.png"] and len(fifth.unchanged) == 2
    # An output deleted by hand is made again.
    (out / "tall.jpg").unlink()
    sixth = preprocess(source, train, repeats=5, concept="d", options=PreprocessOptions(flip=False),
                       face_detector=_no_faces)
    assert sixth.written == ["tall.jpg"]
    # The output format changed: the JPEG outputs become PNG ones, the old files go.
    seventh = preprocess(source, train, repeats=5, concept="d", options=PreprocessOptions(image_format="png"),
                         face_detector=_no_faces)
    assert sorted(seventh.removed) == ["rotated.jpg", "tall.jpg"]
    assert _files(out) == ["rotated.png", "small.png", "tall.png", "tall.txt"]


def test_files_someone_put_in_the_output_folder_are_left_alone(source, tmp_path):
    out = tmp_path / "train" / "1_d"
    save_picture(out / "mine.png", noise((512, 512), 7))
    (out / "notes.md").write_text("keep me")
    preprocess(source, tmp_path / "train", repeats=1, concept="d", face_detector=_no_faces)
    preprocess(source, tmp_path / "train", repeats=1, concept="d", options=PreprocessOptions(flip=True),
               face_detector=_no_faces)
    assert (out / "mine.png").exists() and (out / "notes.md").exists()


def test_caption_edits_in_the_output_folder_survive(source, tmp_path):
    train = tmp_path / "train"
    preprocess(source, train, repeats=1, concept="c", options=PreprocessOptions(flip=True), face_detector=_no_faces)
    out = train / "1_c"
    (out / "wide.txt").write_text("sks dog, grass, edited by hand", encoding="utf-8")
    (source / "wide.txt").write_text("sks dog, new source caption", encoding="utf-8")
    (source / "small.txt").write_text("small one", encoding="utf-8")
    result = preprocess(source, train, repeats=1, concept="c", options=PreprocessOptions(flip=True),
                        face_detector=_no_faces)
    assert (out / "wide.txt").read_text(encoding="utf-8") == "sks dog, grass, edited by hand"
    assert (out / "wide_flip.txt").read_text(encoding="utf-8") == "sks dog, new source caption"  # not edited
    assert (out / "small.txt").read_text(encoding="utf-8") == "small one"
    assert "wide.txt" in result.captions_kept and "small_flip.txt" in result.captions_written
    forced = preprocess(source, train, repeats=1, concept="c",
                        options=PreprocessOptions(flip=True, overwrite_captions=True), face_detector=_no_faces)
    assert (out / "wide.txt").read_text(encoding="utf-8") == "sks dog, new source caption"
    assert forced.written == []  # captions only: the pictures were up to date


def test_new_repeats_rename_the_folder(source, tmp_path):
    train = tmp_path / "train"
    preprocess(source, train, repeats=10, concept="dog", face_detector=_no_faces)
    (train / "10_dog" / "wide.txt").write_text("edited", encoding="utf-8")
    result = preprocess(source, train, repeats=20, concept="dog", face_detector=_no_faces)
    assert _files(train) == ["20_dog"] and result.written == []
    assert (train / "20_dog" / "wide.txt").read_text(encoding="utf-8") == "edited"
    assert any("10_dog" in m for m in result.messages)


def test_unreadable_sources_are_named_and_their_old_outputs_removed(source, tmp_path):
    train = tmp_path / "train"
    preprocess(source, train, repeats=1, concept="x", face_detector=_no_faces)
    data = (source / "tall.jpg").read_bytes()
    (source / "tall.jpg").write_bytes(data[: len(data) // 3])
    result = preprocess(source, train, repeats=1, concept="x", face_detector=_no_faces)
    assert result.skipped == [{"name": "tall.jpg", "reason": result.skipped[0]["reason"], "code": "truncated"}]
    assert "tall.jpg" in result.removed and not (train / "1_x" / "tall.jpg").exists()
    assert len(result.unchanged) == 3


def test_unicode_and_clashing_names(tmp_path):
    src = tmp_path / "source"
    save_picture(src / "可爱的狗 01.png", noise((600, 600), 1))
    save_picture(src / "a.png", noise((600, 600), 2))
    save_picture(src / "A.jpg", noise((600, 600), 3))
    save_picture(src / "b.png", noise((600, 600), 4))
    save_picture(src / "b_flip.png", noise((600, 600), 5))
    (src / "可爱的狗 01.txt").write_text("可爱, 狗", encoding="utf-8")
    preprocess(src, tmp_path / "train", repeats=1, concept="狗", options=PreprocessOptions(flip=True, image_format="png"),
               face_detector=_no_faces)
    out = tmp_path / "train" / "1_狗"
    names = _files(out)
    assert "可爱的狗 01.png" in names and "可爱的狗 01_flip.txt" in names
    assert (out / "可爱的狗 01_flip.txt").read_text(encoding="utf-8") == "可爱, 狗"
    pictures = [n for n in names if n.endswith(".png")]
    assert len(pictures) == 10 and len({n.lower() for n in pictures}) == 10
    assert not {"a.png", "A.png"} & set(names)  # both a and A got a hash
    assert "b.png" in names and "b_flip.png" in names  # b keeps its name …
    assert [n for n in names if n.startswith("b_flip_")]  # … and b_flip.png, which would clash, got a hash


def test_progress_stop_and_resume(source, tmp_path):
    stop = threading.Event()
    seen = []

    def progress(done, total, name):
        seen.append((done, total))
        stop.set()

    result = preprocess(source, tmp_path / "train", repeats=1, concept="s", progress=progress, stop=stop,
                        workers=1, face_detector=_no_faces)
    assert result.stopped and len(result.written) == 1 and seen == [(1, 4)]
    assert "again" in result.summary()
    rest = preprocess(source, tmp_path / "train", repeats=1, concept="s", face_detector=_no_faces)
    assert len(rest.unchanged) == 1 and len(rest.written) == 3 and not rest.stopped


def test_jpeg_output_and_background(tmp_path):
    src = tmp_path / "source"
    rgba = Image.new("RGBA", (512, 512), (255, 0, 0, 0))
    save_picture(src / "clear.png", rgba)
    options = PreprocessOptions(image_format="jpg", background="black")
    preprocess(src, tmp_path / "train", repeats=1, concept="j", options=options, face_detector=_no_faces)
    with Image.open(tmp_path / "train" / "1_j" / "clear.jpg") as out:
        assert out.format == "JPEG" and max(out.convert("RGB").getpixel((10, 10))) < 8


def test_crop_window_is_the_covering_region_inside_the_picture():
    assert crop_window((1000, 512), (512, 512)) == (244, 0, 756, 512)
    assert crop_window((1000, 512), (512, 512), (990, 10)) == (488, 0, 1000, 512)
    assert crop_window((1000, 512), (512, 512), (0, 500)) == (0, 0, 512, 512)
    assert crop_window((2000, 1000), (512, 512)) == (500, 0, 1500, 1000)  # in the picture's own pixels
    assert crop_window((100, 300), (512, 768)) == (0, 75, 100, 225)  # smaller than the target: enlarged later


def test_interest_map_scores_detail_over_flat():
    gray = np.full((64, 128), 100, dtype=np.uint8)
    gray[:, 96:] = (np.random.default_rng(0).random((64, 32)) * 255).astype(np.uint8)
    score = interest_map(gray, block=8)
    assert score.shape == (8, 16)
    assert score[:, 12:].mean() > 1.0 and score[:, :10].max() == 0


def test_haar_cascades_ship_with_opencv_and_load():
    path = haar_cascade_path()
    assert path is not None and path.is_file() and path.name == "haarcascade_frontalface_default.xml"
    assert crop_mod._cascade("haarcascade_frontalface_default.xml") is not None
    assert crop_mod._cascade("haarcascade_profileface.xml") is not None
    assert detect_faces(Image.new("RGB", (640, 480), (128, 128, 128))) == []
    assert detect_faces(noise((900, 600), 5)) == []


def test_without_opencv_focal_crop_still_works(monkeypatch, tmp_path):
    monkeypatch.setattr(crop_mod, "_cv2", lambda: None)
    assert detect_faces(noise((640, 480), 1)) == [] and haar_cascade_path() is None
    src = tmp_path / "source"
    save_picture(src / "patch.png", _off_centre_patch())
    result = preprocess(src, tmp_path / "train", repeats=1, concept="n", options=PreprocessOptions(crop="focal"))
    assert result.written == ["patch.png"]


def test_default_face_detector_runs_in_focal_mode(source, tmp_path):
    result = preprocess(source, tmp_path / "train", repeats=1, concept="h", options=PreprocessOptions(crop="focal"))
    assert len(result.written) == 4 and not result.skipped


def test_the_upscaler_is_never_called_twice_at_once(tmp_path):
    src = tmp_path / "source"
    for i in range(6):
        save_picture(src / f"s{i}.png", noise((120, 100), 600 + i))
    active = []
    overlaps = []
    lock = threading.Lock()

    def upscale(image, scale):
        with lock:
            active.append(1)
            if len(active) > 1:
                overlaps.append(len(active))
        try:
            threading.Event().wait(0.02)
            return image.resize((round(image.width * scale), round(image.height * scale)))
        finally:
            with lock:
                active.pop()

    result = preprocess(src, tmp_path / "train", repeats=1, concept="u", upscale=upscale, workers=3,
                        face_detector=_no_faces)
    assert len(result.written) == 6 and overlaps == []


def test_a_second_folder_of_the_same_concept_is_pointed_out(source, tmp_path):
    train = tmp_path / "train"
    (train / "3_dog").mkdir(parents=True)
    (train / "7_dog").mkdir()
    result = preprocess(source, train, repeats=3, concept="dog", face_detector=_no_faces)
    assert any("7_dog" in m for m in result.messages) and (train / "7_dog").is_dir()


def test_resampling_choice(tmp_path):
    src = tmp_path / "source"
    save_picture(src / "big.png", noise((1024, 1024), 9))
    area = preprocess(src, tmp_path / "a", repeats=1, concept="r", face_detector=_no_faces)
    lanczos = preprocess(src, tmp_path / "l", repeats=1, concept="r", options=PreprocessOptions(resample="lanczos"),
                         face_detector=_no_faces)
    with Image.open(tmp_path / "a" / "1_r" / "big.png") as a, Image.open(tmp_path / "l" / "1_r" / "big.png") as b:
        a_arr = np.asarray(a, dtype=np.int32)
        b_arr = np.asarray(b, dtype=np.int32)
    with Image.open(src / "big.png") as im:
        expected = np.asarray(im.convert("RGB").reduce(2), dtype=np.int32)  # 2×2 pixel averages
    assert np.abs(a_arr - expected).max() <= 1 and not np.array_equal(a_arr, b_arr)
    assert area.written == lanczos.written == ["big.png"]
