"""A txt2img by the WebUI itself (``StableDiffusionProcessingTxt2Img`` + ``process_images``), with the settings a
request needs (checkpoint, clip skip, no "add network to prompt") as the processing object's ``override_settings``
and every one of them put back afterwards, interruptible from another thread. No always-on script of another
extension runs: a preview shows the LoRA and nothing else."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Optional

from lib_trainer.common.i18n import tr
from lib_trainer.hosts.base import HostError, HostInterrupted, Txt2ImgRequest
from lib_trainer.hosts.webui.webui_modules import webui_module

JOB_NAME = "train_tools"


class Txt2ImgRun:
    """The txt2img in progress: Host.interrupt() marks it and tells the WebUI to stop."""

    def __init__(self) -> None:
        self.interrupted = False


def draw(request: Txt2ImgRequest, prompt: str, sampler: str, scheduler: Optional[str], checkpoint: Any,
         run: Txt2ImgRun, interrupt: Optional[threading.Event], outputs_dir: Path) -> tuple[Any, bool]:
    """One image by the WebUI's own txt2img; the caller holds the queue lock. (processed, interrupted)."""
    shared = webui_module("shared")
    processing = webui_module("processing")
    overrides: dict[str, Any] = {"CLIP_stop_at_last_layers": max(1, int(request.clip_skip or 1)),
                                 "sd_lora": "None", "lora_add_hashes_to_infotext": True}
    if checkpoint is not None:
        overrides["sd_model_checkpoint"] = checkpoint.title
    if sampler == "UniPC" and int(getattr(shared.opts, "uni_pc_order", 1)) > request.steps:
        overrides["uni_pc_order"] = int(request.steps)  # the WebUI refuses an order above the step count
    labels = getattr(shared.opts, "data_labels", {})
    overrides = {k: v for k, v in overrides.items() if k in labels}  # a setting the WebUI lacks is left out

    kwargs: dict[str, Any] = dict(
        prompt=prompt, negative_prompt=request.negative_prompt, seed=int(request.seed), subseed=-1,
        subseed_strength=0, sampler_name=sampler, batch_size=1, n_iter=1, steps=int(request.steps),
        cfg_scale=float(request.cfg_scale), width=int(request.width), height=int(request.height),
        restore_faces=False, tiling=False, do_not_save_samples=True, do_not_save_grid=True,
        override_settings=overrides, override_settings_restore_afterwards=True,
    )
    if scheduler is not None:
        kwargs["scheduler"] = scheduler
    p = processing.StableDiffusionProcessingTxt2Img(**kwargs)
    p.outpath_samples = getattr(shared.opts, "outdir_txt2img_samples", None) or str(outputs_dir)
    p.outpath_grids = getattr(shared.opts, "outdir_txt2img_grids", None) or str(outputs_dir)
    p.scripts = None  # no always-on scripts of other extensions: a preview shows the LoRA, nothing else

    # The WebUI puts back only the overridden options that were in opts.data before (1.10.1); one still at its
    # default (never saved) would keep our value, so every override is put back here as it was.
    data = shared.opts.data
    saved = {key: (key in data, data.get(key)) for key in overrides}
    state = shared.state
    done = threading.Event()
    watcher = None
    state.begin(job=JOB_NAME)
    try:
        if run.interrupted:  # Host.interrupt() came before begin() reset the flag
            state.interrupt()
        if interrupt is not None:
            def watch() -> None:
                while not done.wait(0.05):
                    if interrupt.is_set():
                        run.interrupted = True
                        state.interrupt()
                        return

            watcher = threading.Thread(target=watch, name="train-tools-interrupt", daemon=True)
            watcher.start()
        try:
            with contextlib.closing(p):
                processed = processing.process_images(p)
        except Exception as exc:
            if run.interrupted or state.interrupted:
                raise HostInterrupted(tr("Image generation was interrupted.")) from exc
            raise HostError(tr("The WebUI could not draw the image: {error}", error=f"{type(exc).__name__}: {exc}")) from exc
        interrupted = run.interrupted or bool(state.interrupted) or (interrupt is not None and interrupt.is_set())
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
        state.end()
        for key, (present, value) in saved.items():
            if not present:
                data.pop(key, None)
            elif data.get(key) != value:
                data[key] = value
    return processed, interrupted
