"""The judge: a small CNN that reads a toy-world picture's attributes. A test instrument, kept apart from the trainer.

It tells, for a 64 px picture, which shapes (the world's three and the new concept, the star) and colours appear,
which colour each shape has (shape-colour pairs), the background, and how many objects there are. It is trained on
the generator's ground truth, half of it degraded the way a small model draws (soft edges, noise, tint), and its
accuracy on held-out generator pictures is written beside its weights:

    python -m lib_trainer.demo.judge --train [--steps N] [--seed S]     # writes models/judge.safetensors + .json
    python -m lib_trainer.demo.judge PICTURE.png ...                     # what it sees

Needs only torch, numpy and Pillow.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lib_trainer.demo import toy_world as world

JUDGE_FILE = Path(__file__).with_name("models") / "judge.safetensors"
SHAPES = world.ALL_SHAPES
COLOURS = tuple(world.COLOURS)
BACKGROUNDS = tuple(world.BACKGROUNDS)
PAIRS = tuple((colour, shape) for shape in SHAPES for colour in COLOURS)
MAX_OBJECTS = 3
HELD_OUT_SEED = 7919  # the judge's held-out pictures; training uses --seed


class JudgeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(2)]
        previous = 32
        for width in (48, 96, 128):
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)  # 64 px -> 4x4
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(previous * 16, 256), nn.ReLU(inplace=True))
        self.shapes = nn.Linear(256, len(SHAPES))
        self.colours = nn.Linear(256, len(COLOURS))
        self.pairs = nn.Linear(256, len(PAIRS))
        self.background = nn.Linear(256, len(BACKGROUNDS))
        self.count = nn.Linear(256, MAX_OBJECTS + 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hidden(self.features(x))
        return {"shapes": self.shapes(h), "colours": self.colours(h), "pairs": self.pairs(h),
                "background": self.background(h), "count": self.count(h)}


@dataclass(frozen=True)
class Verdict:
    shapes: frozenset[str]
    colours: frozenset[str]
    pairs: frozenset[tuple[str, str]]  # (colour, shape)
    background: str
    count: int
    star_probability: float

    @property
    def has_concept(self) -> bool:
        return world.CONCEPT_SHAPE in self.shapes

    def shows(self, colour: str, shape: str) -> bool:
        return (colour, shape) in self.pairs

    def matches(self, scene: world.Scene) -> bool:
        """Every object of ``scene`` in its colour, nothing else, on its background."""
        wanted = {(t.colour, t.shape) for t in scene.things}
        return self.pairs == wanted and self.background == scene.background


def to_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize((world.SIZE, world.SIZE), Image.BILINEAR)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def targets(scenes: Sequence[world.Scene]) -> dict[str, torch.Tensor]:
    shapes = torch.zeros(len(scenes), len(SHAPES))
    colours = torch.zeros(len(scenes), len(COLOURS))
    pairs = torch.zeros(len(scenes), len(PAIRS))
    for i, s in enumerate(scenes):
        for t in s.things:
            shapes[i, SHAPES.index(t.shape)] = 1
            colours[i, COLOURS.index(t.colour)] = 1
            pairs[i, PAIRS.index((t.colour, t.shape))] = 1
    return {"shapes": shapes, "colours": colours, "pairs": pairs,
            "background": torch.tensor([BACKGROUNDS.index(s.background) for s in scenes]),
            "count": torch.tensor([len(s.things) for s in scenes])}


def judge_scene(seed: int, index: int) -> world.Scene:
    """What the judge learns from: every shape including the star, none to three objects."""
    rng = random.Random(f"toy-judge:{seed}:{index}")
    if rng.random() < 0.06:
        return world.Scene((), rng.choice(BACKGROUNDS))
    return world.random_scene(rng, shapes=SHAPES)


def pictures(seed: int, start: int, count: int, degrade: Optional[bool]) -> tuple[torch.Tensor, list[world.Scene]]:
    """``degrade`` None: half of them degraded (chosen by the seed)."""
    scenes = [judge_scene(seed, start + i) for i in range(count)]
    images = []
    for i, s in enumerate(scenes):
        image = world.render(s)
        rng = random.Random(f"toy-judge-aug:{seed}:{start + i}")
        if degrade or (degrade is None and rng.random() < 0.5):
            image = world.blur_like_a_decoder(image, rng)
        images.append(image)
    return to_batch(images), scenes


def loss_of(out: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(out["shapes"], want["shapes"])
            + F.binary_cross_entropy_with_logits(out["colours"], want["colours"])
            + F.binary_cross_entropy_with_logits(out["pairs"], want["pairs"]) * 2
            + F.cross_entropy(out["background"], want["background"])
            + F.cross_entropy(out["count"], want["count"]))


def verdicts(out: dict[str, torch.Tensor]) -> list[Verdict]:
    shapes, colours, pairs = (torch.sigmoid(out[k]) for k in ("shapes", "colours", "pairs"))
    background, count = out["background"].argmax(1), out["count"].argmax(1)
    star = SHAPES.index(world.CONCEPT_SHAPE)
    return [Verdict(
        shapes=frozenset(s for j, s in enumerate(SHAPES) if shapes[i, j] > 0.5),
        colours=frozenset(c for j, c in enumerate(COLOURS) if colours[i, j] > 0.5),
        pairs=frozenset(p for j, p in enumerate(PAIRS) if pairs[i, j] > 0.5),
        background=BACKGROUNDS[int(background[i])], count=int(count[i]), star_probability=float(shapes[i, star]),
    ) for i in range(len(background))]


class Judge:
    def __init__(self, net: JudgeNet) -> None:
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path = JUDGE_FILE) -> "Judge":
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: train the judge with python -m lib_trainer.demo.judge --train")
        net = JudgeNet()
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
        return cls(net)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[Verdict]:
        found: list[Verdict] = []
        for i in range(0, len(images), 128):
            found += verdicts(self.net(to_batch(images[i:i + 128])))
        return found


@torch.no_grad()
def accuracy(net: JudgeNet, degrade: bool, count: int = 1000) -> dict[str, float]:
    """Per-picture exact accuracy of each attribute on held-out generator pictures."""
    net.eval()
    x, scenes = pictures(HELD_OUT_SEED, 0, count, degrade)
    found: list[Verdict] = []
    for i in range(0, count, 200):
        found += verdicts(net(x[i:i + 200]))
    n = float(count)
    star = world.CONCEPT_SHAPE
    return {
        "shapes": sum(v.shapes == frozenset(s.shapes) for v, s in zip(found, scenes)) / n,
        "colours": sum(v.colours == frozenset(s.colours) for v, s in zip(found, scenes)) / n,
        "pairs": sum(v.pairs == frozenset((t.colour, t.shape) for t in s.things) for v, s in zip(found, scenes)) / n,
        "background": sum(v.background == s.background for v, s in zip(found, scenes)) / n,
        "count": sum(v.count == len(s.things) for v, s in zip(found, scenes)) / n,
        "star_present": sum(v.has_concept == (star in s.shapes) for v, s in zip(found, scenes)) / n,
        "whole_scene": sum(v.matches(s) for v, s in zip(found, scenes)) / n,
    }


def train(steps: int, seed: int, batch: int = 64, log_every: int = 100) -> tuple[JudgeNet, dict]:
    torch.manual_seed(seed)
    net = JudgeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    running = []
    for step in range(steps):
        net.train()
        x, scenes = pictures(seed, step * batch, batch, None)
        if random.Random(f"flip:{seed}:{step}").random() < 0.5:
            x = x.flip(3)  # attributes do not depend on left and right
        loss = loss_of(net(x), targets(scenes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"judge step {step + 1}/{steps}  loss {np.mean(running):.4f}  "
                  f"{(step + 1) / (time.perf_counter() - started):.2f} it/s", flush=True)
            running = []
    net.eval()
    return net, {"steps": steps, "batch": batch, "seed": seed, "minutes": round((time.perf_counter() - started) / 60, 1)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo.judge", description=__doc__.splitlines()[0])
    parser.add_argument("pictures", nargs="*", type=Path, help="pictures to judge")
    parser.add_argument("--train", action="store_true", help="train the judge and write its weights and accuracy")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=JUDGE_FILE)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        from safetensors.torch import save_file

        net, run = train(args.steps, args.seed)
        result = {"run": run, "held_out_accuracy": {"clean": accuracy(net, False), "degraded": accuracy(net, True)},
                  "held_out_pictures": 1000, "held_out_seed": HELD_OUT_SEED,
                  "command": f"python -m lib_trainer.demo.judge --train --steps {args.steps} --seed {args.seed}"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().half().contiguous() if v.is_floating_point() else v
                   for k, v in net.state_dict().items()}, str(args.out))
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(json.dumps(result), flush=True)
        return 0
    if not args.pictures:
        parser.error("give pictures to judge, or --train")
    judge = Judge.load(args.out)
    for path, verdict in zip(args.pictures, judge([Image.open(p) for p in args.pictures])):
        pairs = ", ".join(f"{c} {s}" for c, s in sorted(verdict.pairs))
        print(f"{path}: {pairs or 'nothing'}, {verdict.background} background ({verdict.count} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
