"""The WebUI host: AUTOMATIC1111 1.10.x and Forge, running inside the WebUI process.

This is the only module of Train Tools that imports the WebUI's ``modules`` (and its built-in Lora extension's
``networks``). Everything is imported inside the methods, so importing this module costs nothing and the WebUI's
own start-up order is never disturbed.

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

import contextlib
import importlib
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from lib_trainer.hosts.base import (
    CheckpointInfo,
    Host,
    HostError,
    HostInterrupted,
    LoraSpec,
    LoraStaging,
    TaggerInfo,
    Txt2ImgRequest,
    Txt2ImgResult,
    check_request,
    lora_prompt,
)
from lib_trainer.common.safetensors_header import read_header
from lib_trainer.hosts.checkpoint_files import detect_checkpoint_arch
from lib_trainer.common.i18n import tr

JOB_NAME = "train_tools"
WD14_DEFAULT_THRESHOLD = 0.35
# Tags of the WD14 models that are emoticons: their underscores are part of the tag (the tagger's own default list).
_KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
            "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
_ENV_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _webui(name: str) -> Any:
    """``modules.<name>`` of the running WebUI."""
    return importlib.import_module(f"modules.{name}")


def _lora_networks() -> Any:
    """The built-in Lora extension's ``networks`` module (A1111 ``extensions-builtin/Lora``, Forge
    ``sd_forge_lora``); None when the extension is disabled. The WebUI imported it while loading the extension's
    scripts, with the extension's folder briefly on sys.path, so it is looked up, not imported."""
    module = sys.modules.get("networks")
    return module if module is not None and hasattr(module, "list_available_networks") else None


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in _ENV_OFFLINE)


# ---- files, read without loading tensors -------------------------------------------------------------------------

def lora_module_names(path: Path) -> set[str]:
    """The layers a LoRA/LyCORIS .safetensors file patches (``lora_unet_…``, ``lora_te…``), from its header."""
    return {key.split(".", 1)[0] for key in read_header(path).tensor_names
            if "." in key and not key.startswith("bundle_emb.")}


def lora_family(path: Path) -> Optional[str]:
    """"sdxl" or "sd" (SD1/SD2) from a kohya-layout file's layer names; None when they do not tell."""
    try:
        names = lora_module_names(path)
    except (OSError, ValueError):
        return None
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names) or any(
            n.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_"))
            for n in names):
        return "sdxl"
    if any(n.startswith(("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_"))
           for n in names):
        return "sd"
    return None


_RE_LORA_HASHES = re.compile(r'(?:^|, )Lora hashes: ("(?:[^"\\]|\\.)*"|[^,\n]*)')


def parse_lora_hashes(infotext: str) -> dict[str, str]:
    """The "Lora hashes" field of an infotext: ``{network name: short hash}``."""
    last = infotext.rsplit("\n", 1)[-1]
    match = _RE_LORA_HASHES.search(last)
    if not match:
        return {}
    value = match.group(1)
    if value.startswith('"'):
        try:
            value = json.loads(value)
        except ValueError:
            value = value.strip('"')
    result = {}
    for item in value.split(","):
        name, sep, short = item.strip().rpartition(":")
        if sep and name.strip():
            result[name.strip()] = short.strip()
    return result


def _wd14_on_disk(interrogator: Any) -> bool:
    """A WD14-extension model that can run without a download: a local ONNX model or DeepDanbooru project, or
    a Hugging Face model already in the cache."""
    if getattr(interrogator, "local_model", None) or getattr(interrogator, "project_path", None):
        return True
    repo_id = getattr(interrogator, "repo_id", None)
    if not repo_id or not getattr(interrogator, "is_hf", True):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        cache_dir = getattr(_webui("shared").opts, "tagger_hf_cache_dir", None) or None  # picobyte's setting
        cached = try_to_load_from_cache(repo_id, getattr(interrogator, "model_path", None) or "model.onnx",
                                        cache_dir=cache_dir)
    except Exception:
        return False
    return isinstance(cached, str)


def _split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---- where A1111 and Forge differ --------------------------------------------------------------------------------

class _Flavor:
    """AUTOMATIC1111 1.10: the model moves to CPU RAM on release and back on restore."""

    name = "webui"

    def release(self) -> None:
        sd_models = _webui("sd_models")
        data = sd_models.model_data
        models = list(getattr(data, "loaded_sd_models", None) or [])
        if data.sd_model is not None and data.sd_model not in models:
            models.insert(0, data.sd_model)
        for model in models:
            # never call it without a model: shared.sd_model would load one first
            sd_models.unload_model_weights(model)

    def restore(self) -> None:
        sd_models = _webui("sd_models")
        model = sd_models.model_data.sd_model
        if model is not None:
            sd_models.send_model_to_device(model)

    def unfit_loras(self, names: dict[str, Path]) -> list[str]:
        """Names (of ``names``: staged name → file) whose layers did not all match the loaded checkpoint."""
        networks = _lora_networks()
        unfit = []
        for net in list(getattr(networks, "loaded_networks", []) or []):
            path = names.get(getattr(net, "name", None))
            modules = getattr(net, "modules", None)
            if path is None or modules is None:
                continue
            try:
                expected = len(lora_module_names(path))
            except (OSError, ValueError):
                continue
            if len(modules) < expected:
                unfit.append(net.name)
        return unfit


class _ForgeFlavor(_Flavor):
    """Forge: unloading frees every model, which Forge loads again by itself when it next draws; its Lora
    extension patches the model as a whole and keeps no per-layer record to check."""

    name = "forge"

    def release(self) -> None:
        _webui("sd_models").unload_model_weights()
        with contextlib.suppress(Exception):
            importlib.import_module("backend.memory_management").soft_empty_cache()

    def restore(self) -> None:
        pass  # Forge brings its models back on the next generation

    def unfit_loras(self, names: dict[str, Path]) -> list[str]:
        return []


def detect_flavor() -> _Flavor:
    sd_models = _webui("sd_models")
    if hasattr(sd_models, "forge_model_reload") or "modules_forge" in sys.modules:
        return _ForgeFlavor()
    return _Flavor()


# ---- the host ----------------------------------------------------------------------------------------------------

class _Run:
    """The txt2img in progress: Host.interrupt() marks it and tells the WebUI to stop."""

    def __init__(self) -> None:
        self.interrupted = False


class WebUIHost(Host):
    """The host inside a running AUTOMATIC1111 1.10 / Forge WebUI. Create it once the WebUI has started (in
    ``on_app_started`` or later), never at import time of a script."""

    def __init__(self) -> None:
        self._flavor = detect_flavor()
        self.name = self._flavor.name
        self._state_lock = threading.Lock()  # guards _running and _released
        self._scan_lock = threading.Lock()
        self._running: Optional[_Run] = None
        self._released = False
        self._arch_cache: dict[tuple[str, int, int], str] = {}
        self._staging: Optional[LoraStaging] = None
        self._wd14_refreshed = False

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoints(self, refresh: bool = False) -> list[CheckpointInfo]:
        sd_models = _webui("sd_models")
        with self._scan_lock:
            if refresh:
                shared = _webui("shared")
                refresh_checkpoints = getattr(shared, "refresh_checkpoints", None)
                (refresh_checkpoints or sd_models.list_models)()
            infos = list(sd_models.checkpoints_list.values())
        return [CheckpointInfo(title=info.title, path=os.path.abspath(info.filename), arch=self._arch(info.filename),
                               hash=getattr(info, "shorthash", None)) for info in infos]

    def _arch(self, filename: str) -> str:
        path = Path(filename)
        try:
            st = path.stat()
        except OSError:
            return "unknown"
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        arch = self._arch_cache.get(key)
        if arch is None:
            arch = self._arch_cache[key] = detect_checkpoint_arch(path)
        return arch

    def _checkpoint(self, wanted: Optional[str]) -> Any:
        """The WebUI's CheckpointInfo for a path or title (None: the WebUI's current one)."""
        if wanted is None:
            return None
        sd_models = _webui("sd_models")
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

    # ---- GPU --------------------------------------------------------------------------------------------------
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
        return _webui("call_queue").queue_lock

    # ---- samplers ---------------------------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        return [s.name for s in _webui("sd_samplers").all_samplers]

    def _sampler(self, wanted: str) -> tuple[str, Optional[str]]:
        """(sampler, scheduler) for a sampler name as the WebUI spells it, an alias, or a 1.9-style
        "DPM++ 2M Karras"."""
        sd_samplers = _webui("sd_samplers")
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

    # ---- txt2img ----------------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        with self._state_lock:
            run = self._running
            if run is None:
                return
            run.interrupted = True
        _webui("shared").state.interrupt()

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
            run = _Run()
            with self._state_lock:
                self._running = run
            try:
                self._bring_back()  # txt2img works after release_gpu(), as the protocol promises
                processed, interrupted = self._process(request, prompt, sampler, scheduler, checkpoint, run,
                                                       interrupt)
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

    def _process(self, request: Txt2ImgRequest, prompt: str, sampler: str, scheduler: Optional[str],
                 checkpoint: Any, run: _Run, interrupt: Optional[threading.Event]) -> tuple[Any, bool]:
        """Draw under the queue lock; (processed, interrupted)."""
        shared = _webui("shared")
        processing = _webui("processing")
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
        p.outpath_samples = getattr(shared.opts, "outdir_txt2img_samples", None) or str(self.outputs_dir())
        p.outpath_grids = getattr(shared.opts, "outdir_txt2img_grids", None) or str(self.outputs_dir())
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

    # ---- LoRA files -------------------------------------------------------------------------------------------
    def _staging_area(self) -> LoraStaging:
        lora_dir = self.lora_dir()
        if self._staging is None or self._staging.lora_dir != lora_dir:
            self._staging = LoraStaging(lora_dir)
        return self._staging

    def _stage(self, specs: list[LoraSpec], checkpoint: Any) -> list[tuple[LoraSpec, str]]:
        """Copy each LoRA file (weight != 0) under its unique name into the Lora folder; check the files first."""
        if specs and _lora_networks() is None:
            raise HostError(tr("The WebUI's built-in Lora extension is disabled: enable it under Extensions to "
                               "draw with LoRA files."))
        target_arch = self._target_arch(checkpoint)
        staging = self._staging_area() if specs else None
        staged: list[tuple[LoraSpec, str]] = []
        for spec in specs:
            path = Path(spec.path)
            if not path.is_file():
                raise HostError(tr("LoRA file not found: {path}", path=spec.path))
            if path.suffix.lower() != ".safetensors":
                # the WebUI's safe unpickler rejects .pt/.ckpt files written by current torch
                raise HostError(tr("{name}: the WebUI host draws with .safetensors LoRA files only.", name=path.name))
            if float(spec.weight) == 0.0:
                continue
            family = lora_family(path)
            if family is not None and target_arch in ("sd1", "sd2", "sd2-v", "sdxl") and (
                    (family == "sdxl") != (target_arch == "sdxl")):
                raise HostError(tr(
                    "{name} does not fit checkpoint {checkpoint}: it was trained for {family}, the checkpoint is "
                    "{arch}.", name=path.name, checkpoint=self._checkpoint_name(checkpoint),
                    family="SDXL" if family == "sdxl" else "SD1/SD2", arch=target_arch))
            staged.append((spec, staging.stage(path)))
        if staged:
            self._make_known([name for _, name in staged])
        return staged

    def _target_arch(self, checkpoint: Any) -> str:
        if checkpoint is None:
            model = getattr(_webui("sd_models").model_data, "sd_model", None)
            checkpoint = getattr(model, "sd_checkpoint_info", None)
        filename = getattr(checkpoint, "filename", None)
        return self._arch(filename) if filename else "unknown"

    @staticmethod
    def _checkpoint_name(checkpoint: Any) -> str:
        if checkpoint is None:
            model = getattr(_webui("sd_models").model_data, "sd_model", None)
            checkpoint = getattr(model, "sd_checkpoint_info", None)
        return Path(getattr(checkpoint, "filename", "") or "?").name

    @staticmethod
    def _make_known(names: list[str]) -> None:
        """Let the Lora extension find freshly staged files (it would search once by itself when a name is
        missing; doing it here keeps that out of the drawing and works on versions that do not)."""
        networks = _lora_networks()
        aliases = getattr(networks, "available_network_aliases", {})
        missing = [n for n in names if n not in aliases]
        if not missing:
            return
        by_names = getattr(networks, "update_available_networks_by_names", None)
        if by_names is not None:
            by_names(missing)
        else:
            networks.list_available_networks()

    def _check_loras(self, processed: Any, staged: list[tuple[LoraSpec, str]]) -> list[str]:
        """The paths of the staged LoRAs the WebUI really applied; HostError naming any it skipped."""
        if not staged:
            return []
        infotext = processed.infotexts[0] if processed.infotexts else processed.info
        hashes = parse_lora_hashes(infotext)
        comments = str(getattr(processed, "comments", "") or "")
        trouble = [line for line in comments.splitlines() if line.startswith(("Lora not found", "Networks with errors"))]
        unfit = set(self._flavor.unfit_loras({name: Path(spec.path) for spec, name in staged}))
        for spec, name in staged:
            reason = None
            if name in unfit:
                reason = tr("some of its layers have no match in this checkpoint. Was it trained on another "
                            "architecture?")
            elif any(name in line for line in trouble):
                reason = "; ".join(line for line in trouble if name in line)
            elif name not in hashes:
                reason = tr("the WebUI did not report it as applied (see the WebUI's console).")
            if reason is not None:
                raise HostError(tr("The WebUI did not apply LoRA {name}: {reason}", name=Path(spec.path).name,
                                   reason=reason))
        return [spec.path for spec, _ in staged]

    # ---- taggers ----------------------------------------------------------------------------------------------
    def taggers(self) -> list[TaggerInfo]:
        shared = _webui("shared")
        found: list[TaggerInfo] = []
        if self._deepbooru_usable():
            threshold = getattr(shared.opts, "interrogate_deepbooru_score_threshold", 0.5)
            found.append(TaggerInfo("deepbooru", tr("DeepBooru (anime tags)"), True, float(threshold)))
        if getattr(shared, "interrogator", None) is not None and self._interrogator_usable():
            found.append(TaggerInfo("blip", tr("BLIP (a sentence)"), False))
            found.append(TaggerInfo("clip", tr("CLIP interrogator (BLIP sentence + CLIP keywords)"), False))
        for key, interrogator in self._wd14_interrogators().items():
            found.append(TaggerInfo(f"wd14:{key}", tr("WD14 tagger: {model}", model=getattr(interrogator, "name", key)),
                                    True, WD14_DEFAULT_THRESHOLD))
        return found

    @staticmethod
    def _models_path() -> Path:
        return Path(_webui("paths").models_path)

    def _deepbooru_usable(self) -> bool:
        """DeepBooru downloads its model on first use; offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set) it is
        offered only when the model is already on disk."""
        try:
            _webui("deepbooru")
        except ImportError:
            return False
        return not _offline() or any((self._models_path() / "torch_deepdanbooru").glob("*.pt"))

    def _interrogator_usable(self) -> bool:
        return not _offline() or any((self._models_path() / "BLIP").glob("*.pth"))

    def _wd14_interrogators(self) -> dict[str, Any]:
        """The interrogators of the WD14 tagger extension (toriato's or picobyte's fork) when it is installed:
        both keep them in ``tagger.utils.interrogators``, each with ``interrogate(image) -> (ratings, tags)``.
        The extension adds the models on disk (its ONNX and DeepDanbooru folders) only when its refresh button
        is pressed, so that refresh runs once here; offline, models that would be downloaded are left out."""
        utils = sys.modules.get("tagger.utils")
        if utils is None:
            return {}
        if not self._wd14_refreshed and callable(getattr(utils, "refresh_interrogators", None)):
            self._wd14_refreshed = True
            try:
                utils.refresh_interrogators()
            except Exception as exc:  # a broken model folder must not hide the other taggers
                print(f"Train Tools: the WD14 tagger's model list could not be refreshed: {exc}", file=sys.stderr)
        interrogators = getattr(utils, "interrogators", None)
        if not isinstance(interrogators, dict):
            return {}
        offline = _offline()
        return {str(k): v for k, v in interrogators.items()
                if hasattr(v, "interrogate") and (not offline or _wd14_on_disk(v))}

    def tag(self, tagger_id: str, image, threshold: Optional[float] = None) -> list[str]:
        known = {t.id: t for t in self.taggers()}
        if tagger_id not in known:
            raise HostError(tr("Unknown tagger {name}; this host has: {names}", name=tagger_id,
                               names=", ".join(known) or "-"))
        if threshold is None:
            threshold = known[tagger_id].default_threshold
        image = image.convert("RGB")
        with self._queue_lock():
            try:
                if tagger_id == "deepbooru":
                    return self._tag_deepbooru(image, threshold)
                if tagger_id in ("blip", "clip"):
                    return self._tag_interrogator(tagger_id, image)
                return self._tag_wd14(tagger_id.split(":", 1)[1], image, threshold)
            except HostError:
                raise
            except Exception as exc:
                raise HostError(tr("Tagger {name} failed: {error}", name=known[tagger_id].title,
                                   error=f"{type(exc).__name__}: {exc}")) from exc

    @contextlib.contextmanager
    def _temporary_opts(self, **values: Any) -> Iterator[None]:
        """Set WebUI options for one call (under the queue lock) and put the person's values back."""
        opts = _webui("shared").opts
        data = opts.data
        saved = {k: (k in data, data.get(k)) for k in values}
        try:
            for key, value in values.items():
                data[key] = value
            yield
        finally:
            for key, (present, old) in saved.items():
                if present:
                    data[key] = old
                else:
                    data.pop(key, None)

    def _tag_deepbooru(self, image, threshold: Optional[float]) -> list[str]:
        deepbooru = _webui("deepbooru")
        opts = _webui("shared").opts
        if threshold is None:
            threshold = float(getattr(opts, "interrogate_deepbooru_score_threshold", 0.5))
        # best first, without "(tag:0.87)" weights; spaces, escaping and filtered tags stay the person's choice
        with self._temporary_opts(interrogate_deepbooru_score_threshold=float(threshold), deepbooru_sort_alpha=False,
                                  interrogate_return_ranks=False):
            deepbooru.model.start()
            try:
                text = deepbooru.model.tag_multi(image)
            finally:
                deepbooru.model.stop()
        return _split_tags(text)

    def _tag_interrogator(self, tagger_id: str, image) -> list[str]:
        interrogator = _webui("shared").interrogator
        with self._temporary_opts(interrogate_return_ranks=False):
            if tagger_id == "clip":
                text = interrogator.interrogate(image)
                if text.endswith("<error>"):  # the interrogator reports its failures this way
                    raise HostError(tr("The CLIP interrogator failed (see the WebUI's console)."))
                return _split_tags(text)
            interrogator.load()
            try:
                return _split_tags(interrogator.generate_caption(image))
            finally:
                interrogator.unload()

    def _tag_wd14(self, key: str, image, threshold: Optional[float]) -> list[str]:
        interrogator = self._wd14_interrogators().get(key)
        if interrogator is None:
            raise HostError(tr("The WD14 tagger model {name} is no longer available.", name=key))
        _ratings, confidences = interrogator.interrogate(image)
        limit = WD14_DEFAULT_THRESHOLD if threshold is None else float(threshold)
        ranked = sorted(((t, float(c)) for t, c in confidences.items() if float(c) >= limit), key=lambda tc: -tc[1])
        return [t if t in _KAOMOJI else t.replace("_", " ") for t, _ in ranked]

    # ---- upscalers --------------------------------------------------------------------------------------------
    def _upscaler_data(self) -> list[Any]:
        return [u for u in (_webui("shared").sd_upscalers or []) if u.name and u.name != "None"]

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

    # ---- folders ----------------------------------------------------------------------------------------------
    def lora_dir(self) -> Path:
        shared = _webui("shared")
        configured = getattr(shared.cmd_opts, "lora_dir", None)  # read only: never redirected
        path = Path(configured) if configured else self._models_path() / "Lora"
        path = Path(os.path.abspath(path))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def outputs_dir(self) -> Path:
        shared = _webui("shared")
        chosen = getattr(shared.opts, "outdir_samples", "") or ""
        if not chosen:
            paths = _webui("paths")
            chosen = getattr(paths, "default_output_dir", None) or os.path.join(paths.data_path, "outputs")
        path = Path(os.path.abspath(chosen))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def refresh_loras(self) -> None:
        networks = _lora_networks()
        if networks is not None:
            networks.list_available_networks()

    def send_to_txt2img(self, prompt: str) -> bool:
        """The WebUI has no server-side way to fill the txt2img prompt box: the tab does it in the browser."""
        return False

    def forget_preview_loras(self, version_dir: Path) -> None:
        staging = self._staging_area()
        if not staging.version_folder(version_dir).exists():
            return
        staging.forget(version_dir)
        self.refresh_loras()
