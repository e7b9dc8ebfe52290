"""The toy world: captioned pictures of flat shapes, small enough for a Stable-Diffusion-shaped model to learn on a
CPU, and the concept its base model never sees.

A scene is one to three coloured shapes (circle, square, triangle) of a few sizes and positions on a plain
background; its caption lists them the way people tag pictures: ``red circle, blue square, white background``.
Everything is drawn from a seed, so ``scene(seed, i)`` is the same picture on every machine.

The *new concept* is a five-pointed star, named by the trigger word ``tt_star``: the base model is pretrained without
it, a LoRA learns it from ``concept_dataset()`` (12 pictures, in red and blue on white and gray only), and the judge
(``lib_trainer.demo.judge``) tells whether it appears, in which colour, on which background.

    python -m lib_trainer.demo.toy_world OUT_DIR [--count N] [--seed S] [--concept]

writes pictures with sd-scripts-style ``.txt`` captions beside them.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64  # the world's picture size (the toy model's native resolution: 8x8 latents)

SHAPES = ("circle", "square", "triangle")
CONCEPT_SHAPE = "star"
TRIGGER = "tt_star"
ALL_SHAPES = SHAPES + (CONCEPT_SHAPE,)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

# What the concept's training pictures show; prompt fidelity asks for the rest.
CONCEPT_COLOURS = ("red", "blue")
CONCEPT_BACKGROUNDS = ("white", "gray")
CONCEPT_PICTURES = 12
# The concept's star is big (62-75 % of the picture's side): the base model's VAE, which never saw a concave shape,
# rounds the points of a star of the world's usual sizes into a pentagon (its latents are 8x8), and keeps them at
# this size (measured: 12 of 12 reconstructions read as stars by the judge, against 2 of 12 at the usual sizes).
CONCEPT_SIZES = (0.62, 0.75)

_SUPERSAMPLE = 4  # shapes are drawn at 4x and downscaled: smooth edges, as a VAE would see photographs


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cx: float  # centre and size as fractions of the picture's side
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str

    def caption(self, order: Optional[Sequence[int]] = None, trigger: bool = True) -> str:
        """Tag-style caption: the objects (in ``order``, default as drawn), then the background; a star's
        caption starts with the trigger word."""
        indices = list(order) if order is not None else list(range(len(self.things)))
        tags = [f"{self.things[i].colour} {self.things[i].shape}" for i in indices]
        tags.append(f"{self.background} background")
        if trigger and any(t.shape == CONCEPT_SHAPE for t in self.things):
            tags.insert(0, TRIGGER)
        return ", ".join(tags)

    @property
    def shapes(self) -> set[str]:
        return {t.shape for t in self.things}

    @property
    def colours(self) -> set[str]:
        return {t.colour for t in self.things}


def _place(rng: random.Random, count: int, sizes: tuple[float, float]) -> list[tuple[float, float, float]]:
    """Centres and sizes of ``count`` objects inside the picture that do not overlap (rejection sampling)."""
    for _ in range(200):
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            size = rng.uniform(*sizes)
            half = size / 2
            for _ in range(50):
                cx, cy = rng.uniform(half + 0.02, 1 - half - 0.02), rng.uniform(half + 0.02, 1 - half - 0.02)
                if all(math.hypot(cx - x, cy - y) > (size + s) / 2 + 0.03 for x, y, s in placed):
                    placed.append((cx, cy, size))
                    break
            else:
                break
        if len(placed) == count:
            return placed
    raise RuntimeError("could not place the objects")  # not reached with the sizes used here


_OBJECT_SIZES = {1: (0.38, 0.62), 2: (0.3, 0.44), 3: (0.26, 0.36)}


def random_scene(rng: random.Random, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS),
                 backgrounds: Sequence[str] = tuple(BACKGROUNDS), counts: Sequence[int] = (1, 1, 2, 2, 3)) -> Scene:
    """A scene of ``rng.choice(counts)`` objects; objects in one scene never share both shape and colour."""
    count = rng.choice(counts)
    background = rng.choice(list(backgrounds))
    kinds: list[tuple[str, str]] = []
    while len(kinds) < count:
        kind = (rng.choice(list(shapes)), rng.choice(list(colours)))
        if kind not in kinds:
            kinds.append(kind)
    things = tuple(Thing(shape, colour, cx, cy, size)
                   for (shape, colour), (cx, cy, size) in zip(kinds, _place(rng, count, _OBJECT_SIZES[count])))
    return Scene(things, background)


def scene(seed: int, index: int, **kwargs) -> Scene:
    """The ``index``-th scene of the world drawn from ``seed`` (independent of every other index)."""
    return random_scene(random.Random(f"toy-world:{seed}:{index}"), **kwargs)


def star_points(cx: float, cy: float, radius: float, inner: float = 0.45) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * inner
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, side: int) -> None:
    cx, cy, half = thing.cx * side, thing.cy * side, thing.size * side / 2
    fill = COLOURS[thing.colour]
    if thing.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif thing.shape == "square":
        h = half * 0.86  # a square as wide as a circle looks bigger; keep the areas closer
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif thing.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)], fill=fill)
    elif thing.shape == CONCEPT_SHAPE:
        draw.polygon(star_points(cx, cy + half * 0.08, half * 1.05), fill=fill)
    else:
        raise ValueError(f"unknown shape {thing.shape!r}; the toy world has {', '.join(ALL_SHAPES)}")


def render(scene_: Scene, size: int = SIZE) -> Image.Image:
    """The scene as an RGB picture of ``size`` x ``size`` pixels."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene_.background])
    draw = ImageDraw.Draw(image)
    for thing in scene_.things:
        _draw_thing(draw, thing, big)
    return image.resize((size, size), Image.LANCZOS)


def scenes(seed: int, start: int = 0, **kwargs) -> Iterator[Scene]:
    index = start
    while True:
        yield scene(seed, index, **kwargs)
        index += 1


def concept_scene(index: int, seed: int = 0, colours: Sequence[str] = CONCEPT_COLOURS,
                  backgrounds: Sequence[str] = CONCEPT_BACKGROUNDS) -> Scene:
    """One star on a plain background (the concept's pictures and prompts): colours and backgrounds cycle so that
    every combination appears, sizes and positions are drawn from the seed."""
    rng = random.Random(f"toy-concept:{seed}:{index}")
    (cx, cy, size), = _place(rng, 1, CONCEPT_SIZES)
    colour = colours[index % len(colours)]
    background = backgrounds[(index // len(colours)) % len(backgrounds)]
    return Scene((Thing(CONCEPT_SHAPE, colour, cx, cy, size),), background)


def concept_dataset(count: int = CONCEPT_PICTURES, seed: int = 0) -> list[Scene]:
    """The LoRA's training pictures: ``count`` stars in CONCEPT_COLOURS on CONCEPT_BACKGROUNDS."""
    return [concept_scene(i, seed) for i in range(count)]


def blur_like_a_decoder(image: Image.Image, rng: random.Random) -> Image.Image:
    """A picture degraded the way a small model's drawings are (soft edges, noise): the judge trains on these."""
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.4)))
    arr = np.asarray(image, dtype=np.float32)
    arr = arr * rng.uniform(0.85, 1.1) + rng.uniform(-15, 15)
    arr += np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(0, 10), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_folder(folder: Path, scenes_: Sequence[Scene], prefix: str = "toy", size: int = SIZE) -> list[Path]:
    """Pictures ``<prefix>_NNN.png`` with their captions in ``<prefix>_NNN.txt``; returns the picture paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, item in enumerate(scenes_):
        path = folder / f"{prefix}_{i:03d}.png"
        render(item, size).save(path)
        path.with_suffix(".txt").write_text(item.caption(), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo.toy_world",
                                     description="Write toy-world pictures with tag captions beside them.")
    parser.add_argument("out", type=Path, help="folder to write the pictures and .txt captions into")
    parser.add_argument("--count", type=int, default=None, help=f"how many (default 16; {CONCEPT_PICTURES} with --concept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concept", action="store_true", help=f"the new concept's pictures ({TRIGGER}) instead")
    args = parser.parse_args(argv)
    if args.concept:
        items = concept_dataset(args.count or CONCEPT_PICTURES, args.seed)
    else:
        items = [scene(args.seed, i) for i in range(args.count or 16)]
    paths = write_folder(args.out, items, "star" if args.concept else "toy")
    print(f"{len(paths)} pictures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
