"""Train Tools' trainer and kohya sd-scripts side by side on identical inputs, alternating A B A B.

    PYTHONPATH=.:trainer_deps .venv/bin/python bench/vs_sd_scripts.py \\
        --sd-scripts /tmp/sd-scripts/repo --sd-scripts-python /tmp/sd-scripts/venv/bin/python \\
        [--case cpu-sd15-64] [--pairs 3] [--out FILE]

Prints ONE JSON document on stdout (progress on stderr). sd-scripts is never vendored or fetched: point
``--sd-scripts`` at an existing checkout and ``--sd-scripts-python`` at its own venv's Python (bench/README.md
says how to make one).

Both sides get the same checkpoint (a full-size, randomly initialised model in the original LDM single-file
layout, fp16, built with ``lib_trainer.demo.tiny_model.build_state_dict`` from the configs the trainer ships),
the same generated dataset folder (8 pictures x 10 repeats, one caption file each), the same CLIP tokenizer files
(ours, saved where sd-scripts' ``--tokenizer_cache_dir`` looks, so it downloads nothing) and the same settings:
LoRA rank 4 / alpha 1, AdamW at 1e-4 with a constant schedule, cached latents, 20 steps, seed 1234. Each run is
the program as a person starts it (``python -m lib_trainer.trainer config.toml``; ``python train_network.py
...``), in a fresh process, launch to exit.

What is measured, and how:

* per-step times: ours from the ``time`` of each ``step`` event (``log_every_n_steps = 1``: each is written
  after the step's loss reached the host); sd-scripts' from the wall time of each step's ``loss/current`` scalar in
  its TensorBoard event file (``--log_with tensorboard``; logged after ``loss.item()``, so also after the step's
  work finished on a GPU). Its tqdm bar is not used: tqdm updates before that sync and drops updates closer than
  0.1 s. ``s_per_step_median`` is the median of the step durations ``t[i] - t[i-1]`` for steps 5..20.
* ``first_step_s``: launch to the end of step 1; ``run_s``: launch to process exit (saving the LoRA included).
* memory: the process tree (the program and any worker it starts) is polled every 0.2 s from /proc:
  ``peak_rss_mib`` is the peak of the summed VmRSS (shared pages counted once per process), ``peak_pss_mib`` that
  of the summed Pss (polled every second: reading it walks the page tables); ``max_rss_mib`` is the kernel's
  exact peak RSS of the largest single process (wait4). On CUDA, ``peak_vram_mib`` is torch's
  max_memory_allocated in the program's own process (a sitecustomize hook enabled by an environment variable
  writes it at exit) and ``peak_vram_reserved_mib`` the allocator's peak; ``peak_gpu_used_mib`` is nvidia-smi's
  memory.used above what it was before the launch (context included).
* ``cpu_s``: the program's CPU time, user + system, over all its threads (wait4; with its waited-for children):
  on a busy machine it moves far less than the wall times.
* ``loss_mean`` (mean of the per-step losses), ``loadavg_1m`` before and after each run.
* the output LoRA's tensor count and whether both sides wrote the same key names.

Per pair the ratios are ours / sd-scripts' (below 1: ours is faster or smaller); the summary gives their median,
min and max over the pairs. On a busy machine the ratio pair by pair is the figure that counts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import bench_env  # noqa: F401  (paths and offline settings before any of our imports)

ROOT = bench_env.ROOT
HOOKS_DIR = Path(__file__).resolve().with_name("vs_hooks")
TORCHVISION_SHIM = Path(__file__).resolve().with_name("sd_scripts_shim")
DATASET_PICTURES = 8
DATASET_REPEATS = 10
SEED = 1234
TIMED_FROM_STEP = 5  # step durations 5..N enter the median (the first steps select kernels and fill caches)
POLL_S = 0.2
PSS_POLL_S = 1.0
# where sd-scripts' tokenizer_cache_dir looks for each tokenizer (the hub id with "/" replaced by "_")
SDS_TOKENIZER_DIRS = {
    "sd1": ["openai_clip-vit-large-patch14"],
    "sdxl": ["openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"],
}


@dataclass
class Case:
    name: str
    arch: str  # sd1 | sdxl
    resolution: int
    batch_size: int
    precision: str  # fp32 | fp16 | bf16
    gradient_checkpointing: bool = False
    train_text_encoder: bool = True
    steps: int = 20
    network_dim: int = 4
    network_alpha: float = 1.0
    cuda: bool = False  # a GPU case (skipped without CUDA unless asked for by name)


CASES = {c.name: c for c in [
    Case("cpu-sd15-64", "sd1", 64, 1, "fp32"),
    Case("cpu-sd15-128", "sd1", 128, 1, "fp32"),
    Case("cpu-sdxl-64", "sdxl", 64, 1, "fp32", train_text_encoder=False),
    Case("gpu-sd15-512-b1-fp16", "sd1", 512, 1, "fp16", cuda=True),
    Case("gpu-sd15-512-b4-fp16", "sd1", 512, 4, "fp16", cuda=True),
    Case("gpu-sdxl-1024-b1-bf16-gc", "sdxl", 1024, 1, "bf16", gradient_checkpointing=True, train_text_encoder=False, cuda=True),
    Case("gpu-sdxl-1024-b1-fp16-gc", "sdxl", 1024, 1, "fp16", gradient_checkpointing=True, train_text_encoder=False, cuda=True),
]}
DEFAULT_CPU_CASES = ["cpu-sd15-64"]
DEFAULT_GPU_CASES = ["gpu-sd15-512-b1-fp16", "gpu-sd15-512-b4-fp16", "gpu-sdxl-1024-b1-bf16-gc"]


def log(message: str) -> None:
    print(f"[vs_sd_scripts] {message}", file=sys.stderr, flush=True)


# ---- inputs -------------------------------------------------------------------------------------------------------

def write_inputs(work: Path, case: Case, checkpoints: dict[str, Path], given: dict[str, Path]) -> dict[str, Path]:
    """The checkpoint (once per arch), the dataset (once per resolution) and the tokenizer folder of a case."""
    import train_speed

    if case.arch not in checkpoints:
        if case.arch in given:
            checkpoints[case.arch] = given[case.arch]
        else:
            t0 = time.perf_counter()
            path = train_speed.write_full_checkpoint(case.arch, work / f"full-{case.arch}.safetensors")
            log(f"wrote {path.name} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
            checkpoints[case.arch] = path
    data = work / f"data-{case.resolution}"
    if not data.is_dir():
        train_speed.write_dataset(data, case.resolution, count=DATASET_PICTURES, repeats=DATASET_REPEATS)
    tokenizers = work / "tokenizers"
    if not all((tokenizers / name).is_dir() for name in SDS_TOKENIZER_DIRS[case.arch]):
        from lib_trainer.trainer.models import base_configs
        from lib_trainer.trainer.tokenizer import load_clip_tokenizer

        cfg = base_configs(case.arch)
        pads = [cfg["tokenizer"]["pad_token"]] + ([cfg["tokenizer_2"]["pad_token"]] if case.arch == "sdxl" else [])
        for name, pad in zip(SDS_TOKENIZER_DIRS[case.arch], pads):
            load_clip_tokenizer(pad).save_pretrained(str(tokenizers / name))
    return {"checkpoint": checkpoints[case.arch], "data": data, "tokenizers": tokenizers}


def ours_command(case: Case, inputs: dict, out: Path, python: str, deps: Path, root: Path) -> tuple[list[str], dict, Path]:
    import toml

    config = {
        "pretrained_model_name_or_path": str(inputs["checkpoint"]),
        "train_data_dir": str(inputs["data"]),
        "resolution": f"{case.resolution},{case.resolution}",
        "caption_extension": ".txt",
        "cache_latents": True,
        "network_module": "networks.lora",
        "network_dim": case.network_dim,
        "network_alpha": case.network_alpha,
        "network_train_unet_only": not case.train_text_encoder,
        "learning_rate": 1e-4,
        "optimizer_type": "AdamW",
        "lr_scheduler": "constant",
        "train_batch_size": case.batch_size,
        "max_train_steps": case.steps,
        "seed": SEED,
        "mixed_precision": {"fp32": "no"}.get(case.precision, case.precision),
        "save_precision": "fp16",
        "gradient_checkpointing": case.gradient_checkpointing,
        "output_dir": str(out / "lora"),
        "output_name": "ours",
        "log_every_n_steps": 1,
    }
    if case.arch == "sdxl":
        config["no_half_vae"] = True
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.toml"
    config_path.write_text(toml.dumps(config), encoding="utf-8")
    env = _base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS_DIR), str(deps), str(root)])
    env["PYTHONNOUSERSITE"] = "1"
    return [python, "-m", "lib_trainer.trainer", str(config_path)], env, root


def sds_command(case: Case, inputs: dict, out: Path, sds_dir: Path, python: str, extra_path: list[str],
                workers: int) -> tuple[list[str], dict, Path]:
    script = "sdxl_train_network.py" if case.arch == "sdxl" else "train_network.py"
    argv = [
        python, script,
        "--pretrained_model_name_or_path", str(inputs["checkpoint"]),
        "--train_data_dir", str(inputs["data"]),
        "--resolution", f"{case.resolution},{case.resolution}",
        "--caption_extension", ".txt",
        "--cache_latents",
        "--network_module", "networks.lora",
        "--network_dim", str(case.network_dim),
        "--network_alpha", str(case.network_alpha),
        "--learning_rate", "1e-4",
        "--optimizer_type", "AdamW",
        "--lr_scheduler", "constant",
        "--train_batch_size", str(case.batch_size),
        "--max_train_steps", str(case.steps),
        "--seed", str(SEED),
        "--mixed_precision", {"fp32": "no"}.get(case.precision, case.precision),
        "--save_precision", "fp16",
        "--output_dir", str(out / "lora"),
        "--output_name", "sds",
        "--sdpa",  # PyTorch's scaled_dot_product_attention, as ours; xformers is not installed
        "--tokenizer_cache_dir", str(inputs["tokenizers"]),
        "--max_data_loader_n_workers", str(workers),
        "--log_with", "tensorboard",
        "--logging_dir", str(out / "logs"),
    ]
    if case.gradient_checkpointing:
        argv.append("--gradient_checkpointing")
    if not case.train_text_encoder:
        argv += ["--network_train_unet_only", "--cache_text_encoder_outputs"]  # ours caches them by itself then
    if case.arch == "sdxl":
        argv.append("--no_half_vae")  # ours keeps SDXL's VAE in fp32 always
    env = _base_env()
    path = [str(HOOKS_DIR)] + extra_path
    if not _imports(python, "torchvision.transforms", env, sds_dir, path):
        path.append(str(TORCHVISION_SHIM))
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["COLUMNS"] = "240"  # rich wraps its log lines at the terminal width
    return argv, env, sds_dir


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", TQDM_MININTERVAL="0")
    return env


def _split(value: Optional[str]) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


def _imports(python: str, module: str, env: dict, cwd: Path, path: list[str]) -> bool:
    env = dict(env, PYTHONPATH=os.pathsep.join(path))
    probe = subprocess.run([python, "-c", f"import {module}"], env=env, cwd=cwd, capture_output=True)
    return probe.returncode == 0


# ---- one monitored run --------------------------------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _children(pid: int) -> Optional[list[int]]:
    """The children of pid from /proc/PID/task/*/children (cheap), or None where the kernel has no such files."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                found.extend(int(p) for p in fh.read().split())
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    children_map: Optional[dict[int, list[int]]] = None
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        children = _children(p) if children_map is None else None
        if children is None:  # scan all of /proc once (the polling costs more CPU then)
            children_map = children_map or _children_map()
            children = children_map.get(p, [])
        todo.extend(children)
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryMonitor(threading.Thread):
    """Polls the process tree's summed RSS and PSS (and the GPU's memory.used) until stopped."""

    def __init__(self, pid: int, gpu: bool) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.gpu = gpu and shutil.which("nvidia-smi") is not None
        self.peak_rss_kib = 0
        self.peak_rss_at = 0.0  # when (time.time()) the summed RSS peaked
        self.peak_pss_kib = 0
        self.max_processes = 0
        self.gpu_base_mib = self._gpu_used() if self.gpu else None
        self.peak_gpu_mib = 0.0
        self._stop_event = threading.Event()

    def _gpu_used(self) -> Optional[float]:
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=10).stdout
            return float(text.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def run(self) -> None:
        next_gpu = next_pss = 0.0
        while not self._stop_event.is_set():
            pids = _tree(self.pid)
            self.max_processes = max(self.max_processes, len(pids))
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
            if rss > self.peak_rss_kib:
                self.peak_rss_kib, self.peak_rss_at = rss, time.time()
            if time.monotonic() >= next_pss:  # smaps_rollup walks the page tables: ~10 ms for a 6 GiB process
                self.peak_pss_kib = max(self.peak_pss_kib, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
                next_pss = time.monotonic() + PSS_POLL_S
            if self.gpu and time.monotonic() >= next_gpu:
                used = self._gpu_used()
                if used is not None and self.gpu_base_mib is not None:
                    self.peak_gpu_mib = max(self.peak_gpu_mib, used - self.gpu_base_mib)
                next_gpu = time.monotonic() + 0.5
            self._stop_event.wait(POLL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_monitored(argv: list[str], env: dict, cwd: Path, log_path: Path, gpu: bool, timeout_s: float,
                  record_imports: bool = False) -> dict:
    """Run a program to its end with its output to log_path; times, memory and exit code (and, with
    record_imports, the top-level modules it imported, with their versions)."""
    peak_file = log_path.with_name("cuda_peak.json")
    modules_file = log_path.with_name("modules.json")
    env = dict(env, TRAIN_TOOLS_BENCH_CUDA_PEAK_FILE=str(peak_file))
    if record_imports:
        env["TRAIN_TOOLS_BENCH_MODULES_FILE"] = str(modules_file)
    load_before = os.getloadavg()[0]
    with open(log_path, "wb") as log_fh:
        t_launch = time.time()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        monitor = MemoryMonitor(proc.pid, gpu)
        monitor.start()
        deadline = time.monotonic() + timeout_s
        status, usage = None, None
        while status is None:
            pid, wait_status, wait_usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, usage = wait_status, wait_usage
            elif time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
            else:
                time.sleep(0.05)
        t_exit = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
        monitor.stop()
    row: dict[str, Any] = {
        "exit_code": proc.returncode, "t_launch": t_launch, "run_s": round(t_exit - t_launch, 3),
        "peak_rss_mib": round(monitor.peak_rss_kib / 1024, 1), "peak_pss_mib": round(monitor.peak_pss_kib / 1024, 1),
        "peak_rss_at_s": round(monitor.peak_rss_at - t_launch, 1) if monitor.peak_rss_at else None,
        "max_rss_mib": round(usage.ru_maxrss / 1024, 1), "processes": monitor.max_processes,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    if monitor.gpu:
        row["peak_gpu_used_mib"] = round(monitor.peak_gpu_mib, 1)
    if peak_file.is_file():
        peak = json.loads(peak_file.read_text())
        row["peak_vram_mib"] = round(peak["max_allocated"] / 2**20, 1)
        row["peak_vram_reserved_mib"] = round(peak["max_reserved"] / 2**20, 1)
    if record_imports and modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        row["imports"] = {name: m["version"] for name, m in modules.items()}
    if time.monotonic() > deadline:
        row["error"] = f"killed after {timeout_s:.0f} s"
    return row


# ---- reading what each side logged --------------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; len-delimited values are bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield number, wire, value


def read_tfevents(path: Path) -> list[tuple[float, int, str, float]]:
    """(wall_time, step, tag, simple_value) of every scalar in a TensorBoard event file (TFRecord of Event
    messages: wall_time = 1 (double), step = 2, summary = 5 -> value = 1 -> tag = 1, simple_value = 2 (float))."""
    data = path.read_bytes()
    out: list[tuple[float, int, str, float]] = []
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        record = data[i + 12:i + 12 + n]
        i += 12 + n + 4
        wall, step, summary = 0.0, 0, None
        for number, wire, value in _fields(record):
            if number == 1 and wire == 1:
                (wall,) = struct.unpack("<d", value)
            elif number == 2 and wire == 0:
                step = value
            elif number == 5 and wire == 2:
                summary = value
        if summary is None:
            continue
        for number, wire, value in _fields(summary):
            if number != 1 or wire != 2:
                continue
            tag, scalar = None, None
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 2:
                    tag = v2.decode("utf-8", "replace")
                elif n2 == 2 and w2 == 5:
                    (scalar,) = struct.unpack("<f", v2)
            if tag is not None and scalar is not None:
                out.append((wall, step, tag, scalar))
    return out


def ours_steps(log_path: Path) -> tuple[list[tuple[int, float, float]], dict, list[str]]:
    """(step, time, loss) of every step event, the start event, and error messages, from the trainer's stdout."""
    steps, start, errors = [], {}, []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind = event.get("event")
        if kind == "step":
            steps.append((int(event["step"]), float(event["time"]), float(event["loss"])))
        elif kind == "start":
            start = event
        elif kind == "error":
            errors.append(str(event.get("message")))
    return steps, start, errors


_SDS_MODULES = re.compile(r"create LoRA for (Text Encoder(?: \d)?|U-Net):\s+(\d+)\s+modules")


def sds_steps(out: Path, log_path: Path) -> tuple[list[tuple[int, float, float]], dict]:
    files = sorted((out / "logs").rglob("events.out.tfevents.*"))
    rows = [r for f in files for r in read_tfevents(f) if r[2] == "loss/current"]
    steps = sorted((step, wall, value) for wall, step, _, value in rows)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    modules = {m.group(1): int(m.group(2)) for m in _SDS_MODULES.finditer(re.sub(r"\s+", " ", text))}
    return steps, {"lora_modules": modules}


def step_stats(steps: list[tuple[int, float, float]], t_launch: float) -> dict:
    if not steps:
        return {"steps": 0}
    times = {s: t for s, t, _ in steps}
    durations = [times[s] - times[s - 1] for s in sorted(times) if s >= TIMED_FROM_STEP and s - 1 in times]
    return {
        "steps": max(times),
        "first_step_s": round(times[min(times)] - t_launch, 3),
        "s_per_step_median": round(statistics.median(durations), 4) if durations else None,
        "timed_steps": len(durations),
        "loss_mean": round(statistics.fmean(v for _, _, v in steps), 5),
    }


def lora_keys(folder: Path) -> Optional[list[str]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    with safe_open(str(files[-1]), "pt") as fh:
        return sorted(fh.keys())


# ---- a pair -------------------------------------------------------------------------------------------------------

def run_side(side: str, case: Case, inputs: dict, work: Path, args, index: int) -> tuple[dict, Optional[list[str]]]:
    out = work / f"{case.name}-{side}-{index}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if side == "ours":
        argv, env, cwd = ours_command(case, inputs, out, args.ours_python, args.ours_deps, args.ours_root)
    else:
        argv, env, cwd = sds_command(case, inputs, out, args.sd_scripts, args.sd_scripts_python,
                                     args.sd_scripts_path, args.sd_scripts_workers)
    log_path = out / "output.log"
    row = run_monitored(argv, env, cwd, log_path, gpu=case.cuda, timeout_s=args.timeout,
                        record_imports=args.record_imports and index == 0)
    if side == "ours":
        steps, start, errors = ours_steps(log_path)
        row.update(step_stats(steps, row["t_launch"]))
        trained = {k: start[k] for k in ("trained", "trainable_parameters", "network_weights") if k in start}
        if trained:
            row["trained"] = trained
        if errors:
            row.setdefault("error", errors[0])
    else:
        steps, extra = sds_steps(out, log_path)
        row.update(step_stats(steps, row["t_launch"]))
        row.update(extra)
    if row["exit_code"] != 0 and "error" not in row:
        row["error"] = f"exit code {row['exit_code']}: " + _tail(log_path)
    if row.get("steps", 0) < case.steps and "error" not in row:
        row["error"] = f"only {row.get('steps', 0)} of {case.steps} steps were logged: " + _tail(log_path)
    keys = lora_keys(out / "lora")
    row["lora_tensors"] = len(keys) if keys is not None else None
    del row["t_launch"]
    if not args.keep:
        shutil.rmtree(out / "lora", ignore_errors=True)
    return row, keys


def _tail(path: Path, chars: int = 600) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:].replace("\r", "\n")


RATIO_FIELDS = {
    "s_per_step": "s_per_step_median", "peak_rss": "peak_rss_mib", "peak_pss": "peak_pss_mib",
    "max_rss": "max_rss_mib", "first_step": "first_step_s", "run": "run_s", "peak_vram": "peak_vram_mib",
    "peak_gpu_used": "peak_gpu_used_mib", "cpu": "cpu_s",
}


def ratios(ours: dict, sds: dict) -> dict:
    out = {}
    for name, key in RATIO_FIELDS.items():
        a, b = ours.get(key), sds.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            out[name] = round(a / b, 3)
    return out


def summarize(pairs: list[dict]) -> dict:
    summary: dict[str, Any] = {}
    for name in RATIO_FIELDS:
        values = [p["ratio"][name] for p in pairs if name in p.get("ratio", {})]
        if values:
            summary[name] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values),
                             "pairs": len(values)}
    for side in ("ours", "sd_scripts"):
        rows = [p[side] for p in pairs if not p[side].get("error")]
        summary[side] = {
            key: round(statistics.median(r[key] for r in rows), 4)
            for key in ("s_per_step_median", "first_step_s", "run_s", "cpu_s", "peak_rss_mib", "peak_pss_mib",
                        "max_rss_mib", "peak_vram_mib", "loss_mean")
            if rows and all(isinstance(r.get(key), (int, float)) for r in rows)
        }
    return summary


def run_case(case: Case, inputs: dict, work: Path, args) -> dict:
    pairs = []
    for index in range(args.pairs):
        pair: dict[str, Any] = {"pair": index + 1}
        keys = {}
        for side in ("ours", "sd_scripts"):
            log(f"{case.name} pair {index + 1}/{args.pairs}: {side} ...")
            row, keys[side] = run_side(side, case, inputs, work, args, index)
            pair[side] = row
            log(f"  {side}: {row.get('s_per_step_median')} s/step, first step {row.get('first_step_s')} s, run "
                f"{row['run_s']} s, peak RSS {row['peak_rss_mib']} MiB, loss {row.get('loss_mean')}"
                + (f", ERROR {row['error']}" if row.get("error") else ""))
        pair["ratio"] = ratios(pair["ours"], pair["sd_scripts"])
        if keys["ours"] is not None and keys["sd_scripts"] is not None:
            pair["same_lora_keys"] = keys["ours"] == keys["sd_scripts"]
            if not pair["same_lora_keys"]:
                pair["lora_key_differences"] = sorted(set(keys["ours"]) ^ set(keys["sd_scripts"]))[:10]
        pairs.append(pair)
    return {"case": dataclasses.asdict(case), "pairs": pairs, "summary": summarize(pairs)}


def environment(args) -> dict:
    import platform

    import torch

    def version(python: str, path: list[str], cwd: Path, code: str) -> Optional[str]:
        env = dict(_base_env(), PYTHONPATH=os.pathsep.join(path))
        done = subprocess.run([python, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
        return done.stdout.strip() or None

    versions = "import torch, diffusers, transformers, accelerate; print(torch.__version__, diffusers.__version__, transformers.__version__, accelerate.__version__)"
    commit_file = args.sd_scripts / "COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else None
    if commit is None and (args.sd_scripts / ".git").exists():
        commit = subprocess.run(["git", "-C", str(args.sd_scripts), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "ours": version(args.ours_python, [str(args.ours_deps), str(args.ours_root)], args.ours_root, versions),
        "sd_scripts": version(args.sd_scripts_python, args.sd_scripts_path + [str(TORCHVISION_SHIM)], args.sd_scripts, versions),
        "sd_scripts_commit": commit,
        "versions_are": "torch diffusers transformers accelerate",
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd-scripts", type=Path, required=True, help="an sd-scripts checkout (train_network.py inside)")
    parser.add_argument("--sd-scripts-python", required=True, help="the Python of sd-scripts' own venv")
    parser.add_argument("--sd-scripts-path", action="append", default=[], metavar="DIR",
                        help="folder put on sd-scripts' PYTHONPATH (repeatable; e.g. where its wheels were unpacked)")
    parser.add_argument("--sd-scripts-workers", type=int, default=0,
                        help="sd-scripts' --max_data_loader_n_workers (default 0: in-process, as ours)")
    parser.add_argument("--ours-python", default=sys.executable, help="the Python that runs our trainer")
    parser.add_argument("--ours-deps", type=Path, default=bench_env.DEPS, help="the trainer's private packages")
    parser.add_argument("--ours-root", type=Path, default=ROOT,
                        help="the Train Tools tree whose trainer runs (default this one; e.g. an export of another commit)")
    parser.add_argument("--case", action="append", default=[], choices=sorted(CASES),
                        help="repeatable; default: cpu-sd15-64 without CUDA, the issue's GPU cases with it")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs per case (ours, then sd-scripts)")
    parser.add_argument("--steps", type=int, help="override the steps of every case (at least 6)")
    parser.add_argument("--resolution", type=int, help="override the resolution of every case (smoke runs)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=FILE",
                        help="use this full-size checkpoint for sd1 or sdxl instead of generating one")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--work", type=Path, help="work folder (kept); default: a temporary folder, removed")
    parser.add_argument("--keep", action="store_true", help="keep the LoRA files in the work folder")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--record-imports", action="store_true",
                        help="the first pair's runs list the top-level modules they imported (with versions)")
    args = parser.parse_args(argv)
    args.sd_scripts = args.sd_scripts.resolve()
    if not (args.sd_scripts / "train_network.py").is_file():
        parser.error(f"{args.sd_scripts} has no train_network.py: give an sd-scripts checkout")

    json_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch

    names = args.case or (DEFAULT_GPU_CASES if torch.cuda.is_available() else DEFAULT_CPU_CASES)
    cases = []
    for name in names:
        case = dataclasses.replace(CASES[name])
        if args.steps:
            case.steps = max(TIMED_FROM_STEP + 1, args.steps)
        if args.resolution:
            case.resolution = args.resolution
        cases.append(case)
    given = {}
    for item in args.checkpoint:
        arch, _, file = item.partition("=")
        given[arch] = Path(file).resolve()

    work = args.work or Path(tempfile.mkdtemp(prefix="vs_sd_scripts-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"environment": environment(args), "settings": {
        "dataset": f"{DATASET_PICTURES} pictures x {DATASET_REPEATS} repeats", "optimizer": "AdamW 1e-4 constant",
        "cache_latents": True, "seed": SEED, "pairs": args.pairs, "timed_steps_from": TIMED_FROM_STEP,
        "sd_scripts_workers": args.sd_scripts_workers,
    }, "cases": []}
    checkpoints: dict[str, Path] = {}
    try:
        for case in cases:
            inputs = write_inputs(work, case, checkpoints, given)
            result["cases"].append(run_case(case, inputs, work, args))
            _write(result, args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _write(result, args.out)
    json_out.write(json.dumps(result, indent=2) + "\n")
    json_out.flush()
    failed = any(p[side].get("error") for c in result["cases"] for p in c["pairs"] for side in ("ours", "sd_scripts"))
    return 1 if failed else 0


def _write(result: dict, out: Optional[Path]) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
