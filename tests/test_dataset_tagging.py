import threading
from pathlib import Path

import pytest
from PIL import Image

from lib_trainer.dataset.captions.caption_set import CaptionSet
from lib_trainer.dataset.captions.sidecar import caption_path, read_caption
from lib_trainer.dataset.tagging import (
    EXISTING_MODES, TaggingUnavailable, available_taggers, caption_pictures, combine, no_tagger_message,
)
from lib_trainer.hosts.base import Host, HostError, TaggerInfo

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class FakeTaggerHost(Host):
    """A host whose taggers describe a picture by its colour; "blue" pictures make the booru tagger fail."""

    name = "fake"

    def __init__(self, taggers=None):
        self._taggers = taggers if taggers is not None else [
            TaggerInfo("deepbooru", "DeepBooru", True, 0.5),
            TaggerInfo("blip", "BLIP", False),
        ]
        self.calls = []

    def taggers(self):
        return list(self._taggers)

    def tag(self, tagger_id, image, threshold=None):
        if tagger_id not in {t.id for t in self._taggers}:
            raise HostError(f"unknown tagger {tagger_id}")
        colour = next(name for name, rgb in COLOURS.items() if image.getpixel((0, 0)) == rgb)
        self.calls.append((tagger_id, colour, threshold, image.mode, image.size))
        if tagger_id == "blip":
            return [f"a {colour} square, nothing else"]
        if colour == "blue":
            raise HostError("CUDA error: device-side assert triggered")
        if colour == "white":
            return []
        return [f"{colour}_theme", "no_humans", "simple background", "^_^"]

    # the rest of the protocol is not used by captioning
    def checkpoints(self, refresh=False):
        return []

    def release_gpu(self):
        pass

    def restore_gpu(self):
        pass

    def txt2img(self, request, *, interrupt=None):
        raise HostError("no txt2img")

    def interrupt(self):
        pass

    def samplers(self):
        return ["Euler a"]

    def upscalers(self):
        return []

    def upscale(self, image, upscaler, scale):
        raise HostError("no upscaler")

    def lora_dir(self):
        return Path(".")

    def outputs_dir(self):
        return Path(".")

    def refresh_loras(self):
        pass

    def send_to_txt2img(self, prompt):
        return False

    def forget_preview_loras(self, version_dir):
        pass


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "v1" / "dataset" / "train" / "10_柴犬"
    folder.mkdir(parents=True)
    for name, colour in [("a.png", "red"), ("b 图.png", "green"), ("c.png", "red")]:
        Image.new("RGBA", (24, 16), COLOURS[colour] + (255,)).save(folder / name)
    caption_path(folder / "a.png").write_text("old tag, red_theme", encoding="utf-8")
    return folder


def text(picture):
    return caption_path(picture).read_text(encoding="utf-8")


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_host_without_taggers_says_so_and_changes_nothing(folder):
    before = snapshot(folder.parent)
    for host in (FakeTaggerHost(taggers=[]),):
        with pytest.raises(TaggingUnavailable) as info:
            caption_pictures(host, "deepbooru", CaptionSet(folder))
        assert "WebUI" in str(info.value) and "by hand" in str(info.value)
        assert str(info.value) == no_tagger_message()
        assert isinstance(info.value, HostError)
    with pytest.raises(TaggingUnavailable, match="wd14"):
        caption_pictures(FakeTaggerHost(), "wd14", CaptionSet(folder))
    assert snapshot(folder.parent) == before


def test_a_host_that_knows_why_says_so_for_each_tagger(folder):
    from lib_trainer.hosts.base import TaggerUnavailable

    host = FakeTaggerHost(taggers=[])
    host.unavailable_taggers = lambda: [TaggerUnavailable("DeepBooru", "its model is not on disk (models/x)"),
                                        TaggerUnavailable("WD14 tagger", "the extension is not installed")]
    with pytest.raises(TaggingUnavailable) as info:
        caption_pictures(host, "deepbooru", CaptionSet(folder))
    assert str(info.value) == no_tagger_message(host)
    assert str(info.value).splitlines() == [
        "No tagger can caption here yet:", "• DeepBooru: its model is not on disk (models/x)",
        "• WD14 tagger: the extension is not installed",
        "You can still write and edit captions by hand and use the tag tools."]


def test_standalone_host_has_no_tagger(folder, tmp_path):
    from lib_trainer.hosts.standalone import StandaloneHost

    host = StandaloneHost(tmp_path / "ws", [tmp_path / "models"], lora_dir=tmp_path / "lora",
                          outputs_dir=tmp_path / "out")
    assert available_taggers(host) == []
    with pytest.raises(TaggingUnavailable, match="by hand"):
        caption_pictures(host, "deepbooru", [folder / "a.png"])
    # manual captions still work on such a host
    CaptionSet(folder).edit_caption("a.png", "written by hand")
    assert text(folder / "a.png") == "written by hand"


def test_existing_modes(folder):
    results = {}
    for mode in EXISTING_MODES:
        caption_path(folder / "a.png").write_text("old tag, red_theme", encoding="utf-8")
        caption_path(folder / "c.png").unlink(missing_ok=True)
        caption_path(folder / "b 图.png").unlink(missing_ok=True)
        host = FakeTaggerHost()
        report = caption_pictures(host, "deepbooru", CaptionSet(folder), existing=mode)
        results[mode] = (text(folder / "a.png"), report, host.calls)
    new = "red_theme, no_humans, simple background, ^_^"
    assert results["ignore"][0] == new
    assert results["keep"][0] == "old tag, red_theme"
    assert results["prepend"][0] == "red_theme, no_humans, simple background, ^_^, old tag"
    assert results["append"][0] == "old tag, red_theme, no_humans, simple background, ^_^"
    keep_report, keep_calls = results["keep"][1], results["keep"][2]
    assert keep_report.kept == [folder / "a.png"]
    assert [c[1] for c in keep_calls] == ["green", "red"]  # the kept picture was not sent to the tagger
    assert sorted(p.name for p in keep_report.captioned) == ["b 图.png", "c.png"]
    for mode in EXISTING_MODES:
        report = results[mode][1]
        assert report.total == 3 and report.done == 3 and not report.failed
    assert text(folder / "b 图.png") == "green_theme, no_humans, simple background, ^_^"


def test_trigger_word_threshold_and_spaces(folder):
    host = FakeTaggerHost()
    report = caption_pictures(host, "deepbooru", [folder / "a.png", folder / "c.png"], existing="append",
                              trigger_word="sks, 柴犬", underscores_to_spaces=True)
    # the existing caption is kept as written; "red theme" is the same tag as its "red_theme"
    assert text(folder / "a.png") == "sks, 柴犬, old tag, red_theme, no humans, simple background, ^_^"
    assert text(folder / "c.png") == "sks, 柴犬, red theme, no humans, simple background, ^_^"
    assert not caption_path(folder / "b 图.png").exists()  # not asked for
    assert [c[2] for c in host.calls] == [0.5, 0.5]  # the tagger's default threshold
    assert all(c[3] == "RGB" for c in host.calls)  # alpha flattened, as the trainer sees the picture
    assert len(report.captioned) == 2
    caption_pictures(host, "deepbooru", [folder / "c.png"], threshold=0.85)
    assert host.calls[-1][2] == 0.85
    caption_pictures(host, "blip", [folder / "c.png"], threshold=0.85)
    assert host.calls[-1][2] is None  # BLIP has no threshold
    # a sentence with a comma becomes two tags
    assert text(folder / "c.png") == "a red square, nothing else"
    with pytest.raises(ValueError):
        caption_pictures(host, "deepbooru", [folder / "c.png"], threshold=1.5)
    with pytest.raises(ValueError):
        caption_pictures(host, "deepbooru", [folder / "c.png"], existing="merge")


def test_failures_are_named_and_the_rest_go_on(folder):
    Image.new("RGB", (8, 8), COLOURS["blue"]).save(folder / "d.png")
    Image.new("RGB", (8, 8), COLOURS["white"]).save(folder / "e.png")
    caption_path(folder / "e.png").write_text("hand written", encoding="utf-8")
    (folder / "f.png").write_bytes(b"not a picture at all")
    host = FakeTaggerHost()
    report = caption_pictures(host, "deepbooru", CaptionSet(folder))
    failed = dict((p.name, why) for p, why in report.failed)
    assert set(failed) == {"d.png", "f.png"}
    assert "CUDA error" in failed["d.png"] and "tagger" in failed["d.png"]
    assert "opened" in failed["f.png"]
    assert report.no_tags == [folder / "e.png"]
    assert text(folder / "e.png") == "hand written"  # an empty tagging does not wipe a caption
    assert not caption_path(folder / "d.png").exists()
    assert sorted(p.name for p in report.captioned) == ["a.png", "b 图.png", "c.png"]
    summary = report.summary()
    assert "d.png" in summary and "f.png" in summary and "e.png" in summary and "3 of 6" in summary


def test_run_is_one_undoable_edit(folder):
    before = snapshot(folder.parent)
    report = caption_pictures(FakeTaggerHost(), "deepbooru", CaptionSet(folder), trigger_word="sks")
    assert len(report.captioned) == 3 and report.edit.action == "caption"
    cs = CaptionSet(folder)
    assert cs.last_edit().files == 3 and "DeepBooru" in cs.last_edit().label
    again = caption_pictures(FakeTaggerHost(), "deepbooru", CaptionSet(folder), trigger_word="sks")
    assert len(again.unchanged) == 3 and not again.captioned
    assert cs.last_edit().files == 3  # a run that changed nothing keeps the undo of the first
    result = cs.undo()
    assert len(result.restored) == 3
    assert snapshot(folder.parent) == before


def test_stop_progress_and_an_interrupted_run(folder):
    for i in range(20):
        Image.new("RGB", (8, 8), COLOURS["green"]).save(folder / f"z{i:02d}.png")
    stop = threading.Event()
    seen = []

    def progress(done, total, picture):
        seen.append((done, total, picture.name))
        if done == 2:
            stop.set()

    report = caption_pictures(FakeTaggerHost(), "deepbooru", CaptionSet(folder), progress=progress, stop=stop)
    assert report.stopped and report.done == 2
    assert seen == [(1, 23, "a.png"), (2, 23, "b 图.png")]
    assert "Stopped after 2 of 23" in report.summary()
    assert not caption_path(folder / "c.png").exists()

    # a run that dies part-way (the WebUI is shut down, say) keeps and journals what it had captioned
    class Dying(FakeTaggerHost):
        def tag(self, tagger_id, image, threshold=None):
            if len(self.calls) == 18:
                raise KeyboardInterrupt
            return super().tag(tagger_id, image, threshold)

    before = snapshot(folder.parent)
    with pytest.raises(KeyboardInterrupt):
        caption_pictures(Dying(), "deepbooru", CaptionSet(folder), existing="keep", stop=lambda: False)
    written = [p for p in CaptionSet(folder).pictures() if read_caption(p) is not None]
    assert len(written) == 2 + 18
    CaptionSet(folder).undo()
    assert snapshot(folder.parent) == before


def test_caption_set_trigger_word_is_used(folder):
    cs = CaptionSet(folder, trigger_word="ohwx")
    caption_pictures(FakeTaggerHost(), "blip", cs, existing="prepend")
    assert text(folder / "a.png") == "ohwx, a red square, nothing else, old tag, red_theme"
    assert text(folder / "b 图.png") == "ohwx, a green square, nothing else"
    caption_pictures(FakeTaggerHost(), "blip", cs, trigger_word="")  # "" asks for no trigger word
    assert text(folder / "a.png") == "a red square, nothing else"


def test_combine():
    assert combine(["a", "b"], ["B", "c"], "prepend") == ["a", "b", "c"]
    assert combine(["a", "b"], ["B", "c"], "append") == ["B", "c", "a"]
    assert combine(["a", "t"], ["c"], "ignore", trigger_word="t") == ["t", "a"]
