"""A complete training run on an embedded default, in about a minute on a CPU.

    python -m lib_trainer.demo [--arch sd1|sd2-v|sdxl] [--root DIR] [--epochs N]

Writes a tiny randomly initialised checkpoint, draws a small dataset of pictures with captions, lays them out
the way a Train Tools project is laid out on disk, and runs the real trainer as a subprocess
(``python -m lib_trainer.trainer config.toml``), showing its progress and the checkpoints it wrote.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from lib_trainer import deps
from lib_trainer.demo.tiny_model import write_tiny_checkpoint
from lib_trainer.trainer.schema import TrainConfig, save_config

COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60), "yellow": (230, 200, 40)}


def draw_dataset(folder: Path, count: int, seed: int = 0) -> None:
    """Simple 'tt_dog' pictures: a round face with ears and eyes on coloured backgrounds, with captions."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(count):
        background = names[i % len(names)]
        w, h = rng.choice([(128, 128), (160, 128), (128, 160)])
        image = Image.new("RGB", (w, h), COLOURS[background])
        d = ImageDraw.Draw(image)
        cx, cy, r = w // 2 + rng.randint(-10, 10), h // 2 + rng.randint(-10, 10), rng.randint(28, 40)
        d.ellipse((cx - r - 14, cy - r, cx - r + 10, cy - r + 30), fill=(90, 60, 30))  # ears
        d.ellipse((cx + r - 10, cy - r, cx + r + 14, cy - r + 30), fill=(90, 60, 30))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(170, 120, 70))
        d.ellipse((cx - 12, cy - 8, cx - 4, cy), fill=(0, 0, 0))
        d.ellipse((cx + 4, cy - 8, cx + 12, cy), fill=(0, 0, 0))
        image.save(folder / f"dog_{i:02d}.png")
        (folder / f"dog_{i:02d}.txt").write_text(f"tt_dog, dog, {background} background", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("sd1", "sd2-v", "sdxl"), default="sd1")
    parser.add_argument("--root", default="outputs/train_tools", help="workspace folder (default: outputs/train_tools)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    model = root / "models" / f"tiny-{args.arch}.safetensors"
    version = root / "projects" / "demo" / "versions" / "v1"
    train_dir = version / "dataset" / "train"
    if not model.exists():
        write_tiny_checkpoint(args.arch, model)
    draw_dataset(train_dir / "2_tt_dog", count=8)
    (version / "samples").mkdir(parents=True, exist_ok=True)
    (version / "samples" / "prompts.txt").write_text(
        "tt_dog, dog, red background --n blurry --w 64 --h 64 --s 8 --l 7 --d 1\n", encoding="utf-8"
    )
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(model), v_parameterization=args.arch == "sd2-v",
        train_data_dir=str(train_dir), output_dir=str(version / "checkpoints"), output_name="demo",
        resolution="64,64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128, caption_extension=".txt",
        max_train_epochs=args.epochs, save_every_n_epochs=1, train_batch_size=2, learning_rate=1e-3,
        network_dim=4, network_alpha=2, seed=1234, shuffle_caption=True, keep_tokens=1, flip_aug=True,
        cache_latents=True, logging_dir=str(version / "logs" / "tensorboard"),
        events_file=str(version / "logs" / "events.jsonl"), sample_dir=str(version / "samples"),
        sample_prompts=str(version / "samples" / "prompts.txt"), sample_every_n_epochs=2,
    )
    config_path = version / "config.toml"
    save_config(cfg, config_path)
    print(f"training a LoRA on the tiny {args.arch} model; config: {config_path}", flush=True)

    process = subprocess.Popen(
        [sys.executable, "-m", "lib_trainer.trainer", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=deps.trainer_env(sys.executable),
    )
    result = None
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # libraries print too
        kind = event.get("event")
        if kind == "start":
            print(f"  {event['images']} images per epoch (pictures × repeats), {event['epochs']} epochs, {event['total_steps']} steps on {event['device']}")
        elif kind == "step" and (event["step"] % 5 == 0 or event["step"] == 1):
            print(f"  step {event['step']:>4}  epoch {event['epoch']}  loss {event['loss']:.4f}  {event['it_per_s']:.2f} it/s  ETA {event['eta_s']:.0f}s")
        elif kind == "checkpoint":
            print(f"  checkpoint epoch {event['epoch']}: {Path(event['path']).name}  (fixed-noise loss {event['eval_loss']:.4f})")
        elif kind == "sample":
            print(f"  sample: {event['path']}")
        elif kind == "warning":
            print(f"  warning: {event['message']}")
        elif kind in ("done", "error"):
            result = event
    process.wait()
    if result is None or result["event"] == "error":
        message = result["message"] if result else f"the trainer exited with code {process.returncode}"
        print(f"training failed: {message}", file=sys.stderr)
        return 1
    print(f"done: {len(result['checkpoints'])} checkpoints in {version / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
