"""The toy world's generator (deterministic, captions in tag style, pixels where the scene says) and the judge that
reads its pictures (loads from the committed weights, and is as accurate on held-out pictures as its notes say)."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from lib_trainer.demo import toy_world as world


def picture_digest(scene: world.Scene) -> str:
    return hashlib.sha256(world.render(scene).tobytes()).hexdigest()


def test_a_scene_depends_only_on_seed_and_index():
    assert world.scene(3, 17) == world.scene(3, 17)
    assert picture_digest(world.scene(3, 17)) == picture_digest(world.scene(3, 17))
    drawn = {world.scene(3, i) for i in range(40)}
    assert len(drawn) == 40  # every index its own scene
    assert world.scene(4, 17) != world.scene(3, 17)


def test_scenes_cover_the_world_and_never_the_concept():
    scenes = [world.scene(0, i) for i in range(600)]
    assert {t.shape for s in scenes for t in s.things} == set(world.SHAPES)
    assert {t.colour for s in scenes for t in s.things} == set(world.COLOURS)
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)
    assert {len(s.things) for s in scenes} == {1, 2, 3}
    assert all(world.CONCEPT_SHAPE not in s.shapes and world.TRIGGER not in s.caption() for s in scenes)
    for s in scenes:  # objects keep apart and stay inside the picture
        kinds = [(t.shape, t.colour) for t in s.things]
        assert len(set(kinds)) == len(kinds)
        for t in s.things:
            assert t.size / 2 <= t.cx <= 1 - t.size / 2 and t.size / 2 <= t.cy <= 1 - t.size / 2


def test_captions_are_tags_in_drawing_order_then_the_background():
    s = world.Scene((world.Thing("circle", "red", 0.3, 0.3, 0.3), world.Thing("square", "blue", 0.7, 0.7, 0.3)),
                    "white")
    assert s.caption() == "red circle, blue square, white background"
    assert s.caption(order=[1, 0]) == "blue square, red circle, white background"
    star = world.Scene((world.Thing("star", "green", 0.5, 0.5, 0.5),), "black")
    assert star.caption() == "tt_star, green star, black background"
    assert star.caption(trigger=False) == "green star, black background"


def test_pixels_are_where_the_scene_puts_them():
    s = world.Scene((world.Thing("circle", "red", 0.3, 0.3, 0.3), world.Thing("triangle", "yellow", 0.7, 0.7, 0.4)),
                    "gray")
    pixels = np.asarray(world.render(s)).astype(int)
    assert pixels.shape == (world.SIZE, world.SIZE, 3)
    side = world.SIZE

    def at(fx: float, fy: float) -> np.ndarray:
        return pixels[int(fy * side), int(fx * side)]

    assert np.abs(at(0.3, 0.3) - world.COLOURS["red"]).max() <= 2
    assert np.abs(at(0.7, 0.75) - world.COLOURS["yellow"]).max() <= 2
    assert np.abs(at(0.03, 0.97) - world.BACKGROUNDS["gray"]).max() <= 2
    assert np.abs(at(0.97, 0.03) - world.BACKGROUNDS["gray"]).max() <= 2


def test_the_concept_pictures_are_stars_in_their_own_colours_only():
    data = world.concept_dataset()
    assert len(data) == world.CONCEPT_PICTURES == 12
    assert all(s.shapes == {world.CONCEPT_SHAPE} and len(s.things) == 1 for s in data)
    assert {(s.things[0].colour, s.background) for s in data} == {
        (c, b) for c in world.CONCEPT_COLOURS for b in world.CONCEPT_BACKGROUNDS}
    assert all(s.caption().startswith(world.TRIGGER + ", ") for s in data)
    assert all(world.CONCEPT_SIZES[0] <= s.things[0].size <= world.CONCEPT_SIZES[1] for s in data)
    assert data == world.concept_dataset()


def test_write_folder_puts_a_caption_beside_each_picture(tmp_path):
    from PIL import Image

    paths = world.write_folder(tmp_path / "10_tt_star", world.concept_dataset(3), prefix="star")
    assert [p.name for p in paths] == ["star_000.png", "star_001.png", "star_002.png"]
    for path, s in zip(paths, world.concept_dataset(3)):
        assert Image.open(path).size == (world.SIZE, world.SIZE)
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == s.caption()


def test_the_command_line_writes_the_pictures(tmp_path, capsys):
    assert world.main([str(tmp_path / "out"), "--count", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "toy_000.png", "toy_000.txt", "toy_001.png", "toy_001.txt", "toy_002.png", "toy_002.txt"]
    assert (tmp_path / "out" / "toy_001.txt").read_text(encoding="utf-8") == world.scene(0, 1).caption()


@pytest.fixture(scope="module")
def judge():
    from lib_trainer.demo.judge import Judge

    return Judge.load()


def test_the_judge_reads_held_out_pictures_as_its_notes_say(judge):
    """200 pictures the judge never trained on (half of them degraded as a small model draws): its per-picture
    accuracy, stated in judge.json from 1000 such pictures, holds within sampling error."""
    from lib_trainer.demo import judge as judge_mod

    notes = json.loads(judge_mod.JUDGE_FILE.with_suffix(".json").read_text(encoding="utf-8"))
    stated = notes["held_out_accuracy"]["degraded"]
    scenes = [judge_mod.judge_scene(judge_mod.HELD_OUT_SEED, 5000 + i) for i in range(200)]
    images = []
    for i, s in enumerate(scenes):
        image = world.render(s)
        images.append(world.blur_like_a_decoder(image, random.Random(i)) if i % 2 else image)
    verdicts = judge(images)
    star = sum(v.has_concept == (world.CONCEPT_SHAPE in s.shapes) for v, s in zip(verdicts, scenes)) / 200
    background = sum(v.background == s.background for v, s in zip(verdicts, scenes)) / 200
    whole = sum(v.matches(s) for v, s in zip(verdicts, scenes)) / 200
    assert stated["star_present"] >= 0.99 and star >= 0.97
    assert stated["background"] >= 0.99 and background >= 0.97
    assert stated["whole_scene"] >= 0.95 and whole >= 0.93
