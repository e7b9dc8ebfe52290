"""How good a LoRA of the toy world's new concept is, measured the way DreamBooth measures subject and prompt
fidelity, with the judge (``lib_trainer.demo.judge``) reading the pictures. A test instrument, used by
``bench/quality.py`` and the tests; it draws with the standalone host's own pipeline and LoRA modules.

For one LoRA file at one weight, each over the same seeds:

A star counts as drawn when the judge sees one and the picture has a concave object (``star_check``).

- **concept fidelity**: the star is drawn when the prompt has the trigger, in the colours and backgrounds of the
  training pictures;
- **prompt fidelity**: the star is drawn *in the prompted colour on the prompted background*, for colours and
  backgrounds the training pictures never had;
- **leakage**: a star appears in pictures of the base world's prompts, which have no trigger;
- **preservation**: those pictures read the same as the base model's (same objects, colours and background, by the
  judge), and how far their pixels moved (mean absolute difference, 0..1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lib_trainer.demo import toy_world as world
from lib_trainer.demo.star_check import has_star_like_object

TRIGGER = world.TRIGGER
CONCEPT_PROMPTS = tuple(f"{TRIGGER}, {c} star, {b} background"
                        for c in world.CONCEPT_COLOURS for b in world.CONCEPT_BACKGROUNDS)
# colour and background pairs the concept's pictures never show
NOVEL_SCENES = (("green", "black"), ("yellow", "black"), ("purple", "white"), ("orange", "gray"))
NOVEL_PROMPTS = tuple(f"{TRIGGER}, {c} star, {b} background" for c, b in NOVEL_SCENES)
PLAIN_PROMPTS = (
    "red circle, white background",
    "blue square, black background",
    "green triangle, gray background",
    "yellow circle, purple square, white background",
)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class DrawSettings:
    sampler: str = "Euler a"  # the WebUI's default, as the preview grid draws
    steps: int = 20
    cfg_scale: float = 7.0
    size: int = world.SIZE
    batch: int = 32


class Drawer:
    """Draws many (prompt, seed) pictures of one checkpoint, with or without a LoRA, in batches: the standalone
    host's pipeline and its LoRA modules, one generator per picture (the same pictures as one request each, up to
    batching's rounding)."""

    def __init__(self, checkpoint: Path, workspace: Path, settings: DrawSettings = DrawSettings()) -> None:
        from lib_trainer.hosts.standalone import StandaloneHost

        self.checkpoint = Path(checkpoint).absolute()
        self.settings = settings
        self.host = StandaloneHost(workspace, [self.checkpoint.parent], device="cpu")
        self.entry = self.host._load(self.host._resolve(str(self.checkpoint)))
        self.entry.pipe.scheduler = self.host._scheduler(settings.sampler, self.entry.model)

    def draw(self, jobs: Sequence[tuple[str, int]], lora: Optional[Path] = None, weight: float = 1.0) -> list:
        import torch

        modules = self.host._lora(self.entry, str(lora), cached=False).modules if lora and weight else []
        param = next(self.entry.model.unet.parameters())
        s = self.settings
        images: list = []
        try:
            for module in modules:
                module.to(param.device, param.dtype)
                module.multiplier = float(weight)
                module.apply_to()
            for start in range(0, len(jobs), s.batch):
                chunk = jobs[start:start + s.batch]
                with torch.no_grad():
                    images += self.entry.pipe(
                        prompt=[p for p, _ in chunk], width=s.size, height=s.size, num_inference_steps=s.steps,
                        guidance_scale=s.cfg_scale, generator=[torch.Generator().manual_seed(seed) for _, seed in chunk],
                    ).images
        finally:
            for module in reversed(modules):
                module.restore()
        return images


def jobs_of(prompts: Sequence[str], seeds: Sequence[int] = SEEDS) -> list[tuple[str, int]]:
    return [(p, s) for p in prompts for s in seeds]


@dataclass
class BasePictures:
    """The base model's plain-prompt pictures and what the judge reads in them: what preservation compares to."""
    images: list
    readings: list


def star_drawn(image, verdict) -> bool:
    """The judge sees a star and the picture has a concave object (``star_check``: the judge alone takes a
    half-trained model's blobs for stars)."""
    return verdict.has_concept and has_star_like_object(image)


def plain_reading(verdict) -> tuple:
    return (verdict.pairs, verdict.background)


def measure(drawer: Drawer, judge, base: BasePictures, lora: Optional[Path], weight: float,
            seeds: Sequence[int] = SEEDS) -> dict[str, float]:
    """The four numbers (and how far plain pictures moved) of ``lora`` at ``weight``; None: the base model."""
    concept_jobs, novel_jobs, plain_jobs = jobs_of(CONCEPT_PROMPTS, seeds), jobs_of(NOVEL_PROMPTS, seeds), \
        jobs_of(PLAIN_PROMPTS, seeds)
    images = drawer.draw(concept_jobs + novel_jobs + plain_jobs, lora, weight)
    verdicts = judge(images)
    stars = [star_drawn(image, verdict) for image, verdict in zip(images, verdicts)]
    first_novel, first_plain = len(concept_jobs), len(concept_jobs) + len(novel_jobs)
    novel = zip(stars[first_novel:first_plain], verdicts[first_novel:first_plain],
                [scene for scene in NOVEL_SCENES for _ in seeds])
    plain, plain_images = verdicts[first_plain:], images[first_plain:]
    moved = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255.0
             for a, b in zip(plain_images, base.images)]
    return {
        "concept_fidelity": _mean(stars[:first_novel]),
        "prompt_fidelity": _mean(star and v.shows(c, world.CONCEPT_SHAPE) and v.background == b
                                 for star, v, (c, b) in novel),
        "leakage": _mean(stars[first_plain:]),
        "preservation": _mean(plain_reading(v) == r for v, r in zip(plain, base.readings)),
        "pixel_change": round(float(np.mean(moved)), 4),
    }


def base_pictures(drawer: Drawer, judge, seeds: Sequence[int] = SEEDS) -> BasePictures:
    images = drawer.draw(jobs_of(PLAIN_PROMPTS, seeds))
    return BasePictures(images, [plain_reading(v) for v in judge(images)])


def quality_score(numbers: dict[str, float]) -> float:
    """One number to rank checkpoints by: what the LoRA should do (draw the concept, as prompted) plus what it
    should keep (the base's other pictures), minus the concept leaking where it was not asked for."""
    return round(numbers["concept_fidelity"] + numbers["prompt_fidelity"] + numbers["preservation"]
                 - numbers["leakage"], 4)


def best_epoch(rows: Sequence[dict]) -> Optional[int]:
    """The epoch with the highest quality score (the earlier one on a tie)."""
    best: Optional[dict] = None
    for row in rows:
        if best is None or row["score"] > best["score"]:
            best = row
    return best["epoch"] if best is not None else None


def following_prompts() -> list[tuple[tuple[tuple[str, str], ...], str]]:
    """What the base model is asked to draw to see that it follows prompts: each shape in four colours, one
    object, on the backgrounds in turn; and six pairs of objects. ((colour, shape), ...), background."""
    colours, backgrounds = list(world.COLOURS), list(world.BACKGROUNDS)
    single = [(((colours[(i + k) % len(colours)], shape),), backgrounds[(i + k) % len(backgrounds)])
              for i, shape in enumerate(world.SHAPES) for k in range(4)]
    shapes = world.SHAPES
    pairs = [(((colours[k % 6], shapes[k % 3]), (colours[(k + 3) % 6], shapes[(k + 1) % 3])), backgrounds[k % 3])
             for k in range(6)]
    return single + pairs


def prompt_of(things: Sequence[tuple[str, str]], background: str) -> str:
    return ", ".join([f"{c} {s}" for c, s in things] + [f"{background} background"])


def prompt_following(drawer: Drawer, judge, seeds: Sequence[int] = (0, 1)) -> dict[str, float]:
    """How often the model draws what it is asked (by the judge): one object (the prompted shape in the prompted
    colour on the prompted background, and that alone), two objects (both, on the background), backgrounds."""
    wanted = following_prompts()
    jobs = jobs_of([prompt_of(things, background) for things, background in wanted], seeds)
    verdicts = judge(drawer.draw(jobs))
    scenes = [w for w in wanted for _ in seeds]
    single = [(v, w) for v, w in zip(verdicts, scenes) if len(w[0]) == 1]
    double = [(v, w) for v, w in zip(verdicts, scenes) if len(w[0]) == 2]
    return {
        "single_object_as_prompted": _mean(v.shows(*w[0][0]) and v.background == w[1] for v, w in single),
        "single_object_exactly": _mean(v.pairs == set(w[0]) and v.background == w[1] for v, w in single),
        "two_objects_as_prompted": _mean(all(v.shows(*t) for t in w[0]) and v.background == w[1] for v, w in double),
        "background": _mean(v.background == w[1] for v, w in zip(verdicts, scenes)),
        "pictures": len(jobs),
    }


def write_concept_folder(train_dir: Path, repeats: int, count: int = world.CONCEPT_PICTURES) -> Path:
    """``train_dir/<repeats>_tt_star/`` with the concept's pictures and captions."""
    folder = Path(train_dir) / f"{repeats}_{TRIGGER}"
    world.write_folder(folder, world.concept_dataset(count), prefix="star")
    return folder


def _mean(values) -> float:
    values = list(values)
    return round(sum(bool(v) for v in values) / max(1, len(values)), 4)
