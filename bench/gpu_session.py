"""Every GPU measurement of issue 16 in one short session on a bare GPU machine (no network), JSON under $OUT.

Here, once (a machine with PyPI, and an sd-scripts checkout as bench/README.md makes it; the .venv's Python,
which finds CLIP's vocabulary in its open_clip):

    .venv/bin/python bench/gpu_session.py prepare --sd-scripts /tmp/sd-scripts/repo

fills the gitignored ``.whl/`` folder with ``bundle.tar.xz`` (the wheels unpacked into one site folder per side,
packed with xz: the wheels themselves no longer fit the device's 64 MiB beside the working tree): the wheels the GPU
machine lacks (for Python 3.12; ``--python-version``), in ``ours/`` (the exact pins of requirements-trainer.txt),
``sd-scripts/`` (sd-scripts' pins) and ``common/`` (what both take: a transformers that has wheels for Python 3.12
with its tokenizers, huggingface-hub and safetensors; accelerate), sd-scripts' own code in ``sd-scripts-src/`` (the
.py files at its top, library/, networks/; copied from the checkout, never committed) and CLIP's BPE vocabulary in
``clip/`` (the machine has no open_clip). Then, on the GPU machine (the device call: ``run(command="python3
bench/gpu_session.py run --budget-s 450", carry=[".whl"], timeout_s=540)``):

    python3 bench/gpu_session.py run [--budget-s 450]

1. unpacks the bundle into <work>/bundle (site-ours, site-sds, sd-scripts-src, clip);
2. draws full-size random SD1.5 and SDXL checkpoints on the GPU (``build_state_dict(..., device="cuda")``);
3. runs, in this order while the budget lasts (each step is skipped when its estimate no longer fits):
   bench/vs_sd_scripts.py for SD1.5 512 px batch 1 (fp16), SDXL 1024 px batch 1 (bf16, gradient checkpointing,
   UNet only) and SD1.5 512 px batch 4 (fp16) with one A/B pair each, bench/train_speed.py --preset gpu, then
   second pairs;
4. writes $OUT/gpu_session.json (every result so far, rewritten after each step) and $OUT/gpu_session.log.

``run --smoke`` is the dry run for a CPU machine: 64 px, 6 steps, the cpu-sd15-64 case and a tiny
train_speed run, with the wheels of ``--wheels`` (prepare them for this machine's Python with
``prepare --python-version 3.11 --wheels DIR``) or, with ``--no-install``, the packages already here
(``--sd-scripts-python`` then names sd-scripts' venv).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_WHEELS = ROOT / ".whl"

# What the GPU machine lacks or has in another version (its packages: /work/.library/device/KINDS.md), by who
# needs it. transformers 4.30.2 (the WebUI's) has no tokenizers wheel for Python 3.12, so ours takes sd-scripts'
# 4.54.1 there, with sd-scripts' safetensors 0.4.5 (4.54.1 needs >= 0.4.3) and accelerate 1.6.0 for both (the
# machine's 1.15 is untried with either; ours reads accelerate >= 0.21, and the CPU dry run uses 1.6.0 too);
# numpy, Pillow, einops, tensorboard, rich, opencv, torchvision... are the machine's own.
WHEELS = {
    "common": ["transformers==4.54.1", "tokenizers==0.21.4", "huggingface-hub==0.34.3", "safetensors==0.4.5",
               "accelerate==1.6.0"],
    "ours": [],  # the exact pins of requirements-trainer.txt (ours_pins), less the CUDA-only ones
    "sd-scripts": ["diffusers==0.32.1", "toml==0.10.2", "voluptuous==0.15.2", "imagesize==1.4.1"],
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
MAX_WHEELS_MIB = 60

# SDXL second: if the estimates are off and the budget runs short, the batch-4 SD1.5 pair is what is lost
VS_CASES = ["gpu-sd15-512-b1-fp16", "gpu-sdxl-1024-b1-bf16-gc", "gpu-sd15-512-b4-fp16"]
# rough seconds per step of the plan on an H100/H200 (launches, loading, caching dominate), to skip what no
# longer fits the budget instead of being killed half-way
ESTIMATE_S = {"install": 40, "weights-sd1": 25, "weights-sdxl": 60, "gpu-sd15-512-b1-fp16": 90,
              "gpu-sd15-512-b4-fp16": 100, "gpu-sdxl-1024-b1-bf16-gc": 170, "train_speed": 210}


def ours_pins(requirements: Path = ROOT / "requirements-trainer.txt") -> list[str]:
    """``name==version`` lines of the trainer's requirements, less those for a host kind ("when: ..."; bitsandbytes
    is not used here); the ranges below them (transformers>=4.30, ...) are the machine's or common/'s."""
    pins = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+==[^\s#;]+)", line)
        if match and "when:" not in line:
            pins.append(match.group(1))
    return pins


def log(message: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- prepare (here) -----------------------------------------------------------------------------------------------

def prepare(args) -> int:
    """The wheels, sd-scripts' code and CLIP's vocabulary in a staging folder, then .whl/bundle.tar.xz of them
    with the wheels already unpacked into each side's site folder: solid xz packs the Python sources far tighter
    than the wheels' per-file zip (about 2.5x), and the tree that travels to the GPU machine has a 64 MiB limit."""
    wheels: Path = args.staging or Path(tempfile.gettempdir()) / f"gpu_session_prepare-{args.python_version}"
    shutil.rmtree(wheels, ignore_errors=True)
    for group, specs in dict(WHEELS, ours=ours_pins()).items():
        folder = wheels / group
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               args.python_version, "--implementation", "cp", "-d", str(folder), *specs]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        log(f"{group}: {' '.join(specs)}")
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    src = wheels / "sd-scripts-src"
    shutil.rmtree(src, ignore_errors=True)
    sds = args.sd_scripts.resolve()
    if not (sds / "train_network.py").is_file():
        raise SystemExit(f"{sds} has no train_network.py: give an sd-scripts checkout")
    src.mkdir(parents=True)
    for file in sds.glob("*.py"):
        shutil.copy2(file, src / file.name)
    for folder in ("library", "networks"):
        shutil.copytree(sds / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    commit = (sds / "COMMIT").read_text().strip() if (sds / "COMMIT").is_file() else subprocess.run(
        ["git", "-C", str(sds), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (src / "COMMIT").write_text(commit + "\n")
    sys.path.insert(0, str(ROOT))
    from lib_trainer.trainer.tokenizer import BPE_FILE, find_bpe_vocab

    (wheels / "clip").mkdir(exist_ok=True)
    shutil.copy2(find_bpe_vocab(), wheels / "clip" / BPE_FILE)
    bundle = write_bundle(wheels, args.wheels)
    total = bundle.stat().st_size
    tree = travelling_tree_bytes()
    log(f"{bundle}: {total / 2**20:.1f} MiB (limit {MAX_WHEELS_MIB} MiB), sd-scripts {commit}; with the working tree "
        f"{(tree + total) / 2**20:.1f} MiB travel to the device (its limit: {DEVICE_TREE_MIB} MiB)")
    return 0 if total <= MAX_WHEELS_MIB * 2**20 and tree + total <= DEVICE_TREE_MIB * 2**20 else 1


DEVICE_TREE_MIB = 64


def travelling_tree_bytes() -> int:
    """Tracked and untracked-not-ignored files of this checkout: what the device call sends besides the carry."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())


SIDES = {"site-ours": ["common", "ours"], "site-sds": ["common", "sd-scripts"]}
BUNDLE = "bundle.tar.xz"


def unpack_wheel(wheel: Path, site: Path) -> None:
    """What pip install --target does for a wheel, less its scripts: the archive into site, with the contents of
    <name>.data/purelib and platlib moved to the top."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            parts = member.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = site.joinpath(*parts)
            if member.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def write_bundle(staging: Path, out_dir: Path) -> Path:
    for side, groups in SIDES.items():
        site = staging / side
        shutil.rmtree(site, ignore_errors=True)
        for group in groups:
            for wheel in sorted((staging / group).glob("*.whl")):
                unpack_wheel(wheel, site)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # the carried folder holds the bundle only
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    bundle = out_dir / BUNDLE
    with tarfile.open(bundle, "w:xz", preset=9) as tar:
        for name in (*SIDES, "sd-scripts-src", "clip"):
            tar.add(staging / name, arcname=name)
    return bundle


# ---- run (there) --------------------------------------------------------------------------------------------------

class Session:
    def __init__(self, args) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.out = Path(os.environ.get("OUT") or args.out_dir or (ROOT / "bench" / "results")).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"smoke": args.smoke, "steps": [], "skipped": [], "environment": {}}
        self.recorded_imports = False

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def fits(self, name: str) -> bool:
        need = 0 if self.args.smoke else ESTIMATE_S.get(name, 60)
        if self.left() < need:
            self.result["skipped"].append({"step": name, "needed_s": need, "left_s": round(self.left())})
            log(f"skip {name}: needs ~{need} s, {self.left():.0f} s left")
            self.save()
            return False
        return True

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "gpu_session.json").write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")

    def step(self, name: str, cmd: list[str], env: dict, json_file: Optional[Path] = None,
             timeout: Optional[float] = None) -> Optional[Any]:
        log(f"{name}: {' '.join(cmd)[:300]}")
        t0 = time.monotonic()
        record: dict[str, Any] = {"step": name}
        limit = max(30.0, min(timeout or self.left(), self.left()))
        with open(self.out / "gpu_session.log", "a", encoding="utf-8") as fh:
            fh.write(f"\n===== {name}: {' '.join(cmd)}\n")
            fh.flush()
            # its own process group, so that a step stopped at the budget takes its trainers with it
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=fh, text=True,
                                    start_new_session=True)
            try:
                stdout, _ = proc.communicate(timeout=limit)
                record["exit_code"] = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
                record["exit_code"] = None
                record["error"] = f"stopped after {limit:.0f} s (the session's budget)"
        record["seconds"] = round(time.monotonic() - t0, 1)
        data = None
        text = json_file.read_text() if json_file is not None and json_file.is_file() else stdout
        try:
            data = json.loads(text) if text and text.strip() else None
        except ValueError:
            record["stdout_tail"] = text[-2000:]
        if data is not None:
            record["result"] = data
        self.result["steps"].append(record)
        self.save()
        log(f"{name}: exit {record.get('exit_code')} in {record['seconds']} s")
        return data


def install(session: Session, wheels: Path) -> dict[str, str]:
    """pip install --no-index --no-deps --target for each side; returns the site folders."""
    sites = {"ours": session.work / "site-ours", "sd-scripts": session.work / "site-sds"}
    groups = {"ours": ["common", "ours"], "sd-scripts": ["common", "sd-scripts"]}
    for side, folder in sites.items():
        files = [str(f) for g in groups[side] for f in sorted((wheels / g).glob("*.whl"))]
        if not files:
            raise SystemExit(f"no wheels in {wheels}/{{{','.join(groups[side])}}}: run 'gpu_session.py prepare' first")
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check", "--target", str(folder), *files]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        session.result["steps"].append({"step": f"install-{side}", "seconds": round(time.monotonic() - t0, 1),
                                        "wheels": [Path(f).name for f in files]})
    session.save()
    return {side: str(folder) for side, folder in sites.items()}


def unpack_bundle(session: Session, bundle: Path) -> Path:
    """prepare's bundle into <work>/bundle: site-ours, site-sds (wheels already unpacked), sd-scripts-src, clip."""
    folder = session.work / "bundle"
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.monotonic()
    with tarfile.open(bundle, "r:xz") as tar:
        tar.extractall(folder, filter="data")
    session.result["steps"].append({"step": "unpack", "seconds": round(time.monotonic() - t0, 1),
                                    "bundle_mib": round(bundle.stat().st_size / 2**20, 1)})
    session.save()
    return folder


def environment(session: Session, python: str, env: dict) -> None:
    code = ("import json, torch, platform; print(json.dumps({'python': platform.python_version(), 'torch': "
            "torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name() if "
            "torch.cuda.is_available() else None, 'cudnn': torch.backends.cudnn.version()}))")
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    try:
        session.result["environment"].update(json.loads(done.stdout))
    except ValueError:
        session.result["environment"]["probe_error"] = done.stderr[-500:]
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True)
        session.result["environment"]["nvidia_smi"] = smi.stdout.strip()
    session.result["environment"]["cpu_count"] = os.cpu_count()
    session.save()


def run(args) -> int:
    session = Session(args)
    wheels: Path = args.wheels
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    base_env.pop("PYTHONPATH", None)
    if (wheels / BUNDLE).is_file() and not args.no_install:
        wheels = unpack_bundle(session, wheels / BUNDLE)  # site folders, sd-scripts' code, clip/
        sites = {"ours": str(wheels / "site-ours"), "sd-scripts": str(wheels / "site-sds")}
    elif args.no_install:
        sites = {"ours": str(args.ours_deps), "sd-scripts": None}
    else:
        sites = install(session, wheels)
    bpe = wheels / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if bpe.is_file():
        base_env["TRAIN_TOOLS_CLIP_BPE"] = str(bpe)
    sds_src = args.sd_scripts or (wheels / "sd-scripts-src")
    sds_python = args.sd_scripts_python or sys.executable
    py = sys.executable
    ours_env = dict(base_env, TRAIN_TOOLS_DEPS_DIR=sites["ours"])
    environment(session, py, ours_env)

    # full-size random weights, drawn on the GPU (smoke: SD1.5 only, on the CPU)
    checkpoints: dict[str, Path] = {}
    archs = ["sd1"] if args.smoke else ["sd1", "sdxl"]
    for arch in archs:
        path = Path(args.checkpoint_dir or session.work) / f"full-{arch}.safetensors"
        if not path.is_file():
            if not session.fits(f"weights-{arch}"):
                continue
            code = ("import sys; sys.path.insert(0, 'bench'); import bench_env; from pathlib import Path; "
                    f"import train_speed; train_speed.write_full_checkpoint({arch!r}, Path({str(path)!r}))")
            session.step(f"weights-{arch}", [py, "-c", code], ours_env)
        if path.is_file():
            checkpoints[arch] = path

    def vs(case: str, pairs: int) -> None:
        arch = "sdxl" if "sdxl" in case else "sd1"
        if arch not in checkpoints or not session.fits(case):
            return
        out = session.work / f"vs-{case}-{len(session.result['steps'])}.json"
        cmd = [py, "bench/vs_sd_scripts.py", "--sd-scripts", str(sds_src), "--sd-scripts-python", sds_python,
               "--case", case, "--pairs", str(pairs), "--checkpoint", f"{arch}={checkpoints[arch]}",
               "--ours-deps", sites["ours"], "--work", str(session.work / "vs"), "--out", str(out)]
        if sites["sd-scripts"]:
            cmd += ["--sd-scripts-path", sites["sd-scripts"]]
        if args.smoke:
            cmd += ["--steps", "6", "--resolution", "64"]
        if args.smoke or not session.recorded_imports:  # what each side imports, once (for the wheel list)
            cmd.append("--record-imports")
            session.recorded_imports = True
        session.step(f"vs:{case}", cmd, ours_env, json_file=out)
        shutil.rmtree(session.work / "vs", ignore_errors=True)

    def train_speed() -> None:
        if not session.fits("train_speed"):
            return
        out = session.work / "train_speed.json"
        cmd = [py, "bench/train_speed.py", "--out", str(out), "--tmp", str(session.work)]
        cmd += [f"--checkpoint={arch}={path}" for arch, path in checkpoints.items()]
        if args.smoke:
            cmd += ["--preset", "cpu-tiny", "--only", "tiny-sd1-64px-b1", "--steps", "6"]
        else:
            cmd += ["--preset", "gpu"]
        session.step("train_speed", cmd, ours_env, json_file=out)

    cases = ["cpu-sd15-64"] if args.smoke else VS_CASES
    for case in cases:
        vs(case, 1)
    train_speed()
    if not args.smoke:
        for case in cases:  # a second pair each while time is left: the pair-by-pair ratio is what counts
            vs(case, 1)
    session.save()
    failed = [s["step"] for s in session.result["steps"] if s.get("exit_code") not in (0, None) or s.get("error")]
    log(f"done in {time.monotonic() - session.t0:.0f} s; failed: {failed or 'none'}; skipped: "
        f"{[s['step'] for s in session.result['skipped']] or 'none'}")
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fill .whl/ here (needs PyPI and an sd-scripts checkout)")
    p.add_argument("--sd-scripts", type=Path, required=True)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="where the bundle goes (emptied first)")
    p.add_argument("--staging", type=Path, help="where the wheels are downloaded and unpacked (default: a /tmp folder)")
    r = sub.add_parser("run", help="measure (on the GPU machine)")
    r.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS,
                   help=f"prepare's folder ({BUNDLE}; or the wheels in common/, ours/, sd-scripts/, as before)")
    r.add_argument("--budget-s", type=float, default=450, help="wall-clock budget of the whole session")
    r.add_argument("--work", default="/tmp/gpu_session", help="scratch folder (checkpoints: 2 + 7 GB)")
    r.add_argument("--out-dir", help="where the JSON goes when $OUT is unset")
    r.add_argument("--checkpoint-dir", help="reuse full-*.safetensors found here")
    r.add_argument("--smoke", action="store_true", help="CPU dry run at a tiny size")
    r.add_argument("--no-install", action="store_true", help="use the packages already here")
    r.add_argument("--ours-deps", type=Path, default=ROOT / "trainer_deps", help="with --no-install")
    r.add_argument("--sd-scripts", type=Path, help="default: <wheels>/sd-scripts-src")
    r.add_argument("--sd-scripts-python", help="default: this Python")
    args = parser.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
