"""lib_trainer.dataset.images: opening one picture safely and normalising it to RGB."""
from __future__ import annotations

import resource

import pytest
from PIL import Image, ImageFile

from lib_trainer.dataset import images
from lib_trainer.dataset.images import ImageProblem, inspect_image, open_image, parse_background, to_rgb
from tests.dataset_corpus import (
    animated_gif,
    cmyk_jpeg,
    corpus,
    encode,
    exif_rotated_jpeg,
    gray16_png,
    noise,
    palette_png_with_transparency,
    png_header_claiming,
    png_rgb16,
)


def _close(a, b, tol=12):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(corpus()))
def test_corpus_outcome_from_bytes_and_from_file(name, tmp_path):
    data, expected = corpus()[name]
    path = tmp_path / name
    path.write_bytes(data)
    for source in (data, path):
        if expected == "ok":
            info = inspect_image(source, name=name)
            assert info.width > 0 and info.height > 0
            rgb = open_image(source, name=name)
            assert rgb.mode == "RGB" and rgb.size == info.size
        else:
            with pytest.raises(ImageProblem) as caught:
                inspect_image(source, name=name)
            assert caught.value.code == expected
            assert caught.value.message and caught.value.message == str(caught.value)


def test_messages_name_the_problem():
    c = corpus()
    messages = {}
    for name in ("truncated.jpg", "zero.png", "text.png", "huge.png", "icon.ico", "tiny.png"):
        with pytest.raises(ImageProblem) as caught:
            inspect_image(c[name][0], name=name)
        messages[name] = caught.value.message
    assert "truncated" in messages["truncated.jpg"] and "JPEG" in messages["truncated.jpg"]
    assert messages["zero.png"] == "empty file"
    assert "not an image" in messages["text.png"]
    assert "30000×30000" in messages["huge.png"] and "too large" in messages["huge.png"]
    assert "ICO" in messages["icon.ico"]
    assert "40×40" in messages["tiny.png"] and "64" in messages["tiny.png"]


def test_decompression_bomb_header_is_refused_without_decoding(monkeypatch):
    data = png_header_claiming(30000, 30000)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels of a refused picture must never be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for call in (inspect_image, open_image):
        with pytest.raises(ImageProblem) as caught:
            call(data, name="huge.png")
        assert caught.value.code == "too_large"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024  # 30000×30000 RGB would be 2.7 GB


def test_limits_are_the_callers_not_pillows():
    data = encode(noise((400, 300)), "PNG")
    with pytest.raises(ImageProblem) as caught:
        inspect_image(data, max_pixels=100_000)
    assert caught.value.code == "too_large"
    assert inspect_image(data, max_pixels=120_000).size == (400, 300)
    with pytest.raises(ImageProblem):
        inspect_image(data, min_side=301)
    # Pillow's own process-wide limit (the WebUI's business) does not decide.
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000
        assert open_image(data).size == (400, 300)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_truncated_jpeg_caught_even_when_pillow_accepts_truncated_files(monkeypatch):
    data = encode(noise((320, 240)), "JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageProblem) as caught:
        inspect_image(data[: len(data) - 400], name="cut.jpg")
    assert caught.value.code == "truncated"
    assert inspect_image(data).size == (320, 240)


def test_exif_orientation_applied():
    data = exif_rotated_jpeg()
    info = inspect_image(data)
    assert info.size == (200, 300) and info.orientation == 6
    im = open_image(data)
    assert im.size == (200, 300)
    assert _close(im.getpixel((195, 5)), (255, 0, 0), 40)  # stored top-left is now top-right
    assert _close(im.getpixel((5, 5)), (0, 0, 255), 40)


def test_cmyk_becomes_rgb_with_the_right_colour():
    assert inspect_image(cmyk_jpeg()).mode == "CMYK"
    im = open_image(cmyk_jpeg())
    assert im.mode == "RGB" and _close(im.getpixel((60, 45)), (255, 0, 0), 30)


def test_16_bit_pictures_are_scaled_not_clipped():
    im = open_image(gray16_png())
    assert im.mode == "RGB"
    assert im.getpixel((10, 10)) == (255, 255, 255)
    assert im.getpixel((100, 10)) == (128, 128, 128)
    rgb = open_image(png_rgb16(80, 80, (65535, 32896, 0)))
    assert _close(rgb.getpixel((40, 40)), (255, 128, 0), 1)


def test_transparency_goes_onto_the_chosen_background():
    data = palette_png_with_transparency()
    assert inspect_image(data).has_alpha
    white = open_image(data)
    assert white.getpixel((10, 10)) == (255, 255, 255) and white.getpixel((80, 10)) == (0, 255, 0)
    black = open_image(data, background="black")
    assert black.getpixel((10, 10)) == (0, 0, 0) and black.getpixel((80, 10)) == (0, 255, 0)
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 32, 64))
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    assert to_rgb(rgba, "#00ff00").getpixel((50, 5)) == (0, 255, 0)
    assert to_rgb(rgba, "#00ff00").getpixel((5, 5)) == (255, 0, 0)
    assert _close(to_rgb(half).getpixel((5, 5)), (127, 127, 127), 2)


def test_animated_gif_gives_its_first_frame():
    data = animated_gif()
    info = inspect_image(data)
    assert info.animated and info.format == "GIF"
    assert open_image(data).getpixel((10, 10)) == (255, 0, 0)


def test_multipage_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (100, 80), c) for c in ((0, 0, 255), (255, 0, 0))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert open_image(data).getpixel((5, 5)) == (0, 0, 255)


def test_reduce_to_decodes_big_jpegs_smaller_but_still_covering():
    data = encode(noise((1600, 1200)), "JPEG", quality=90)
    im = open_image(data, reduce_to=(400, 300))
    assert im.size == (400, 300)
    im = open_image(data, reduce_to=(500, 300))
    assert im.size[0] >= 500 and im.size[1] >= 300 and im.size[0] < 1600
    rotated = open_image(exif_rotated_jpeg(), reduce_to=(100, 150))
    assert rotated.size == (100, 150)


def test_format_helpers():
    assert images.sniff_format(encode(noise(), "PNG")[:16]) == "PNG"
    assert images.sniff_format(b"hello world, text") is None
    assert images.extension_for("JPEG", "a.JPEG") == ".jpeg"
    assert images.extension_for("JPEG", "a.png") == ".jpg"
    assert images.extension_for("TIFF", "scan") == ".tif"
    assert images.is_image_name("X.JPG") and not images.is_image_name("x.txt")
    assert images.is_caption_name("a.caption")


def test_parse_background():
    assert parse_background(None) == (255, 255, 255)
    assert parse_background("Black") == (0, 0, 0)
    assert parse_background("#0f0") == (0, 255, 0)
    assert parse_background("#102030") == (16, 32, 48)
    assert parse_background([1, 2, 3]) == (1, 2, 3)
    for bad in ("purple-ish", (1, 2), (0, 0, 300)):
        with pytest.raises(ValueError):
            parse_background(bad)


def test_iter_images_skips_hidden_and_sidecars(tmp_path):
    (tmp_path / "b.png").write_bytes(encode(noise(), "PNG"))
    (tmp_path / "a.JPG").write_bytes(encode(noise(), "JPEG"))
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"")
    assert [p.name for p in images.iter_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in images.iter_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.webp"]
    assert list(images.iter_images(tmp_path / "missing")) == []


def test_unreadable_path_is_a_problem_not_a_crash(tmp_path):
    with pytest.raises(ImageProblem) as caught:
        inspect_image(tmp_path / "nope.png")
    assert caught.value.code == "unreadable"
