"""What Train Tools adds to the WebUI's start-up: executing scripts/train_tools.py and its callbacks.

    .venv/bin/python bench/startup.py [--repeats 5] [--out FILE]

Prints ONE JSON document on stdout. Each repeat runs in a fresh Python process that first imports what a WebUI
process has already imported before extensions load (torch, gradio, fastapi, PIL, numpy — not counted), puts a
double of the WebUI's ``modules`` in place (tests/webui_double.py: script_callbacks, shared.opts, cmd_opts), and
then times:

* ``script_s``: executing scripts/train_tools.py (what the WebUI does for every extension script);
* ``settings_s``: its ``on_ui_settings`` callback;
* ``tab_s``: its ``on_ui_tabs`` callback — the dependency check, building the tab's gradio Blocks, and the job
  runner (workspace scan, reattach) — with a host that does nothing (the WebUI host's construction is only a
  flavour check);
* ``api_s``: ``on_app_started`` with ``--api`` (mounting the routes on a FastAPI app).

``total_s`` is their sum: the goal is under 0.3 s (``before_ui_s`` = script + settings is what a start-up pays
before any UI is built). ``heavy_modules`` lists modules that the
extension imported and the WebUI had not (diffusers, lycoris, cv2 … should never appear).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, ROOT)
import torch, gradio, fastapi, PIL.Image, numpy  # the WebUI has these loaded before extensions
from tests import webui_double
before = set(sys.modules)
double = webui_double.install({"api": True})
t0 = time.perf_counter()
script = webui_double.load_script()
t1 = time.perf_counter()
double.callbacks["ui_settings"][0]()
t2 = time.perf_counter()

from lib_trainer.common import runtime
from lib_trainer.hosts.base import Host
from lib_trainer.jobs.runner import JobRunner
from lib_trainer.projects import Workspace
from lib_trainer.ui.context import UIContext

class IdleHost(Host):
    name = "idle"
    def _none(self, *a, **k):
        return None
    release_gpu = restore_gpu = refresh_loras = interrupt = forget_preview_loras = _none
    def checkpoints(self, refresh=False): return []
    def samplers(self): return ["Euler a"]
    def taggers(self): return []
    def upscalers(self): return []
    def txt2img(self, *a, **k): raise RuntimeError
    def tag(self, *a, **k): raise RuntimeError
    def upscale(self, *a, **k): raise RuntimeError
    def lora_dir(self): return workspace_root
    def outputs_dir(self): return workspace_root
    def send_to_txt2img(self, prompt): return False

import pathlib
workspace_root = pathlib.Path(tempfile.mkdtemp())
def make():
    ws = Workspace(workspace_root / "train_tools")
    runner = JobRunner(ws, IdleHost())
    runner.start()
    return UIContext(ws, IdleHost(), runner)
script._create_context = make
t3 = time.perf_counter()
double.callbacks["ui_tabs"][0]()
t4 = time.perf_counter()
app = fastapi.FastAPI()
double.callbacks["app_started"][0](None, app)
t5 = time.perf_counter()
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before}
               & {"diffusers", "lycoris", "transformers", "cv2", "safetensors", "accelerate", "scipy", "sklearn"})
print(json.dumps({"script_s": t1 - t0, "settings_s": t2 - t1, "tab_s": t4 - t3, "api_s": t5 - t4,
                  "heavy_modules": heavy}))
runtime.process_singleton("webui_context", lambda: None).runner.shutdown()
"""


def one_run() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD.replace("ROOT", repr(str(ROOT)), 1)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"the start-up run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = [one_run() for _ in range(args.repeats)]
    keys = ("script_s", "settings_s", "tab_s", "api_s")
    median = {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}
    report = {
        "benchmark": "startup",
        "repeats": args.repeats,
        "median": median,
        "before_ui_s": round(median["script_s"] + median["settings_s"], 4),
        "total_s": round(sum(median.values()), 4),
        "goal_total_s": 0.3,
        "heavy_modules": sorted({m for r in runs for m in r["heavy_modules"]}),
        "runs": [{k: round(r[k], 4) for k in keys} for r in runs],
        "python": platform.python_version(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
