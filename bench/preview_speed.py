"""Preview overhead: a whole preview (lib_trainer.preview.run.run_preview: manifest, PNG files, labelled grids) against
the same txt2img requests sent straight to the host.

    PYTHONPATH=.:trainer_deps python bench/preview_speed.py [--checkpoints 3] [--prompts 2] [--out FILE]

Prints ONE JSON document on stdout (progress on stderr). Set-up: a tiny SD1 model (lib_trainer.demo.tiny_model), a
project whose version is trained by the real trainer for ``--checkpoints`` epochs (one checkpoint each), and the
standalone host (diffusers). One preview is drawn first, untimed, so that the model and every LoRA are loaded
(the host caches ``--checkpoints`` LoRAs). Then, ``--repeats`` times and alternating:

* ``bare``: every cell's Txt2ImgRequest (same prompts, seed, weights, LoRA files, order) through host.txt2img;
* ``preview``: run_preview(restart=True): the same requests plus the manifest after each cell, each cell's PNG,
  and the grids (and their pages) at the end.

``overhead_pct`` compares the medians; ``bookkeeping_pct`` is the share of the preview's own wall time spent
outside host.txt2img (it does not depend on how the bare runs happened to be scheduled, so it is steadier on a
busy machine). The goal is an overhead under 5 %. Everything lives in a temporary folder removed at the end.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_env  # noqa: F401,E402  (paths and offline settings before any of our imports)

GOAL_PCT = 5.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_dataset(folder: Path, count: int = 4) -> None:
    """``count`` smooth random 64 px pictures with captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(count):
        rng = np.random.default_rng(i)
        base = np.stack([xx / 64, yy / 64, (xx + yy) / 128], axis=-1) * 200 + rng.random(3) * 55
        pixels = np.clip(base + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"pic{i}.png")
        (folder / f"pic{i}.txt").write_text(f"tt_dog, dog, picture {i}", encoding="utf-8")


def train_version(root: Path, epochs: int):
    """A version with ``epochs`` checkpoints, trained by the real trainer on a tiny SD1 model."""
    from lib_trainer.projects import Workspace
    from lib_trainer.demo.tiny_model import write_tiny_checkpoint
    from lib_trainer.trainer.events import EventWriter
    from lib_trainer.trainer.schema import TrainConfig, save_config
    from lib_trainer.trainer.train import run

    model = root / "models" / "Stable-diffusion" / "tiny_sd1.safetensors"
    model.parent.mkdir(parents=True)
    write_tiny_checkpoint("sd1", model)
    workspace = Workspace(root / "outputs" / "train_tools")
    version = workspace.create_project("bench", first_version="v1").version("v1")
    version.update(settings={"trigger": "tt_dog"})
    write_dataset(version.train_dir / "1_tt_dog")
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(model), train_data_dir=str(version.train_dir),
        output_dir=str(version.checkpoints_dir), output_name=version.output_name, caption_extension=".txt",
        resolution="64,64", max_train_epochs=epochs, save_every_n_epochs=1, train_batch_size=4, network_dim=4,
        network_alpha=4.0, learning_rate=5e-2, seed=1234, events_file=str(version.events_path),
    )
    save_config(cfg, version.config_path)
    writer = EventWriter(version.events_path, stream=io.StringIO())
    try:
        code = run(cfg, writer)
    finally:
        writer.close()
    if code != 0:
        raise SystemExit(f"training failed (exit {code}): {version.events_path.read_text(encoding='utf-8')[-2000:]}")
    return version, model


def bare_requests(version, config, host):
    """The requests run_preview sends, in its order."""
    from lib_trainer.preview.config import apply_trigger, version_trigger
    from lib_trainer.preview.run import plan_cells, resolve_base_model
    from lib_trainer.hosts.base import LoraSpec, Txt2ImgRequest

    trigger = version_trigger(version)
    prompts = [apply_trigger(p, trigger) for p in config.prompts]
    cells = plan_cells(prompts, config.weights, version.checkpoints(), config.reference)
    base = resolve_base_model(version, config, host, [])
    return [Txt2ImgRequest(prompt=c.prompt, negative_prompt=config.negative_prompt, seed=config.seed,
                           steps=config.steps, cfg_scale=config.cfg_scale, width=config.width, height=config.height,
                           sampler=config.sampler, clip_skip=config.clip_skip, checkpoint=base,
                           loras=[] if c.reference else [LoraSpec(str(c.checkpoint.path), float(c.weight))])
            for c in cells]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=3, help="epochs trained = rows of the grid")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--weights", default="0.4,0.6,0.8,1.0")
    parser.add_argument("--size", type=int, default=64, help="width and height of each image")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of each image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tmp", default=None, help="parent of the temporary folder")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from lib_trainer.preview.config import PreviewConfig
    from lib_trainer.preview.run import run_preview
    from lib_trainer.hosts.standalone import StandaloneHost

    torch.set_num_threads(max(1, args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="tt-preview-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        log(f"training {args.checkpoints} epochs on a tiny SD1 model ...")
        version, model = train_version(tmp, args.checkpoints)
        train_s = time.perf_counter() - t0
        host = StandaloneHost(tmp, checkpoint_dirs=[model.parent], lora_dir=tmp / "models" / "Lora",
                              outputs_dir=tmp / "outputs", device=args.device, max_loras=max(4, args.checkpoints))
        captions = ["a dog on grass", "a dog in a park, sunny", "close-up of a dog", "a dog running"]
        config = PreviewConfig(
            prompts=[captions[i % len(captions)] + (f" {i}" if i >= len(captions) else "") for i in range(args.prompts)],
            weights=[float(w) for w in args.weights.split(",") if w.strip()], width=args.size, height=args.size,
            steps=args.steps, seed=1234,
        )
        requests = bare_requests(version, config, host)
        log(f"{len(requests)} cells; warming up (model and LoRAs) ...")
        t0 = time.perf_counter()
        run_preview(version, host, config, restart=True)
        warmup_s = time.perf_counter() - t0

        bare, runs = [], []
        for r in range(args.repeats):
            order = ("bare", "preview") if r % 2 == 0 else ("preview", "bare")
            for kind in order:
                t0 = time.perf_counter()
                if kind == "bare":
                    for request in requests:
                        host.txt2img(request)
                    bare.append(time.perf_counter() - t0)
                else:
                    result = run_preview(version, host, config, restart=True)
                    wall = time.perf_counter() - t0
                    if not result.complete or result.drawn != len(requests):
                        raise SystemExit(f"the preview did not draw every cell: {result}")
                    runs.append({"wall_s": wall, "txt2img_s": result.txt2img_s, "grid_s": result.grid_s})
                log(f"repeat {r + 1}/{args.repeats} {kind}: {time.perf_counter() - t0:.2f} s")

        bare_median = statistics.median(bare)
        preview_median = statistics.median(r["wall_s"] for r in runs)
        outside = [r["wall_s"] - r["txt2img_s"] for r in runs]
        grid_files = [p for p in version.previews_dir.glob("grid-*.png")]
        report = {
            "bench": "preview_speed",
            "device": str(host._device()),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "cells": len(requests),
            "checkpoints": args.checkpoints,
            "prompts": args.prompts,
            "weights": config.weights,
            "reference_column": config.reference,
            "size": args.size,
            "steps": args.steps,
            "repeats": args.repeats,
            "bare_s": [round(x, 4) for x in bare],
            "preview_s": [round(r["wall_s"], 4) for r in runs],
            "bare_median_s": round(bare_median, 4),
            "preview_median_s": round(preview_median, 4),
            "bare_per_cell_ms": round(1000 * bare_median / len(requests), 2),
            "overhead_pct": round(100 * (preview_median - bare_median) / bare_median, 2),
            "bookkeeping_pct": round(100 * statistics.median(o / r["wall_s"] for o, r in zip(outside, runs)), 2),
            "bookkeeping_per_cell_ms": round(1000 * statistics.median(
                (o - r["grid_s"]) / len(requests) for o, r in zip(outside, runs)), 2),
            "grid_s": round(statistics.median(r["grid_s"] for r in runs), 4),
            "grid_files": len(grid_files),
            "goal_pct": GOAL_PCT,
            "train_s": round(train_s, 2),
            "warmup_s": round(warmup_s, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        report["meets_goal"] = report["overhead_pct"] < GOAL_PCT
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
