"""Training speed and memory of the real trainer: steps/s, images/s, peak RSS and peak CUDA memory.

    PYTHONPATH=.:trainer_deps python bench/train_speed.py [--preset cpu-tiny|gpu] [--out FILE]

Prints ONE JSON document on stdout, a list of runs::

    {name, arch, resolution, batch_size, precision, cache_latents, gradient_checkpointing, device, steps,
     steps_per_s, images_per_s, peak_rss_mib, peak_cuda_mib, load_s, first_step_s, ...}

Every run trains a LoRA with ``lib_trainer.trainer.train.Trainer`` in-process (no CLI, no subprocess of the
trainer's own): ``setup()`` is timed as ``load_s``, then ``train()`` runs with an EventWriter whose stream is an
``io.StringIO`` that also notes when each event arrives. ``first_step_s`` is from the ``start`` event to the first
``step`` event; ``steps_per_s`` is measured over the steps after a warm-up (at least one whole epoch, so that the
latent cache is full and every later step is a steady-state step), with ``log_every_n_steps = 1`` so that every step
ends with a host sync. The final checkpoint save is not timed.

Each run is executed in a fresh child process (multiprocessing "spawn") by default, so that its peak RSS and
peak CUDA memory are its own and no allocator cache of an earlier run is counted; ``--no-isolate`` runs them all
in this process (peak RSS is then reset through /proc/self/clear_refs where Linux allows it).

Presets:

* ``cpu-tiny`` (default without CUDA): the tiny sd1, sd2-v and sdxl models of ``lib_trainer.demo.tiny_model`` at 64 px,
  batch 1 and 4, fp32, a few dozen steps. A couple of minutes on 2 cores.
* ``gpu`` (default with CUDA): full-size, randomly initialised SD1.5 at 512 px (batch 1 and 4, fp16, cached
  latents, gradient checkpointing on and off) and SDXL at 1024 px (batch 1, fp16 and bf16, gradient
  checkpointing on), ~30 steps each. The full-size checkpoints are generated here in the original LDM single-file
  layout from the diffusers configs the trainer ships (model_configs/{sd1,sdxl}.json), with the tensor builders of
  ``lib_trainer.demo.tiny_model`` (about 2 GB for SD1.5 and 7 GB for SDXL in the temporary folder).

Everything is written to a temporary folder (``--tmp`` picks its parent) that is removed at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import bench_env  # noqa: F401,E402  (paths and offline settings before any of our imports)

PRESETS = ("cpu-tiny", "gpu")
DATASET_IMAGES = 4  # pictures in the generated dataset (repeats 1): batch 4 is one step per epoch
# The trainer scores a fixed-noise loss on up to 4 pictures before the first step and at every checkpoint; it is
# not timed here, so the bench scores one picture to save wall time (an instance attribute, lib_trainer unchanged).
EVAL_PICTURES = 1


@dataclass
class RunSpec:
    name: str
    arch: str  # sd1 | sd2-v | sdxl (what is reported)
    resolution: int
    batch_size: int
    precision: str  # fp32 | fp16 | bf16 (TrainConfig.mixed_precision "no" | "fp16" | "bf16")
    cache_latents: bool
    gradient_checkpointing: bool
    steps: int
    warmup: int  # steps left out of the speed; raised to one whole epoch
    full_size: bool = False
    train_text_encoder: bool = True
    network_dim: int = 16


def preset_runs(preset: str) -> list[RunSpec]:
    runs: list[RunSpec] = []
    if preset == "cpu-tiny":
        for arch in ("sd1", "sd2-v", "sdxl"):
            for batch in (1, 4):
                runs.append(RunSpec(
                    name=f"tiny-{arch}-64px-b{batch}", arch=arch, resolution=64, batch_size=batch, precision="fp32",
                    cache_latents=True, gradient_checkpointing=False, steps=20, warmup=5,
                ))
    elif preset == "gpu":
        for batch in (1, 4):
            for gc in (True, False):
                runs.append(RunSpec(
                    name=f"sd15-512px-b{batch}-fp16-cache" + ("-gc" if gc else ""), arch="sd1", resolution=512,
                    batch_size=batch, precision="fp16", cache_latents=True, gradient_checkpointing=gc, steps=30,
                    warmup=8, full_size=True,
                ))
        for precision in ("fp16", "bf16"):
            # SDXL LoRAs are usually trained UNet-only (the text encoders stay frozen and their outputs are cached).
            runs.append(RunSpec(
                name=f"sdxl-1024px-b1-{precision}-cache-gc", arch="sdxl", resolution=1024, batch_size=1,
                precision=precision, cache_latents=True, gradient_checkpointing=True, steps=30, warmup=8,
                full_size=True, train_text_encoder=False,
            ))
    else:
        raise ValueError(f"unknown preset {preset!r}")
    return runs


# ---- full-size random checkpoints -------------------------------------------------------------------------------

def ldm_build_config(arch: str, diffusers_cfg: dict) -> dict:
    """tiny_model's builder config (LDM / sgm yaml parameter names) from the diffusers configs of model_configs/.

    ``arch`` is sd1, sd2 or sdxl; ``diffusers_cfg`` has the "unet", "vae", "text_encoder"(, "text_encoder_2")
    sections of lib_trainer/trainer/model_configs/<arch>.json.
    """
    u = diffusers_cfg["unet"]
    boc = list(u["block_out_channels"])
    mc = boc[0]
    attn_levels = [i for i, t in enumerate(u["down_block_types"]) if t.startswith("CrossAttn")]
    tlpb = u.get("transformer_layers_per_block", 1)
    unet: dict[str, Any] = {
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "model_channels": mc,
        "channel_mult": [c // mc for c in boc],
        "num_res_blocks": u["layers_per_block"],
        "attention_resolutions": [2 ** i for i in attn_levels],  # LDM: downsampling factors
        # one entry per level (gated by attention_resolutions); the middle block uses the last, as in sgm/diffusers
        "transformer_depth": list(tlpb) if isinstance(tlpb, (list, tuple)) else int(tlpb),
        "context_dim": u["cross_attention_dim"],
        "use_linear_in_transformer": bool(u.get("use_linear_projection", False)),
    }
    heads = u.get("attention_head_dim")
    if arch == "sd1":
        unet["num_heads"] = heads  # diffusers' SD1 "attention_head_dim" is the head count
    else:
        unet["num_head_channels"] = 64
    if u.get("addition_embed_type") == "text_time":
        unet["num_classes"] = "sequential"
        unet["adm_in_channels"] = u["projection_class_embeddings_input_dim"]

    v = diffusers_cfg["vae"]
    vch = v["block_out_channels"][0]
    vae = {
        "in_channels": v["in_channels"],
        "out_ch": v["out_channels"],
        "ch": vch,
        "ch_mult": [c // vch for c in v["block_out_channels"]],
        "num_res_blocks": v["layers_per_block"],
        "z_channels": v["latent_channels"],
        "double_z": True,
        "attn_resolutions": [],
        "scale_factor": v["scaling_factor"],
    }

    def hf_clip(prefix: str, te: dict) -> dict:
        if te["intermediate_size"] != 4 * te["hidden_size"]:
            raise ValueError("the builder assumes CLIP's 4x MLP width")
        return {"layout": "hf_clip", "prefix": prefix, "width": te["hidden_size"], "layers": te["num_hidden_layers"]}

    def open_clip(prefix: str, te: dict, extra_layers: int, projection: int) -> dict:
        if te["intermediate_size"] != 4 * te["hidden_size"]:
            raise ValueError("the builder assumes CLIP's 4x MLP width")
        return {"layout": "open_clip", "prefix": prefix, "width": te["hidden_size"],
                "layers": te["num_hidden_layers"] + extra_layers, "projection_dim": projection}

    from lib_trainer.trainer import models as M

    if arch == "sd1":
        tes = [hf_clip(M.SD1_TE_PREFIX, diffusers_cfg["text_encoder"])]
    elif arch == "sd2":
        # model_configs/sd2.json describes the encoder as used (penultimate layer): the checkpoint has one more;
        # its text_projection is square (1024x1024) in the real OpenCLIP ViT-H.
        te = diffusers_cfg["text_encoder"]
        tes = [open_clip(M.SD2_TE_PREFIX, te, 1, te["hidden_size"])]
    elif arch == "sdxl":
        te2 = diffusers_cfg["text_encoder_2"]
        tes = [hf_clip(M.SDXL_TE1_PREFIX, diffusers_cfg["text_encoder"]),
               open_clip(M.SDXL_TE2_PREFIX, te2, 0, te2["projection_dim"])]
    else:
        raise ValueError(f"no full-size config for {arch!r}")
    return {"unet": unet, "vae": vae, "text_encoders": tes}


def build_state_dict_from_config(config: dict, seed: int = 0, dtype=None) -> dict:
    """Random tensors under LDM key names for a builder config shaped like tiny_model.TINY_CONFIGS[arch], drawn on
    the GPU when there is one."""
    import torch

    from lib_trainer.demo import tiny_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return tiny_model.build_state_dict(config, seed=seed, dtype=dtype or torch.float16, device=device)


def write_full_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """A full-size, randomly initialised `arch` (sd1, sd2, sdxl) checkpoint in the LDM single-file layout (fp16)."""
    import torch
    from safetensors.torch import save_file

    from lib_trainer.trainer.models import base_configs

    config = ldm_build_config(arch, base_configs(arch))
    tensors = build_state_dict_from_config(config, seed=seed, dtype=torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"train_tools_bench": f"random full-size {arch}"})
    del tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runs' own processes need the GPU, not this one
    return path


def write_checkpoint(spec: RunSpec, folder: Path, cache: dict) -> Path:
    """The base checkpoint of a run, written once per (arch, size) and reused."""
    key = (spec.arch, spec.full_size)
    if key not in cache:
        t0 = time.perf_counter()
        if spec.full_size:
            arch = "sd2" if spec.arch == "sd2-v" else spec.arch
            path = write_full_checkpoint(arch, folder / f"full-{spec.arch}.safetensors")
        else:
            from lib_trainer.demo.tiny_model import write_tiny_checkpoint

            path = write_tiny_checkpoint(spec.arch, folder / f"tiny-{spec.arch}.safetensors")
        log(f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        cache[key] = path
    return cache[key]


# ---- dataset ------------------------------------------------------------------------------------------------------

_WORDS = ("red", "green", "blue", "yellow", "circle", "square", "stripes", "sky", "sunset", "abstract", "soft light",
          "sharp lines", "pattern", "noise", "bright", "dark", "outdoors", "still life")


def write_dataset(root: Path, resolution: int, count: int = DATASET_IMAGES, seed: int = 0, repeats: int = 1) -> Path:
    """kohya layout: root/<repeats>_bench/NNN.png + NNN.txt; random-ish pictures a little larger than the
    resolution."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    folder = root / f"{repeats}_bench"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w = int(resolution * rng.uniform(1.0, 1.5))
        h = int(resolution * rng.uniform(1.0, 1.5))
        c0 = [rng.randrange(256) for _ in range(3)]
        c1 = [rng.randrange(256) for _ in range(3)]
        # vertical gradient background
        column = Image.new("RGB", (1, h))
        for y in range(h):
            t = y / max(1, h - 1)
            column.putpixel((0, y), tuple(int(a + (b - a) * t) for a, b in zip(c0, c1)))
        image = column.resize((w, h))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(3, 8)):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            x1, y1 = x0 + rng.randint(w // 10, w // 2), y0 + rng.randint(h // 10, h // 2)
            color = tuple(rng.randrange(256) for _ in range(3))
            shape = rng.choice(("ellipse", "rectangle", "line"))
            if shape == "ellipse":
                draw.ellipse((x0, y0, x1, y1), fill=color)
            elif shape == "rectangle":
                draw.rectangle((x0, y0, x1, y1), fill=color)
            else:
                draw.line((x0, y0, x1, y1), fill=color, width=max(1, w // 40))
        noise = Image.effect_noise((w, h), 24).convert("RGB")
        image = Image.blend(image, noise, 0.15).filter(ImageFilter.SMOOTH)
        image.save(folder / f"{i:03d}.png")
        tags = rng.sample(_WORDS, 4)
        (folder / f"{i:03d}.txt").write_text("bnchmrk, " + ", ".join(tags) + "\n", encoding="utf-8")
    return root


# ---- one run ------------------------------------------------------------------------------------------------------

class TimedStream(io.StringIO):
    """The EventWriter's stream: keeps the text and notes (perf_counter, event) for every JSON line written."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[float, dict]] = []
        self._partial = ""

    def write(self, s: str) -> int:
        now = time.perf_counter()
        text = self._partial + s
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append((now, event))
        return super().write(s)


def reset_peak_rss() -> None:
    try:  # Linux >= 4.0: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss / (2**20 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def make_config(spec: RunSpec, checkpoint: Path, data_dir: Path, out_dir: Path):
    from lib_trainer.trainer.schema import TrainConfig

    return TrainConfig(
        pretrained_model_name_or_path=str(checkpoint),
        v_parameterization=spec.arch == "sd2-v",
        train_data_dir=str(data_dir),
        resolution=f"{spec.resolution},{spec.resolution}",
        caption_extension=".txt",
        cache_latents=spec.cache_latents,
        network_module="networks.lora",
        network_dim=spec.network_dim,
        network_alpha=spec.network_dim / 2,
        network_train_unet_only=not spec.train_text_encoder,
        learning_rate=1e-4,
        optimizer_type="AdamW",
        lr_scheduler="constant",
        train_batch_size=spec.batch_size,
        max_train_steps=spec.steps,
        seed=1234,
        mixed_precision={"fp32": "no"}.get(spec.precision, spec.precision),
        gradient_checkpointing=spec.gradient_checkpointing,
        output_dir=str(out_dir),
        output_name="bench",
        log_every_n_steps=1,
    )


def run_one(spec: RunSpec, checkpoint: Path, data_dir: Path, work: Path, threads: Optional[int] = None) -> dict:
    """Train one run in this process; returns its result row (with "error" when it failed)."""
    import warnings

    import torch

    if threads:
        torch.set_num_threads(threads)

    from lib_trainer.trainer.events import EventWriter
    from lib_trainer.trainer.schema import validate
    from lib_trainer.trainer import holdout
    from lib_trainer.trainer.train import Trainer

    warnings.filterwarnings("ignore", category=FutureWarning)
    cuda = torch.cuda.is_available()
    row: dict[str, Any] = {
        "name": spec.name, "arch": spec.arch, "resolution": spec.resolution, "batch_size": spec.batch_size,
        "precision": spec.precision if cuda else "fp32", "cache_latents": spec.cache_latents,
        "gradient_checkpointing": spec.gradient_checkpointing, "device": None, "steps": spec.steps,
        "steps_per_s": None, "images_per_s": None, "peak_rss_mib": None, "peak_cuda_mib": None,
        "load_s": None, "first_step_s": None,
        "full_size": spec.full_size, "train_text_encoder": spec.train_text_encoder, "network_dim": spec.network_dim,
        "measured_steps": None, "final_loss": None, "device_name": None, "torch": torch.__version__,
    }
    out_dir = work / f"out-{spec.name}"
    cfg = make_config(spec, checkpoint, data_dir, out_dir)
    stream = TimedStream()
    events = EventWriter(None, stream=stream)
    trainer = Trainer(cfg, events)
    holdout.EVAL_PICTURES = EVAL_PICTURES
    reset_peak_rss()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        validate(cfg)
        t0 = time.perf_counter()
        trainer.setup()
        row["load_s"] = round(time.perf_counter() - t0, 3)
        trainer.train()
    except Exception as exc:  # one failed run must not lose the others
        if cuda and isinstance(exc, torch.cuda.OutOfMemoryError):
            row["error"] = "CUDA out of memory"
        else:
            row["error"] = f"{exc.__class__.__name__}: {exc}"
            row["traceback_tail"] = "".join(traceback.format_exc().splitlines(keepends=True)[-8:])
    finally:
        trainer.close()
    row["peak_rss_mib"] = peak_rss_mib()
    if hasattr(os, "getloadavg"):  # other processes on the machine make CPU numbers noisy: say how busy it was
        row["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if cuda:
        row["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["peak_cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)

    start = next(((t, e) for t, e in stream.events if e.get("event") == "start"), None)
    steps = [(t, e) for t, e in stream.events if e.get("event") == "step"]
    errors = [e for _, e in stream.events if e.get("event") == "error"]
    if errors and "error" not in row:
        row["error"] = errors[0].get("message")
    if start is not None:
        row["device"] = start[1].get("device")
        row["device_name"] = device_name(row["device"])
        spe = int(start[1].get("steps_per_epoch") or 1)
        # Warm-up: the spec's, and at least one whole epoch (latents are cached during the first one).
        warmup = max(spec.warmup, spe)
        row["warmup_steps"] = warmup
        if steps:
            row["first_step_s"] = round(steps[0][0] - start[0], 4)
            row["final_loss"] = steps[-1][1].get("loss")
            row["steps"] = steps[-1][1].get("step", len(steps))
        timed = [(t, e) for t, e in steps if e.get("step", 0) >= warmup]
        if len(timed) >= 2:
            n = timed[-1][1]["step"] - timed[0][1]["step"]
            seconds = timed[-1][0] - timed[0][0]
            row["measured_steps"] = n
            row["steps_per_s"] = round(n / seconds, 4)
            row["images_per_s"] = round(n * spec.batch_size * cfg.gradient_accumulation_steps / seconds, 4)
        elif "error" not in row:
            row["error"] = f"too few steps after the {warmup}-step warm-up to measure a speed"
    shutil.rmtree(out_dir, ignore_errors=True)
    return row


def _child(conn, spec_dict: dict, checkpoint: str, data_dir: str, work: str, threads: Optional[int]) -> None:
    """Entry point of the isolated child process: one run, its row sent back through the pipe."""
    os.dup2(2, 1)  # libraries that print must not mix into the parent's JSON on stdout
    sys.stdout = sys.stderr
    try:
        row = run_one(RunSpec(**spec_dict), Path(checkpoint), Path(data_dir), Path(work), threads)
    except BaseException as exc:  # noqa: BLE001 - report anything, the parent decides
        row = {"name": spec_dict["name"], "error": f"{exc.__class__.__name__}: {exc}",
               "traceback_tail": "".join(traceback.format_exc().splitlines(keepends=True)[-8:])}
    conn.send(row)
    conn.close()


def run_isolated(spec: RunSpec, checkpoint: Path, data_dir: Path, work: Path, threads: Optional[int] = None) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, dataclasses.asdict(spec), str(checkpoint), str(data_dir), str(work), threads))
    proc.start()
    send.close()
    row = None
    try:
        row = receive.recv()
    except EOFError:
        pass
    proc.join()
    if row is None:
        row = {"name": spec.name, "error": f"the run's process died (exit code {proc.exitcode}); out of memory?"}
    return row


# ---- main ---------------------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[train_speed] {message}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, help="default: gpu when CUDA is available, else cpu-tiny")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the runs whose name contains TEXT (repeatable)")
    parser.add_argument("--steps", type=int, help="override the steps of every run")
    parser.add_argument("--warmup", type=int, help="override the warm-up steps (still at least one epoch)")
    parser.add_argument("--resolution", type=int, help="override the resolution of every run (smoke tests)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-isolate", action="store_true", help="run everything in this process")
    parser.add_argument("--tmp", type=Path, help="parent folder of the temporary work folder")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=FILE",
                        help="use this full-size checkpoint (LDM single file) for sd1 / sdxl instead of generating one")
    parser.add_argument("--list", action="store_true", help="print the preset's runs and exit")
    args = parser.parse_args(argv)

    # stdout carries the JSON and nothing else: anything printed meanwhile goes to stderr
    json_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch

    preset = args.preset or ("gpu" if torch.cuda.is_available() else "cpu-tiny")
    runs = preset_runs(preset)
    if args.only:
        runs = [r for r in runs if any(text in r.name for text in args.only)]
    for r in runs:
        if args.steps is not None:
            r.steps = args.steps
        if args.warmup is not None:
            r.warmup = args.warmup
        if args.resolution is not None:
            r.resolution = args.resolution
    if args.list:
        json_out.write(json.dumps([dataclasses.asdict(r) for r in runs], indent=2) + "\n")
        json_out.flush()
        return 0
    if not runs:
        parser.error("no run matches --only")
    if preset == "gpu" and not torch.cuda.is_available():
        log("preset gpu without CUDA: full-size models train in fp32 on the CPU (very slow)")

    results: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="train_speed-", dir=args.tmp))
    t_all = time.perf_counter()
    try:
        checkpoints: dict = {}
        for item in args.checkpoint:  # full-size checkpoints made earlier (bench/gpu_session.py makes them once)
            arch, _, file = item.partition("=")
            checkpoints[(arch, True)] = Path(file)
        datasets: dict[int, Path] = {}
        for spec in runs:
            if spec.resolution not in datasets:
                datasets[spec.resolution] = write_dataset(work / f"data-{spec.resolution}", spec.resolution)
            try:
                checkpoint = write_checkpoint(spec, work, checkpoints)
            except Exception as exc:
                results.append({"name": spec.name, "arch": spec.arch, "error": f"checkpoint: {exc.__class__.__name__}: {exc}"})
                log(f"{spec.name}: cannot write the checkpoint: {exc}")
                continue
            log(f"{spec.name}: training {spec.steps} steps ...")
            t0 = time.perf_counter()
            runner = run_one if args.no_isolate else run_isolated
            row = runner(spec, checkpoint, datasets[spec.resolution], work, args.threads)
            results.append(row)
            if row.get("error"):
                log(f"{spec.name}: FAILED: {row['error']}")
            else:
                log(f"{spec.name}: {row['steps_per_s']} steps/s, {row['images_per_s']} images/s, load "
                    f"{row['load_s']} s, first step {row['first_step_s']} s, peak RSS {row['peak_rss_mib']} MiB, "
                    f"peak CUDA {row['peak_cuda_mib']} MiB ({time.perf_counter() - t0:.1f} s in all)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.perf_counter() - t_all:.1f} s")

    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    json_out.write(text + "\n")
    json_out.flush()
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
