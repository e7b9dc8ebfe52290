"""A complete training run on an embedded default, in a few minutes on a CPU.

    python -m lib_trainer.demo [--arch toy|sd1|sd2-v|sdxl] [--root DIR] [--epochs N]

By default (``toy``) the base model is the committed toy SD1 model (``lib_trainer.demo.toy_model``), pretrained on
the toy world of coloured shapes, and the dataset is the toy world's new concept: 12 pictures of a star it never
saw, captioned ``tt_star, red star, white background`` and so on. The pictures are laid out the way a Train Tools
project is laid out on disk and the real trainer runs as a subprocess (``python -m lib_trainer.trainer
config.toml``), drawing a sample of ``tt_star`` every epoch; at the end the judge (``lib_trainer.demo.judge``)
says in which epoch's sample the star appears. ``sd1``, ``sd2-v`` and ``sdxl`` train randomly initialised tiny
models instead (they show the flow, their samples are noise).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lib_trainer import deps
from lib_trainer.demo import toy_model, toy_world
from lib_trainer.demo.tiny_model import write_tiny_checkpoint
from lib_trainer.trainer.schema import TrainConfig, save_config

REPEATS = 5  # 12 pictures x 5 = 60 per epoch: 15 steps of batch 4
SAMPLE_PROMPTS = ("tt_star, red star, white background", "tt_star, green star, black background")


def judge_samples(sample_dir: Path) -> list[str]:
    """One line per sample picture: what the judge sees in it."""
    from PIL import Image

    from lib_trainer.demo.judge import Judge
    from lib_trainer.demo.lora_quality import star_drawn

    paths = sorted(sample_dir.glob("*.png"))
    if not paths:
        return []
    images = [Image.open(p).convert("RGB") for p in paths]
    lines = []
    for path, image, verdict in zip(paths, images, Judge.load()(images)):
        seen = ", ".join(f"{c} {s}" for c, s in sorted(verdict.pairs)) or "nothing it knows"
        star = "a star" if star_drawn(image, verdict) else "no star"
        lines.append(f"  {path.name}: {star} ({seen}, {verdict.background} background)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("toy", "sd1", "sd2-v", "sdxl"), default="toy",
                        help="toy: the pretrained toy SD1 model (default); others: random tiny models")
    parser.add_argument("--root", default="outputs/train_tools", help="workspace folder (default: outputs/train_tools)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    if args.arch == "toy":
        model = toy_model.MODEL_FILE
        if not model.is_file():
            print(f"{model} is missing: build it with python -m lib_trainer.demo.pretrain, or use --arch sd1",
                  file=sys.stderr)
            return 1
    else:
        model = root / "models" / f"tiny-{args.arch}.safetensors"
        if not model.exists():
            write_tiny_checkpoint(args.arch, model)
    version = root / "projects" / "demo" / "versions" / "v1"
    train_dir = version / "dataset" / "train"
    toy_world.write_folder(train_dir / f"{REPEATS}_{toy_world.TRIGGER}", toy_world.concept_dataset(), prefix="star")
    (version / "samples").mkdir(parents=True, exist_ok=True)
    for old in (version / "samples").glob("*.png"):
        old.unlink()
    size = toy_model.TOY_SIZE
    (version / "samples" / "prompts.txt").write_text("".join(
        f"{p} --w {size} --h {size} --s 20 --l 7 --d 1\n" for p in SAMPLE_PROMPTS), encoding="utf-8")
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(model), v_parameterization=args.arch == "sd2-v",
        train_data_dir=str(train_dir), output_dir=str(version / "checkpoints"), output_name="demo",
        resolution=f"{size},{size}", caption_extension=".txt", max_train_epochs=args.epochs, save_every_n_epochs=1,
        train_batch_size=4, learning_rate=2e-3, unet_lr=2e-3, text_encoder_lr=1e-3, lr_scheduler="constant",
        network_dim=8, network_alpha=8, seed=1234, cache_latents=True,
        logging_dir=str(version / "logs" / "tensorboard"), events_file=str(version / "logs" / "events.jsonl"),
        sample_dir=str(version / "samples"), sample_prompts=str(version / "samples" / "prompts.txt"),
        sample_every_n_epochs=1, sample_sampler="euler_a",
    )
    config_path = version / "config.toml"
    save_config(cfg, config_path)
    what = "the toy model" if args.arch == "toy" else f"a random tiny {args.arch} model"
    print(f"training a LoRA of {toy_world.TRIGGER} (a star) on {what}; config: {config_path}", flush=True)

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
    if args.arch == "toy":
        print("what the judge sees in each epoch's samples (the base model was never shown a star):")
        for line in judge_samples(version / "samples"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
