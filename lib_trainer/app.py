"""``python -m lib_trainer.app``: the Train Tools tab without a WebUI, on the standalone (diffusers) host.

    python -m lib_trainer.app [--workspace DIR] [--ckpt-dir DIR ...] [--host 127.0.0.1] [--port N] [--lang zh_CN]

Serves the same tab the WebUI shows, on loopback by default. Base models are the ``.safetensors`` / ``.ckpt``
files under ``--ckpt-dir`` (a WebUI's ``models/Stable-diffusion`` or ComfyUI's ``models/checkpoints``; default
``<workspace>/models/Stable-diffusion``). With no checkpoint at all it offers the embedded toy model
(``lib_trainer/demo/models/toy-sd1.safetensors``: an SD1 model pretrained on a toy world of coloured shapes, 64 px),
and writes the toy world's example dataset into ``<workspace>/examples/tt_star`` (12 pictures of a star the toy
model never saw, with captions), so a newcomer sees the whole flow — import, captions, training, preview — work
on a CPU, with a base that draws the prompted colours on the prompted backgrounds. (A LoRA on it does not yet
learn the star reliably: ``bench/quality.py`` measures it.) ``--embedded tiny``, or a missing toy model file,
offers a random tiny model written into the workspace instead (faster; it shows the flow, its pictures are noise).

Training jobs keep running when the app stops; the next start reattaches to them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from lib_trainer.common.cuda import cuda_available
from lib_trainer.common.i18n import set_language, tr

WORKSPACE_ENV = "TRAIN_TOOLS_WORKSPACE"
DEFAULT_WORKSPACE = Path("outputs") / "train_tools"
TINY_MODEL_NAME = "tiny-sd1-embedded.safetensors"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_WAIT_S = 15.0  # after Ctrl-C: how long the image being drawn may take to stop


def use_trainer_deps() -> None:
    """Put the trainer's private dependencies (diffusers, lycoris, …) on this process's path: the standalone host
    draws with them. (The WebUI process never does this; only its trainer subprocess uses them.)"""
    from lib_trainer import deps

    folder = str(deps.default_deps_dir())
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)


def write_examples(root: Path) -> Path:
    """The toy world's concept pictures with their captions in ``<root>/examples/tt_star`` (once)."""
    from lib_trainer.demo import toy_world

    folder = root / "examples" / toy_world.TRIGGER
    if not folder.is_dir():
        toy_world.write_folder(folder, toy_world.concept_dataset(), prefix="star")
    return folder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.app",
                                     description=tr("Train Tools without a WebUI: the same tab, in your browser."))
    parser.add_argument("--workspace", metavar="DIR", default=os.environ.get(WORKSPACE_ENV) or str(DEFAULT_WORKSPACE),
                        help=tr("where projects, models and LoRAs are kept (default: ${env} or ./outputs/train_tools)",
                                env=WORKSPACE_ENV))
    parser.add_argument("--ckpt-dir", metavar="DIR", action="append", default=[],
                        help=tr("a folder of base models (.safetensors/.ckpt), e.g. a WebUI's models/Stable-diffusion; "
                                "may be given several times"))
    parser.add_argument("--lora-dir", metavar="DIR", default=None,
                        help=tr("where \"Use this checkpoint\" copies LoRAs (default: <workspace>/models/Lora)"))
    parser.add_argument("--embedded", choices=("toy", "tiny"), default="toy",
                        help=tr("the embedded model offered without checkpoints: the pretrained toy model (default) "
                                "or the random tiny one (faster, draws noise)"))
    parser.add_argument("--tiny", action="store_true",
                        help=tr("offer the embedded tiny model even when other checkpoints are found"))
    parser.add_argument("--host", default="127.0.0.1",
                        help=tr("address to listen on (default 127.0.0.1: only this computer)"))
    parser.add_argument("--port", type=int, default=None, help=tr("port (default: the first free one from 7860)"))
    parser.add_argument("--lang", default=os.environ.get("TRAIN_TOOLS_LANG"),
                        help=tr("language of the tab, e.g. zh_CN (default: English)"))
    parser.add_argument("--preset", default="character", help=tr("preset selected for new versions"))
    parser.add_argument("--device", default=None, help=tr("torch device for previews (default: cuda if present)"))
    return parser.parse_args(argv)


def make_context(args: argparse.Namespace) -> Tuple[Any, List[str]]:
    """The UIContext (workspace, standalone host, started job runner) and notes for the console."""
    use_trainer_deps()
    from lib_trainer.preview.tasks import PreviewTasks, after_training_hook
    from lib_trainer.hosts.standalone import StandaloneHost
    from lib_trainer.jobs.runner import JobRunner
    from lib_trainer.projects import Workspace
    from lib_trainer.ui.context import UIContext, UISettings

    notes: List[str] = []
    workspace = Workspace(Path(args.workspace).expanduser())
    ckpt_dirs = [Path(d).expanduser().resolve() for d in args.ckpt_dir] or \
        [workspace.root / "models" / "Stable-diffusion"]
    for folder in ckpt_dirs:
        if not folder.is_dir():
            notes.append(tr("Checkpoint folder {folder} does not exist.", folder=str(folder)))
    lora_dir = Path(args.lora_dir).expanduser().resolve() if args.lora_dir else workspace.root / "models" / "Lora"
    host = StandaloneHost(workspace.root, ckpt_dirs, lora_dir=lora_dir, outputs_dir=workspace.root,
                          device=args.device)
    if args.tiny or not host.checkpoints():
        from lib_trainer.demo.toy_model import MODEL_FILE as TOY_MODEL

        use_toy = args.embedded == "toy" and TOY_MODEL.is_file()
        tiny = TOY_MODEL if use_toy else workspace.root / "models" / TINY_MODEL_NAME
        if not tiny.is_file():
            from lib_trainer.demo.tiny_model import write_tiny_checkpoint

            write_tiny_checkpoint("sd1", tiny)
        host = StandaloneHost(workspace.root, ckpt_dirs, lora_dir=lora_dir, outputs_dir=workspace.root,
                              embedded_tiny=tiny, device=args.device)
        if use_toy:
            notes.append(tr("No base model found: offering the embedded toy model ({path}), a small SD1 model that "
                            "draws coloured shapes at 64 px. Use --ckpt-dir for real checkpoints.", path=str(tiny)))
        else:
            notes.append(tr("No base model found: offering the embedded tiny model ({path}). Use --ckpt-dir for real "
                            "checkpoints.", path=str(tiny)))
        if use_toy:
            notes.append(tr("Example pictures for it: {folder} (a star the toy model never saw, trigger word "
                            "tt_star). Import that folder into a project's dataset and train.",
                            folder=str(write_examples(workspace.root))))
    # Scanning reads each file's keys with the trainer's loader (torch, diffusers): do the slow first import now,
    # not inside the first page load, where it would stall the server for seconds.
    host.checkpoints()

    previews = PreviewTasks(host)
    runner = JobRunner(workspace, host, after_train=after_training_hook(previews)).start()
    cuda = cuda_available()
    if not cuda:
        notes.append(tr("No NVIDIA GPU: training runs on the CPU (slow except for the tiny model)."))
    local = args.host in LOOPBACK
    settings = UISettings(default_preset=args.preset, default_vram_gb=8 if cuda else 16,
                          import_roots=None if local else [str(workspace.root)])
    if not local:
        notes.append(tr("Listening on {host}: anyone who can reach it can use the tab. \"Import folder\" is limited "
                        "to the workspace.", host=args.host))
    return UIContext(workspace, host, runner, settings, previews=previews), notes


def build_app(ctx: Any) -> Any:
    """The page, nested the way the WebUI nests it: the tab's Blocks is built inside the Blocks that the
    extension's ``on_ui_tabs`` returns, and that one is rendered into the page's Blocks."""
    import gradio as gr

    from lib_trainer.ui import compat
    from lib_trainer.ui.tab import build_tab, css

    with gr.Blocks(analytics_enabled=False) as tab:
        build_tab(ctx)
    with gr.Blocks(title=tr("Train Tools"), css=css(), analytics_enabled=False) as demo:
        gr.Markdown(tr("## Train Tools"))
        tab.render()
    compat.enable_queue(demo)
    return demo


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_language(args.lang)
    ctx, notes = make_context(args)
    for note in notes:
        print(note, flush=True)
    demo = build_app(ctx)
    print(tr("Train Tools: workspace {path}", path=str(ctx.workspace.root)), flush=True)
    try:
        demo.launch(server_name=args.host, server_port=args.port, inbrowser=False, show_api=False,
                    allowed_paths=[str(ctx.workspace.root)])
    except KeyboardInterrupt:
        pass
    finally:
        # A preview being drawn stops (it resumes where it stopped with the next Preview); a running trainer goes
        # on and the next start reattaches to it.
        print(tr("Train Tools: stopping…"), flush=True)
        ctx.previews.stop_all(timeout=SHUTDOWN_WAIT_S)
        ctx.runner.shutdown(stop_running=False, timeout=SHUTDOWN_WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
