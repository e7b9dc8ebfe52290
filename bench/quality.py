"""The quality of LoRAs trained on the toy world: fidelity, leakage and preservation of every epoch, and the epoch
the tool recommends beside the epoch that is best by those numbers.

    PYTHONPATH=.:trainer_deps python bench/quality.py [--model lib_trainer/demo/models/toy-sd1.safetensors]
        [--runs overfit,person,character,style,product] [--weights 1.0,0.6] [--seeds 3] [--epochs N]
        [--threads 1] [--out FILE] [--keep DIR]

Prints ONE JSON document on stdout (progress on stderr). Each run trains a LoRA of the toy world's new concept
(``tt_star``: 12 pictures of a star in red and blue on white and gray, ``lib_trainer.demo.toy_world``) on the toy
base model with the real trainer, in a Train Tools project laid out as the tab makes it, then draws every epoch's
checkpoint at every weight through the standalone host's pipeline (Euler a, 20 steps, CFG 7, 64 px) and reads the
pictures with the judge (``lib_trainer.demo.lora_quality`` says what each number means). Runs:

* ``person``, ``character``, ``style``, ``product``: the tab's presets (``lib_trainer.presets``) on this machine
  (no CUDA: AdamW, fp32, the 16 GB tier's batch 4), at the toy's 64 px, network ranks divided by 4 (the toy's
  widths are a fifth of SD1's), the repeats the Dataset panel suggests for 12 pictures, no state folders;
* ``overfit``: made to overcook (LoCon of rank 8, learning rate 1e-3 constant, 10 repeats, 10 epochs).

For each run: ``epochs`` (one row per epoch checkpoint and weight: the four numbers, ``pixel_change``, ``score``
= concept + prompt fidelity + preservation - leakage, and the trainer's held-out denoising score ``eval_loss``),
``best_epoch`` (highest score at weight 1.0, the earlier on a tie), ``recommended_epoch``
(``lib_trainer.checkpoints.recommend``, from the scores the trainer recorded) and whether they are within one
epoch. ``base`` holds the base model's own numbers (no LoRA).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import bench_env  # noqa: F401,E402  (paths and offline settings before any of our imports)

CONCEPT_COUNT = 12
RANK_DIVISOR = 4
TOY_VRAM_TIER = 16  # on a CPU: plain AdamW, batch 4

OVERFIT: dict[str, Any] = dict(
    network_dim=8, network_alpha=8, conv_dim=8, conv_alpha=8, unet_lr=1e-3, text_encoder_lr=5e-4,
    lr_scheduler="constant", max_train_epochs=10,
)
OVERFIT_REPEATS = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_spec(name: str) -> tuple[str, dict[str, Any], int]:
    """(preset the config starts from, overrides, repeats) of a run."""
    from lib_trainer import presets
    from lib_trainer.dataset.concepts import suggest_repeats

    if name == "overfit":
        return "product", dict(OVERFIT), OVERFIT_REPEATS
    if name not in presets.PRESET_VALUES:
        raise SystemExit(f"unknown run {name!r}: overfit or one of {', '.join(presets.PRESETS)}")
    values = presets.PRESET_VALUES[name]
    overrides: dict[str, Any] = {}
    for dim, alpha in (("network_dim", "network_alpha"), ("conv_dim", "conv_alpha")):
        if dim in values:
            overrides[dim] = max(2, values[dim] // RANK_DIVISOR)
            overrides[alpha] = values[alpha] * overrides[dim] / values[dim]  # the same alpha / rank
    batch = presets.TIER_VALUES[("sd", TOY_VRAM_TIER)]["train_batch_size"]
    repeats, _ = suggest_repeats(CONCEPT_COUNT, name, batch)
    return name, overrides, repeats


def train_run(workspace, name: str, model: Path, epochs: Optional[int]):
    """A project ``quality-<name>`` with the concept's pictures, trained in-process; returns (version, seconds,
    config values)."""
    from lib_trainer import presets
    from lib_trainer.demo import lora_quality
    from lib_trainer.trainer.events import EventWriter
    from lib_trainer.trainer.schema import save_config
    from lib_trainer.trainer.train import run

    preset, overrides, repeats = run_spec(name)
    project = workspace.create_project(f"quality-{name}")
    version = project.versions()[0]
    lora_quality.write_concept_folder(version.train_dir, repeats, CONCEPT_COUNT)
    overrides.update(save_state=False, sample_prompts=None)
    if epochs:
        overrides["max_train_epochs"] = epochs
    cfg = presets.build_config(presets.VersionPaths.of(version), str(model), "sd1", preset, TOY_VRAM_TIER,
                               overrides=overrides, cuda=False, native_resolution=64)
    save_config(cfg, version.config_path)
    version.events_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    writer = EventWriter(version.events_path, stream=io.StringIO())
    try:
        code = run(cfg, writer)
    finally:
        writer.close()
    if code != 0:
        raise SystemExit(f"run {name} failed with exit code {code}; events in {version.events_path}")
    keys = ("network_dim", "network_alpha", "conv_dim", "unet_lr", "text_encoder_lr", "lr_scheduler",
            "max_train_epochs", "train_batch_size", "optimizer_type", "resolution", "min_snr_gamma")
    described = {k: getattr(cfg, k) for k in keys}
    described["repeats"] = repeats
    described["preset"] = preset
    return version, time.perf_counter() - started, described


def measure_run(version, drawer, judge, base, weights: list[float], seeds: list[int]) -> dict[str, Any]:
    from lib_trainer.checkpoints.recommend import checkpoint_scores, recommend
    from lib_trainer.demo import lora_quality

    scores = checkpoint_scores(version)
    files = {c.name: c for c in version.checkpoints()}
    rows = []
    for score in scores:
        for weight in weights:
            numbers = lora_quality.measure(drawer, judge, base, files[score.name].path, weight, seeds)
            rows.append(dict(epoch=score.epoch, weight=weight, **numbers, score=lora_quality.quality_score(numbers),
                             eval_loss=score.eval_loss))
            log(f"  epoch {score.epoch} weight {weight}: {numbers}")
    recommendation = recommend(version)
    recommended = recommendation.best_score.epoch if recommendation.best_score else None
    best = lora_quality.best_epoch([r for r in rows if r["weight"] == 1.0])
    return {"eval_set": recommendation.eval_set, "epochs": rows, "best_epoch": best,
            "recommended_epoch": recommended,
            "within_one_epoch": None if best is None or recommended is None else abs(best - recommended) <= 1}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="the toy base model (default: the committed one)")
    parser.add_argument("--runs", default="overfit,person,character,style,product")
    parser.add_argument("--weights", default="1.0,0.6")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of the run's own")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops: 1 is fastest on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspace in this folder")
    args = parser.parse_args(argv)

    import torch

    from lib_trainer.demo import lora_quality, toy_model
    from lib_trainer.demo.judge import Judge
    from lib_trainer.projects import Workspace

    torch.set_num_threads(args.threads)
    model = (args.model or toy_model.MODEL_FILE).absolute()
    if not model.is_file():
        raise SystemExit(f"{model} is missing: build it with python -m lib_trainer.demo.pretrain")
    weights = [float(w) for w in args.weights.split(",")]
    if 1.0 not in weights:
        weights.insert(0, 1.0)  # the best epoch is chosen at full weight
    seeds = list(range(args.seeds))
    root = args.keep or Path(tempfile.mkdtemp(prefix="train_tools_quality_"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        workspace = Workspace(root / "workspace")
        judge = Judge.load()
        drawer = lora_quality.Drawer(model, root / "host")
        base = lora_quality.base_pictures(drawer, judge, seeds)
        base_numbers = lora_quality.measure(drawer, judge, base, None, 0.0, seeds)
        log(f"base: {base_numbers}")
        runs = {}
        for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
            log(f"run {name}: training")
            version, seconds, config = train_run(workspace, name, model, args.epochs)
            log(f"run {name}: trained in {seconds:.0f} s; measuring")
            measured = measure_run(version, drawer, judge, base, weights, seeds)
            runs[name] = dict(config=config, train_seconds=round(seconds, 1), **measured)
            log(f"run {name}: best epoch {measured['best_epoch']}, recommended {measured['recommended_epoch']}")
        result = {
            "model": str(model), "judge": "lib_trainer/demo/models/judge.safetensors",
            "prompts": {"concept": list(lora_quality.CONCEPT_PROMPTS), "novel": list(lora_quality.NOVEL_PROMPTS),
                        "plain": list(lora_quality.PLAIN_PROMPTS)},
            "seeds": seeds, "weights": weights, "draw": vars(lora_quality.DrawSettings()),
            "base": dict(base_numbers, score=lora_quality.quality_score(base_numbers)),
            "runs": runs,
            "summary": {name: {"best_epoch": r["best_epoch"], "recommended_epoch": r["recommended_epoch"],
                               "within_one_epoch": r["within_one_epoch"], "eval_set": r["eval_set"]}
                        for name, r in runs.items()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                        "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
            "wall_s": round(time.perf_counter() - started, 1),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
