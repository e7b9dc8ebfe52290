"""Preview grids (lib_trainer/preview/): grid assembly on synthetic cells, and real runs through the standalone
host on a LoRA trained by the real trainer (tiny SD1, 64 px)."""
from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from PIL import Image

from lib_trainer.checkpoints.recommend import recommend, TIE_TOLERANCE
from lib_trainer.preview.cells import is_running, load_manifest, PreviewBusy
from lib_trainer.preview.config import (apply_trigger, config_path, load_config, save_config,
                                        should_run_after_training, version_arch)
from lib_trainer.preview.gallery import cell_image, checkpoint_galleries
from lib_trainer.preview.grid import build_grids, FAILED, grid_files, GridLayout, PLACEHOLDER, read_grid_info
from lib_trainer.preview.text import TextRenderer
from lib_trainer.ui import charts
from lib_trainer.hosts.base import Txt2ImgRequest, Txt2ImgResult
from lib_trainer.hosts.standalone import StandaloneHost
from lib_trainer.checkpoints.promote import copy_with_metadata
from lib_trainer.preview.cells import PreviewError
from lib_trainer.preview.config import PreviewConfig
from lib_trainer.preview.grid import GridCell, GridSpec, render_grid
from lib_trainer.preview.run import run_preview
from tests.preview_fixtures import TRIGGER, copy_workspace, make_host, make_trained

SAFE_FILE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained(tmp_path_factory.mktemp("preview_trained"))


@pytest.fixture(scope="module")
def host(trained, tmp_path_factory):
    return make_host(trained, tmp_path_factory.mktemp("preview_lora"))


@pytest.fixture
def work(trained, tmp_path):
    """A test's own copy of the trained version."""
    return copy_workspace(trained, tmp_path)


def small(**changes) -> PreviewConfig:
    values = dict(prompts=["a dog"], weights=[0.5, 1.0], width=64, height=64, steps=2, seed=77)
    values.update(changes)
    return PreviewConfig(**values)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


# ---- grid assembly (synthetic cells) ------------------------------------------------------------------------------

def colour(r: int, c: int) -> tuple:
    return (40 + 8 * r, 30 + 35 * c, 200 - 6 * r)


@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (10, 5), (25, 6)])
def test_grid_geometry_and_labels(rows, cols):
    cells = [[GridCell(image=Image.new("RGB", (64, 48), colour(r, c))) for c in range(cols)] for r in range(rows)]
    labels = [[f"epoch {r + 1} · step {5 * (r + 1)}"] + (["final"] if r == rows - 1 else []) for r in range(rows)]
    spec = GridSpec(header=["Prompt 1: tt_dog, a dog", "seed 7"], columns=[f"weight {c}" for c in range(cols)],
                    rows=labels, cells=cells, cell_size=(64, 48), final_rows={rows - 1})
    image, layout = render_grid(spec)
    assert image.size == (layout.width, layout.height)
    assert (layout.rows, layout.columns) == (rows, cols)
    assert layout.width >= layout.label_width + cols * 64 + (cols - 1) * layout.gap
    assert layout.height >= layout.header_height + layout.column_header_height + rows * 48
    arr = np.asarray(image)
    boxes = [layout.cell_box(r, c) for r in range(rows) for c in range(cols)]
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = layout.cell_box(r, c)
            assert (x1 - x0, y1 - y0) == (64, 48)
            assert (arr[y0:y1, x0:x1] == colour(r, c)).all(), (r, c)
            assert layout.cell_at((x0 + x1) // 2, (y0 + y1) // 2) == (r, c)
            # the row label is drawn left of the cells, on the row's height
            label = arr[y0:y1, 0:layout.label_width]
            assert (label.min(axis=2) < 128).any(), f"no label text in row {r}"
    # cells never overlap and stay inside the picture
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= layout.width and a[3] <= layout.height
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # the column labels and the header are drawn above the first row
    header = arr[: layout.header_height]
    assert (header.min(axis=2) < 128).any()
    col_band = arr[layout.header_height: layout.header_height + layout.column_header_height, layout.label_width:]
    assert (col_band.min(axis=2) < 128).any()
    assert layout.cell_at(1, 1) is None


def test_placeholders_and_unicode_never_crash():
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    cells = [[GridCell(image=red), GridCell(status="missing", message="not drawn yet"),
              GridCell(status="failed", message="failed: Lora not found: tt-0123456789abcdef " * 4)]]
    header = ["Prompt 1: 可爱的狗 🐕 a/b:c\\d " + "x" * 300, "Negative prompt: ß ñ ع ह \u200b \x00 \U0010fffd"]
    image, layout = render_grid(GridSpec(header=header, columns=["weight 0.4", "无 LoRA", "no LoRA"],
                                         rows=[["第 1 轮 · step 5", "final"]], cells=cells, cell_size=(64, 64)))
    arr = np.asarray(image)
    x0, y0, x1, y1 = layout.cell_box(0, 0)
    assert (arr[y0:y1, x0:x1] == (255, 0, 0)).all()
    for col in (1, 2):  # placeholders: filled, with text, not the red image
        x0, y0, x1, y1 = layout.cell_box(0, col)
        block = arr[y0:y1, x0:x1]
        assert not (block == (255, 0, 0)).all(axis=2).any()
        assert len(np.unique(block.reshape(-1, 3), axis=0)) > 2
    # a 300-character prompt wraps into several header lines inside the picture's width
    assert layout.header_height > 5 * TextRenderer(layout.font_size).line_height


def test_text_renderer_wraps_cjk_and_long_words():
    text = TextRenderer(14)
    lines = text.wrap("可爱的狗" * 30 + " " + "a" * 200 + " short words here", 200)
    assert len(lines) > 3
    assert all(text.width(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "") == ("可爱的狗" * 30 + "a" * 200 + "shortwordshere")
    fallback = TextRenderer(14, font_path="/nonexistent/font.ttf")
    assert fallback.width("é 狗") > 0


# ---- config, trigger, arch ---------------------------------------------------------------------------------------

def test_trigger_is_inserted_once():
    assert apply_trigger("a dog", "tt_dog") == "tt_dog, a dog"
    assert apply_trigger("a TT_DOG on grass", "tt_dog") == "a TT_DOG on grass"
    assert apply_trigger("tt_dogs running", "tt_dog") == "tt_dog, tt_dogs running"
    assert apply_trigger("", "tt_dog") == "tt_dog"
    assert apply_trigger(" a dog ", "") == "a dog"


def test_config_defaults_roundtrip_and_validation(work, host):
    version = work.version
    assert version_arch(version) == "sd1"
    config = load_config(version, host)  # nothing stored: the defaults
    assert (config.width, config.height) == (64, 64)  # the size it was trained at, not SD1's usual 512
    untrained = work.workspace.create_project("cat", first_version="v1").version("v1")
    assert (load_config(untrained, host).width, load_config(untrained, host).height) == (512, 512)
    assert config.weights == [0.4, 0.6, 0.8, 1.0] and config.reference and config.auto_after_training
    assert config.prompts and all(p.startswith(TRIGGER) for p in config.prompts)  # training captions
    changed = small(seed=-1, negative_prompt="blurry", auto_after_training=False)
    save_config(version, changed)
    assert json.loads(config_path(version).read_text(encoding="utf-8"))["seed"] == -1
    assert load_config(version) == changed
    assert should_run_after_training(version) is False
    with pytest.raises(PreviewError, match="multiple of 8"):
        PreviewConfig.from_dict({"width": 65})
    with pytest.raises(PreviewError, match="at least one prompt"):
        PreviewConfig.from_dict({"prompts": []})
    assert PreviewConfig.from_dict({"weights": "0.5, 1", "unknown": 1}).weights == [0.5, 1.0]


# ---- runs through the standalone host ----------------------------------------------------------------------------

def test_full_run_same_seed_reference_without_lora(work, host):
    version = work.version
    result = run_preview(version, host, small(), font_path=None)
    assert result.complete and result.total == 1 + 3 * 2 and result.drawn == 7 and result.reused == 0
    manifest = load_manifest(version)
    assert manifest["seed"] == 77 and manifest["prompts"] == [f"{TRIGGER}, a dog"]
    cells = manifest["cells"]
    assert len(cells) == 7
    for record in cells.values():  # the same seed in every cell, so only the LoRA differs
        assert record["status"] == "ok" and record["seed"] == 77 and "Seed: 77" in record["infotext"]
        assert (version.previews_dir / record["file"]).is_file()
    ref = cells["reference/p01"]
    assert ref["loras_applied"] == [] and "Lora hashes" not in ref["infotext"]
    for name in ("dog_v1-000001", "dog_v1-000002", "dog_v1"):
        assert cells[f"{name}/p01/w1"]["loras_applied"] == [str(version.checkpoints_dir / f"{name}.safetensors")]
    # the reference is the base model's own image, and a LoRA at weight 1 changes it
    bare = host.txt2img(Txt2ImgRequest(prompt=f"{TRIGGER}, a dog", seed=77, steps=2, width=64, height=64))
    ref_pixels = pixels(version.previews_dir / ref["file"])
    assert (ref_pixels == np.asarray(bare.image.convert("RGB"), dtype=np.int16)).all()
    lora_pixels = pixels(version.previews_dir / cells["dog_v1/p01/w1"]["file"])
    assert np.abs(lora_pixels - ref_pixels).max() > 0

    grid = result.grids[0]
    assert grid.path.name == "grid-01.png" and grid.pages == []
    info = read_grid_info(grid.path)
    assert info["seed"] == 77 and info["rows"] == ["dog_v1-000001", "dog_v1-000002", "dog_v1"]
    layout = GridLayout.from_dict(info["layout"])
    assert (layout.rows, layout.columns) == (3, 3)
    with Image.open(grid.path) as im:
        assert "Seed: 77" in im.text["parameters"] and f"{TRIGGER}, a dog" in im.text["parameters"]
        arr = np.asarray(im.convert("RGB"), dtype=np.int16)
    # the reference column shows the same picture in every row; the LoRA columns are those cells' pictures
    crops = [arr[y0:y1, x0:x1] for (x0, y0, x1, y1) in (layout.cell_box(r, 2) for r in range(3))]
    assert all((c == crops[0]).all() for c in crops) and (crops[0] == ref_pixels).all()
    x0, y0, x1, y1 = layout.cell_box(2, 1)
    assert (arr[y0:y1, x0:x1] == lora_pixels).all()

    galleries = checkpoint_galleries(version)
    assert [g.name for g in galleries] == [None, "dog_v1-000001", "dog_v1-000002", "dog_v1"]
    assert [len(g.items) for g in galleries] == [1, 2, 2, 2]
    assert "final" in galleries[-1].label
    assert cell_image(version, "dog_v1", 0.8) in {i.path for i in galleries[-1].items}


def test_resume_after_interruption_draws_only_the_rest(work, host):
    version = work.version
    stop = threading.Event()
    seen = []

    def stop_after_three(done, total, cell):
        seen.append(cell.key)
        if done == 3:
            stop.set()

    first = run_preview(version, host, small(seed=-1), stop=stop, progress=stop_after_three)
    assert first.interrupted and first.drawn == 3 and len(seen) == 3
    drawn = {k: r for k, r in load_manifest(version)["cells"].items()}
    assert list(drawn) == seen and all(r["seed"] == first.seed for r in drawn.values())
    # a grid of the part drawn so far, with placeholders for the rest
    assert first.grids and first.grids[0].path.is_file()
    mtimes = {k: (version.previews_dir / r["file"]).stat().st_mtime_ns for k, r in drawn.items()}

    rest = []
    second = run_preview(version, host, small(seed=-1), progress=lambda d, t, c: rest.append((d, t, c.key)))
    assert second.complete and second.seed == first.seed  # seed -1 is drawn once per manifest, then kept
    assert second.reused == 3 and second.drawn == 4
    assert [d for d, _, _ in rest] == [4, 5, 6, 7] and not set(k for _, _, k in rest) & set(seen)
    manifest = load_manifest(version)
    assert len(manifest["cells"]) == 7 and {r["seed"] for r in manifest["cells"].values()} == {first.seed}
    for key, mtime in mtimes.items():
        assert (version.previews_dir / manifest["cells"][key]["file"]).stat().st_mtime_ns == mtime

    again = run_preview(version, host, small(seed=-1))  # nothing left to draw
    assert again.drawn == 0 and again.reused == 7


def test_changed_checkpoint_or_settings_are_redrawn(work, host):
    version = work.version
    run_preview(version, host, small(weights=[1.0]))
    # a new weight only draws the new column
    more = run_preview(version, host, small(weights=[1.0, 0.5]))
    assert (more.drawn, more.reused) == (3, 4)
    # a checkpoint file that changed (retrained, replaced) is drawn again, the others are kept
    path = version.checkpoints_dir / "dog_v1-000002.safetensors"
    copy_with_metadata(path, path, {"ss_training_comment": "replaced"})
    changed = run_preview(version, host, small(weights=[1.0, 0.5]))
    assert (changed.drawn, changed.reused) == (2, 5)
    old_key = load_manifest(version)["settings_key"]
    # a setting that changes every image starts a new manifest
    other = run_preview(version, host, small(weights=[1.0, 0.5], steps=3))
    assert (other.drawn, other.reused) == (7, 0)
    manifest = load_manifest(version)
    assert manifest["settings_key"] != old_key and manifest["settings"]["steps"] == 3


def test_preview_this_checkpoint_and_placeholders(work, host):
    version = work.version
    result = run_preview(version, host, small(), checkpoints=["dog_v1-000002"])
    assert result.total == 1 + 2 and result.complete
    assert {r["checkpoint"] for r in load_manifest(version)["cells"].values()} == {None, "dog_v1-000002"}
    info = read_grid_info(result.grids[0].path)
    layout = GridLayout.from_dict(info["layout"])
    assert layout.rows == 3  # every checkpoint has its row; the others show "not drawn yet"
    with Image.open(result.grids[0].path) as im:
        arr = np.asarray(im.convert("RGB"))
    x0, y0, x1, y1 = layout.cell_box(0, 0)
    placeholder = arr[y0:y1, x0:x1]
    assert (placeholder == PLACEHOLDER).all(axis=2).mean() > 0.5
    with pytest.raises(PreviewError, match="no checkpoint"):
        run_preview(version, host, small(), checkpoints=["nope"])


@pytest.mark.parametrize("prompts", [
    ["可爱的狗 在草地上 🐕", "chien à l'école, ßüñ"],
    ["a/b/../c: d\\e*f?g\"h<i>j|k", "x" * 300],
])
def test_awkward_prompts_give_short_safe_file_names(work, host, prompts):
    version = work.version
    result = run_preview(version, host, small(prompts=prompts, weights=[1.0]))
    assert result.complete and len(result.grids) == 2
    previews = version.previews_dir
    files = [p for p in previews.rglob("*") if p.is_file()]
    assert files
    for path in files:
        rel = path.relative_to(previews)
        assert len(rel.parts) <= 2 and len(path.name) <= 40, rel
        assert SAFE_FILE.match(path.name) and all(SAFE_FILE.match(part) for part in rel.parts), rel
        assert path.resolve().parent in (previews.resolve(), *(d.resolve() for d in previews.iterdir() if d.is_dir()))
    manifest = load_manifest(version)
    assert manifest["prompts"] == [f"{TRIGGER}, {p}" for p in prompts]
    for grid, prompt in zip(result.grids, prompts):
        with Image.open(grid.path) as im:
            assert prompt in im.text["parameters"]
        assert read_grid_info(grid.path)["prompt"] == f"{TRIGGER}, {prompt}"


class NoLoraHost(StandaloneHost):
    """A host that silently drops LoRAs (as a WebUI does when it cannot find one) and says so in the infotext."""

    def txt2img(self, request, *, interrupt=None):
        asked = bool(request.loras)
        request.loras = []
        result = super().txt2img(request, interrupt=interrupt)
        if asked:
            return Txt2ImgResult(result.image, result.infotext + "\nLora not found: tt-0123", result.seed, [])
        return result


def test_lora_that_did_not_apply_marks_the_cell_failed(work, host):
    version = work.version
    broken = NoLoraHost(work.root, checkpoint_dirs=[work.model.parent], lora_dir=host.lora_dir(), device="cpu")
    result = run_preview(version, broken, small(weights=[1.0]))
    assert not result.interrupted and result.drawn == 4 and len(result.failed) == 3
    assert all("Lora not found" in f.message for f in result.failed)
    manifest = load_manifest(version)
    assert manifest["cells"]["reference/p01"]["status"] == "ok"
    failed = [r for r in manifest["cells"].values() if r["checkpoint"]]
    assert all(r["status"] == "failed" and not (version.previews_dir / r["file"]).exists() for r in failed)
    with Image.open(result.grids[0].path) as im:
        arr = np.asarray(im.convert("RGB"))
    layout = GridLayout.from_dict(read_grid_info(result.grids[0].path)["layout"])
    x0, y0, x1, y1 = layout.cell_box(1, 0)
    assert (arr[y0:y1, x0:x1] == FAILED).all(axis=2).mean() > 0.5
    # the real host then draws exactly the failed cells
    fixed = run_preview(version, host, small(weights=[1.0]))
    assert fixed.complete and (fixed.drawn, fixed.reused) == (3, 1)


def test_many_checkpoints_page_the_grid(work, host):
    version = work.version
    source = version.checkpoints_dir / "dog_v1-000001.safetensors"
    for epoch in range(4, 13):  # 12 checkpoints: more than one page of PAGE_ROWS rows
        copy_with_metadata(source, version.checkpoints_dir / f"dog_v1-{epoch:06d}.safetensors",
                           {"ss_epoch": str(epoch), "ss_steps": str(epoch * 2)})
    assert len(version.checkpoints()) == 12
    result = run_preview(version, host, small(weights=[1.0], steps=1))
    assert result.complete and result.total == 13
    grid = result.grids[0]
    assert [p.name for p in grid.pages] == ["grid-01-page1.png", "grid-01-page2.png"]
    whole = read_grid_info(grid.path)
    assert len(whole["rows"]) == 12 and whole["layout"]["rows"] == 12
    pages = [read_grid_info(p) for p in grid.pages]
    assert [len(p["rows"]) for p in pages] == [10, 2] and [p["page"] for p in pages] == [1, 2]
    assert pages[0]["rows"] + pages[1]["rows"] == whole["rows"]
    assert grid_files(version)[0].pages == grid.pages
    # fewer checkpoints later: the stale second page goes away
    for epoch in range(4, 13):
        (version.checkpoints_dir / f"dog_v1-{epoch:06d}.safetensors").unlink()
    assert build_grids(version)[0].pages == []
    assert not list(version.previews_dir.glob("grid-01-page*.png"))


def test_a_second_run_of_the_same_version_is_refused(work, host):
    version = work.version
    entered, release = threading.Event(), threading.Event()

    def hold(done, total, cell):
        entered.set()
        release.wait(60)

    worker = threading.Thread(target=run_preview, args=(version, host, small(weights=[1.0])),
                              kwargs={"progress": hold})
    worker.start()
    try:
        assert entered.wait(60)
        assert is_running(version)
        with pytest.raises(PreviewBusy):
            run_preview(version, host, small(weights=[1.0]))
        with pytest.raises(PreviewBusy):
            build_grids(version)
    finally:
        release.set()
        worker.join(120)
    assert not is_running(version)


# ---- recommendation ----------------------------------------------------------------------------------------------

def write_scores(version, scores):
    """checkpoint events with the given (name, epoch, step, eval_loss, eval_set), as the trainer writes them."""
    lines = [json.dumps({"event": "start", "total_steps": 9})]
    for name, epoch, step, loss, eval_set in scores:
        event = {"event": "checkpoint", "epoch": epoch, "step": step, "eval_loss": loss,
                 "path": str(version.checkpoints_dir / f"{name}.safetensors")}
        if eval_set:
            event["eval_set"] = eval_set
        lines.append(json.dumps(event))
    lines.insert(1, "garbage line from a library")
    version.events_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_recommendation_from_the_trainers_events(work):
    version = work.version
    rec = recommend(version)
    names = [c.name for c in version.checkpoints()]
    assert [s.name for s in rec.scores] == names
    assert all(s.eval_set == "train_subset" and s.eval_loss > 0 for s in rec.scores)
    lowest = min(s.eval_loss for s in rec.scores)
    close = [s.name for s in rec.scores if s.eval_loss <= lowest * (1 + TIE_TOLERANCE)]
    assert rec.best == close[0] and rec.best_score.name == rec.best
    assert "hint, not a verdict" in rec.note


def test_recommendation_lowest_earlier_on_ties_held_out_first(work):
    version = work.version
    write_scores(version, [("dog_v1-000001", 1, 2, 0.30, "held_out"), ("dog_v1-000002", 2, 4, 0.20, "held_out"),
                           ("dog_v1", 3, 6, 0.25, "held_out")])
    rec = recommend(version)
    assert rec.best == "dog_v1-000002" and rec.eval_set == "held_out"
    assert rec.scores[1] == ("dog_v1-000002", 2, 4, 0.20, "held_out")
    assert "held out" in rec.note and "hint, not a verdict" in rec.note
    assert "The lowest is" not in rec.note  # it is the lowest
    # within the tolerance the earlier checkpoint wins
    write_scores(version, [("dog_v1-000001", 1, 2, 0.2010, "held_out"), ("dog_v1-000002", 2, 4, 0.2000, "held_out"),
                           ("dog_v1", 3, 6, 0.2005, "held_out")])
    tie = recommend(version)
    assert tie.best == "dog_v1-000001"
    # the note says the rule, and which one scored lowest when that is another
    assert "earliest checkpoint" in tie.note and "within 1 % of the lowest" in tie.note
    assert "The lowest is dog_v1-000002 (epoch 2): 0.2000 against 0.2010" in tie.note
    write_scores(version, [("dog_v1-000001", 1, 2, 0.2, "held_out"), ("dog_v1-000002", 2, 4, 0.2, "held_out")])
    assert recommend(version).best == "dog_v1-000001"
    # held-out scores are compared among themselves; old events without eval_set count as training pictures
    write_scores(version, [("dog_v1-000001", 1, 2, 0.1, None), ("dog_v1-000002", 2, 4, 0.3, "held_out"),
                           ("dog_v1", 3, 6, 0.2, "held_out")])
    rec = recommend(version)
    assert rec.best == "dog_v1" and rec.scores[0].eval_set == "train_subset"
    # a checkpoint deleted since is left out
    (version.checkpoints_dir / "dog_v1.safetensors").unlink()
    assert recommend(version).best == "dog_v1-000002"
    chart = charts.score_chart(version, size=(400, 200))
    assert chart.size == (400, 200) and len(np.unique(np.asarray(chart).reshape(-1, 3), axis=0)) > 3
    version.events_path.unlink()
    empty = recommend(version)
    assert empty.best is None and empty.scores == [] and empty.note
    assert charts.score_chart(version).size == (640, 260)
