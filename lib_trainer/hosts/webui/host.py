"""The WebUI host: AUTOMATIC1111 1.10.x and Forge, running inside the WebUI process.

With the rest of ``hosts/webui/`` (``webui_modules``, ``flavors``, ``txt2img``, ``loras``, ``taggers``) the only code of
Train Tools that reaches the WebUI's ``modules`` (and its built-in Lora extension's ``networks``). Everything is
looked up inside the methods, so importing this costs nothing and the WebUI's own start-up order is never
disturbed.

It uses the WebUI's public extension API: ``sd_models.checkpoints_list`` / ``list_models``, ``unload_model_weights``
and ``send_model_to_device``, ``StableDiffusionProcessingTxt2Img`` + ``process_images`` under
``call_queue.queue_lock`` (the lock the WebUI's own txt2img and API take, so a person's generation and ours take
turns per image), ``shared.state`` for interrupts, ``sd_samplers.all_samplers``, ``shared.sd_upscalers``,
``modules.deepbooru``, ``shared.interrogator``, the WD14 tagger extension's interrogators when it is installed, and
the Lora extension's network list. Facts measured on a real 1.10.1 that shape it:

- ``unload_model_weights()`` only moves the model to CPU RAM and ``send_model_to_device()`` brings it back; Forge's
  unload frees everything and its models come back by themselves. Those differences live in :class:`_Flavor`.
- ``<lora:NAME:w>`` resolves a basename (or ``ss_output_name``) found recursively under the Lora folder, never a
  path, and Forge caches networks by file name: LoRA files are staged by :class:`LoraStaging` under unique,
  content-addressed names and referenced by those names in the prompt. ``cmd_opts`` and the Lora extension's
  globals are only read, never changed.
- The WebUI skips a ``<lora:…>`` it cannot load and still draws, so every request is checked afterwards: the
  network must appear in the infotext's "Lora hashes", no "Lora not found" / "Networks with errors" comment may
  name it, and (A1111) every layer of the file must have matched the checkpoint.
- Settings a request needs (checkpoint, clip skip, no "add network to prompt") go through the processing object's
  ``override_settings``, which the WebUI restores after the image.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Optional

from lib_trainer.common.i18n import tr
from lib_trainer.hosts.base import (CheckpointInfo, Host, HostError, HostInterrupted, LoraStaging, Txt2ImgRequest,
                                    Txt2ImgResult, check_request, lora_prompt)
from lib_trainer.hosts.checkpoint_files import checkpoint_facts
from lib_trainer.hosts.webui.flavors import detect_flavor
from lib_trainer.hosts.webui.loras import WebUILoras
from lib_trainer.hosts.webui.webui_modules import webui_module
from lib_trainer.hosts.webui.taggers import WebUITaggers
from lib_trainer.hosts.webui.txt2img import Txt2ImgRun, draw


class WebUIHost(WebUITaggers, WebUILoras, Host):
    """The host inside a running AUTOMATIC1111 1.10 / Forge WebUI. Create it once the WebUI has started (in
    ``on_app_started`` or later), never at import time of a script."""

    def __init__(self) -> None:
        self._flavor = detect_flavor()
        self.name = self._flavor.name
        self._state_lock = threading.Lock()  # guards _running and _released
        self._scan_lock = threading.Lock()
        self._running: Optional[Txt2ImgRun] = None
        self._released = False
        self._facts_cache: dict[tuple[str, int, int], tuple[str, Optional[int]]] = {}
        self._staging: Optional[LoraStaging] = None
        self._wd14_refreshed = False

    def checkpoints(self, refresh: bool = False) -> list[CheckpointInfo]:
        sd_models = webui_module("sd_models")
        with self._scan_lock:
            if refresh:
                shared = webui_module("shared")
                refresh_checkpoints = getattr(shared, "refresh_checkpoints", None)
                (refresh_checkpoints or sd_models.list_models)()
            infos = list(sd_models.checkpoints_list.values())
        listing = []
        for info in infos:
            arch, resolution = self._facts(info.filename)
            listing.append(CheckpointInfo(title=info.title, path=os.path.abspath(info.filename), arch=arch,
                                          hash=getattr(info, "shorthash", None), resolution=resolution))
        return listing

    def _facts(self, filename: str) -> tuple[str, Optional[int]]:
        """(architecture, native resolution) of a checkpoint, read once per file version."""
        path = Path(filename)
        try:
            st = path.stat()
        except OSError:
            return "unknown", None
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        facts = self._facts_cache.get(key)
        if facts is None:
            facts = self._facts_cache[key] = checkpoint_facts(path)
        return facts

    def _arch(self, filename: str) -> str:
        return self._facts(filename)[0]

    def _checkpoint(self, wanted: Optional[str]) -> Any:
        """The WebUI's CheckpointInfo for a path or title (None: the WebUI's current one)."""
        if wanted is None:
            return None
        sd_models = webui_module("sd_models")
        absolute = os.path.abspath(wanted)
        infos = list(sd_models.checkpoints_list.values())
        for info in infos:
            if os.path.abspath(info.filename) == absolute:
                return info
        found = sd_models.checkpoint_aliases.get(wanted)
        if found is None:
            # a title seen before the WebUI hashed the file ("x.safetensors" → "x.safetensors [0123456789]")
            bare = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", wanted)
            found = next((i for i in infos if re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", i.title) == bare), None)
        if found is None:
            raise HostError(tr("Checkpoint not found: {name}", name=wanted))
        return found

    def release_gpu(self) -> None:
        with self._queue_lock():
            with self._state_lock:
                if self._released:
                    return
                self._released = True
            self._flavor.release()

    def restore_gpu(self) -> None:
        with self._queue_lock():
            self._bring_back()

    def _bring_back(self) -> None:
        """restore_gpu's work; the caller holds the queue lock."""
        with self._state_lock:
            if not self._released:
                return
            self._released = False
        self._flavor.restore()

    @staticmethod
    def _queue_lock():
        return webui_module("call_queue").queue_lock

    def samplers(self) -> list[str]:
        return [s.name for s in webui_module("sd_samplers").all_samplers]

    def _sampler(self, wanted: str) -> tuple[str, Optional[str]]:
        """(sampler, scheduler) for a sampler name as the WebUI spells it, an alias, or a 1.9-style
        "DPM++ 2M Karras"."""
        sd_samplers = webui_module("sd_samplers")
        by_name = {s.name: s for s in sd_samplers.all_samplers}
        if wanted in by_name:
            return wanted, None
        for sampler in by_name.values():
            if wanted.lower() in (a.lower() for a in (getattr(sampler, "aliases", None) or [])):
                return sampler.name, None
        split = getattr(sd_samplers, "get_sampler_and_scheduler", None)
        if split is not None:
            name, scheduler = split(wanted, None, convert_automatic=False)
            if name in by_name and wanted.startswith(name + " "):
                return name, scheduler
        raise HostError(tr("Unknown sampler {name}; this host has: {names}", name=wanted,
                           names=", ".join(by_name)))

    def interrupt(self) -> None:
        with self._state_lock:
            run = self._running
            if run is None:
                return
            run.interrupted = True
        webui_module("shared").state.interrupt()

    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        check_request(request)
        sampler, scheduler = self._sampler(request.sampler)
        if interrupt is not None and interrupt.is_set():
            raise HostInterrupted(tr("Image generation was interrupted."))
        checkpoint = self._checkpoint(request.checkpoint)
        staged = self._stage(request.loras, checkpoint)
        # Appended without spaces: the WebUI cuts the tags out of the prompt it writes into the infotext, which
        # then reads exactly as requested.
        prompt = request.prompt + "".join(lora_prompt([(name, spec.weight)]) for spec, name in staged)

        with self._queue_lock():
            run = Txt2ImgRun()
            with self._state_lock:
                self._running = run
            try:
                self._bring_back()  # txt2img works after release_gpu(), as the protocol promises
                processed, interrupted = draw(request, prompt, sampler, scheduler, checkpoint, run, interrupt,
                                                self.outputs_dir())
                if interrupted or not processed.images:
                    raise HostInterrupted(tr("Image generation was interrupted."))
                applied = self._check_loras(processed, staged)
            finally:
                with self._state_lock:
                    self._running = None
        image = processed.images[0]
        infotext = processed.infotexts[0] if processed.infotexts else processed.info
        image.info["parameters"] = infotext
        return Txt2ImgResult(image=image, infotext=infotext, seed=int(processed.seed), loras_applied=applied)

    def _upscaler_data(self) -> list[Any]:
        return [u for u in (webui_module("shared").sd_upscalers or []) if u.name and u.name != "None"]

    def upscalers(self) -> list[str]:
        return [u.name for u in self._upscaler_data()]

    def upscale(self, image, upscaler: str, scale: float):
        found = next((u for u in self._upscaler_data() if u.name == upscaler), None)
        if found is None:
            raise HostError(tr("Unknown upscaler {name}; this host has: {names}", name=upscaler,
                               names=", ".join(self.upscalers()) or "-"))
        if not scale or scale <= 0:
            raise HostError(tr("The upscale factor must be positive (got {scale}).", scale=scale))
        with self._queue_lock():
            try:
                result = found.scaler.upscale(image.convert("RGB"), float(scale), found.data_path)
            except Exception as exc:
                raise HostError(tr("Upscaler {name} failed: {error}", name=upscaler,
                                   error=f"{type(exc).__name__}: {exc}")) from exc
        wanted = (round(image.width * scale), round(image.height * scale))
        if result.size != wanted:  # the WebUI rounds to multiples of 8
            from PIL import Image

            result = result.resize(wanted, Image.LANCZOS)
        return result

    def lora_dir(self) -> Path:
        shared = webui_module("shared")
        configured = getattr(shared.cmd_opts, "lora_dir", None)  # read only: never redirected
        path = Path(configured) if configured else self._models_path() / "Lora"
        path = Path(os.path.abspath(path))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def outputs_dir(self) -> Path:
        shared = webui_module("shared")
        chosen = getattr(shared.opts, "outdir_samples", "") or ""
        if not chosen:
            paths = webui_module("paths")
            chosen = getattr(paths, "default_output_dir", None) or os.path.join(paths.data_path, "outputs")
        path = Path(os.path.abspath(chosen))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def send_to_txt2img(self, prompt: str) -> bool:
        """The WebUI has no server-side way to fill the txt2img prompt box: the tab does it in the browser."""
        return False
