"""A real host on diffusers, for the standalone app, the CLI and the tests.

Checkpoints are the WebUI-style single files (``*.safetensors`` / ``*.ckpt``) found under the given folders,
loaded by the trainer's own loader (lib_trainer.trainer.models) into the same diffusers pipeline the trainer
samples with. LoRA files are applied directly from disk as LyCORIS modules wrapped around the pipeline's layers
and removed after each request, so the base weights are never touched and "no LoRA" draws the base image exactly.

This module needs the trainer's private dependencies (diffusers, lycoris) on sys.path; they, torch and the
trainer modules are imported inside the methods so that importing the module stays cheap.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from lib_trainer.hosts.base import (
    CheckpointInfo,
    Host,
    HostError,
    HostInterrupted,
    LoraSpec,
    TaggerInfo,
    Txt2ImgRequest,
    Txt2ImgResult,
    check_request,
    lora_prompt,
)
from lib_trainer.hosts.checkpoint_files import TINY_RESOLUTION, checkpoint_facts, safetensors_data_hash
from lib_trainer.common.i18n import tr

PathLike = Any  # str | os.PathLike
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
EMBEDDED_TINY_TITLE = "tiny test model (embedded)"

# WebUI sampler name → (diffusers scheduler class, extra config, infotext "Sampler", infotext "Schedule type").
# LMS is left out: diffusers' LMS scheduler needs scipy, which is not a trainer dependency.
SAMPLERS: dict[str, tuple[str, dict, str, Optional[str]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, "Euler a", None),
    "Euler": ("EulerDiscreteScheduler", {}, "Euler", None),
    "Heun": ("HeunDiscreteScheduler", {}, "Heun", None),
    "DPM2": ("KDPM2DiscreteScheduler", {}, "DPM2", None),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a", None),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M", None),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M", "Karras",
    ),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE", None),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M SDE", "Karras",
    ),
    "DDIM": ("DDIMScheduler", {}, "DDIM", None),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS", None),
    "UniPC": ("UniPCMultistepScheduler", {}, "UniPC", None),
}


class _Stop(Exception):
    """Raised from the step callback to leave the diffusers loop at once."""


@dataclass
class _Lora:
    path: str
    stat: tuple  # size, mtime, ctime, inode: a rewritten file is read again
    modules: list  # LyCORIS modules, each wrapping one layer of the pipeline
    short_hash: str  # the WebUI's Lora hash: sha256 of the tensor data, first 12 hex digits


@dataclass
class _Loaded:
    path: str
    model: Any  # lib_trainer.trainer.models.LoadedModel
    pipe: Any
    name_map: dict[str, str]  # our (diffusers-path) LoRA module names → the names in files
    loras: "OrderedDict[str, _Lora]" = field(default_factory=OrderedDict)


def _fmt(value: float) -> str:
    return format(round(float(value), 6), "g")


def _quote(text: str) -> str:
    """The WebUI's infotext quoting: values with a comma, colon or quote are written as a JSON string."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def _tag_name(path: Path) -> str:
    return re.sub(r"[:<>\s]+", "_", path.stem) or "lora"


class StandaloneHost(Host):
    """The diffusers host. ``checkpoint_dirs`` are searched recursively; ``embedded_tiny`` is the model offered
    without any checkpoint file: the committed toy model (lib_trainer.demo.toy_model.MODEL_FILE, read where it is),
    or a path where a random tiny SD1 model (lib_trainer.demo.tiny_model) is written the first time it is used."""

    name = "standalone"

    def __init__(
        self,
        workspace: PathLike,
        checkpoint_dirs: Optional[Sequence[PathLike]] = None,
        *,
        lora_dir: Optional[PathLike] = None,
        outputs_dir: Optional[PathLike] = None,
        embedded_tiny: Optional[PathLike] = None,
        device: Optional[str] = None,
        max_pipelines: int = 1,
        max_loras: int = 4,
    ) -> None:
        workspace = Path(workspace)
        self._checkpoint_dirs = [Path(d) for d in (checkpoint_dirs if checkpoint_dirs is not None
                                                    else [workspace / "models" / "Stable-diffusion"])]
        self._lora_dir = Path(lora_dir) if lora_dir is not None else workspace / "models" / "Lora"
        self._outputs_dir = Path(outputs_dir) if outputs_dir is not None else workspace / "outputs"
        self._embedded_tiny = Path(embedded_tiny).absolute() if embedded_tiny is not None else None
        self._device_name = device
        self._max_pipelines = max(1, int(max_pipelines))
        self._max_loras = max(1, int(max_loras))

        self._lock = threading.RLock()  # one txt2img / GPU move at a time
        self._scan_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards _running only
        self._running: Optional[threading.Event] = None
        self._listing: Optional[list[CheckpointInfo]] = None
        self._facts_cache: dict[tuple[str, int, int], tuple[str, Optional[int]]] = {}
        self._hash_cache: dict[str, str] = {}  # path → short model hash, once a model was loaded
        self._pipelines: "OrderedDict[str, _Loaded]" = OrderedDict()
        self._current: Optional[str] = None
        self._released = False
        self.release_calls = 0
        self.restore_calls = 0

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoints(self, refresh: bool = False) -> list[CheckpointInfo]:
        with self._scan_lock:
            if self._listing is None or refresh:
                self._listing = self._scan()
            return list(self._listing)

    def _scan(self) -> list[CheckpointInfo]:
        lora_root = os.path.abspath(self._lora_dir)
        found: list[tuple[Path, str]] = []  # (file, title relative to its folder)
        seen: set[str] = set()
        for folder in self._checkpoint_dirs:
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file())
            for path in files:
                absolute = os.path.abspath(path)
                rel = path.relative_to(folder)
                if absolute in seen or any(part.startswith(".") for part in rel.parts):
                    continue
                if absolute.startswith(lora_root + os.sep):
                    continue
                seen.add(absolute)
                found.append((Path(absolute), rel.as_posix()))
        titles = [title for _, title in found]
        result = []
        for (path, title) in found:
            try:
                arch, resolution = self._facts(path)
            except OSError:  # deleted while we looked
                continue
            if titles.count(title) > 1:  # the same relative name in two folders
                title = f"{title} ({path.parents[len(Path(title).parts) - 1].name})"
            result.append(CheckpointInfo(title=title, path=str(path), arch=arch, hash=self._hash_cache.get(str(path)),
                                         resolution=resolution))
        if self._embedded_tiny is not None and str(self._embedded_tiny) not in seen:
            # written on first use; until then it is known to be a small SD1 model of its own size
            arch, resolution = self._facts(self._embedded_tiny) if self._embedded_tiny.is_file() else \
                ("sd1", TINY_RESOLUTION)
            result.append(CheckpointInfo(title=tr(EMBEDDED_TINY_TITLE), path=str(self._embedded_tiny), arch=arch,
                                         hash=self._hash_cache.get(str(self._embedded_tiny)),
                                         resolution=resolution or TINY_RESOLUTION))
        return result

    def _facts(self, path: Path) -> tuple[str, Optional[int]]:
        """(architecture, native resolution) of a checkpoint, read once per file version."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._facts_cache:
            self._facts_cache[key] = checkpoint_facts(path)
        return self._facts_cache[key]

    def _arch(self, path: Path) -> str:
        return self._facts(path)[0]

    def _resolve(self, wanted: Optional[str]) -> CheckpointInfo:
        listing = self.checkpoints()
        if wanted is None:
            wanted = self._current
            if wanted is None:
                usable = [c for c in listing if c.arch != "unknown"]
                if not usable:
                    raise HostError(tr("No checkpoint found: put a .safetensors model into {folders}.",
                                       folders=", ".join(str(d) for d in self._checkpoint_dirs)))
                return usable[0]
        absolute = os.path.abspath(wanted) if wanted else ""
        for info in listing:
            if info.path == absolute or info.title == wanted or (
                    info.path == str(self._embedded_tiny) and wanted == EMBEDDED_TINY_TITLE):
                return info
        if os.path.isfile(absolute) and absolute.lower().endswith(CHECKPOINT_SUFFIXES):
            return CheckpointInfo(title=Path(absolute).name, path=absolute, arch=self._arch(Path(absolute)))
        raise HostError(tr("Checkpoint not found: {name}", name=wanted))

    # ---- models on the device ---------------------------------------------------------------------------------
    def _device(self):
        import torch

        if self._device_name:
            return torch.device(self._device_name)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _load(self, info: CheckpointInfo) -> _Loaded:
        entry = self._pipelines.get(info.path)
        if entry is not None:
            self._pipelines.move_to_end(info.path)
            return entry
        import torch

        from lib_trainer.trainer.models import ModelLoadError, load_model
        from lib_trainer.trainer.network import unet_name_map
        from lib_trainer.trainer.sampling import build_pipeline

        path = Path(info.path)
        if self._embedded_tiny is not None and path == self._embedded_tiny and not path.is_file():
            from lib_trainer.demo.tiny_model import write_tiny_checkpoint

            write_tiny_checkpoint("sd1", path)
        while len(self._pipelines) >= self._max_pipelines:
            self._pipelines.popitem(last=False)
            self._free_memory()
        try:
            model = load_model(str(path), True if info.arch == "sd2-v" else None)
        except (ModelLoadError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise HostError(tr("Cannot load checkpoint {name}: {error}", name=path.name, error=str(exc))) from exc
        device = self._device()
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = build_pipeline(model, "euler_a")
        pipe.to(device, dtype)
        for module in [model.unet, model.vae, *model.text_encoders]:
            module.requires_grad_(False).eval()
        entry = _Loaded(path=info.path, model=model, pipe=pipe, name_map=unet_name_map(model.unet, model.arch))
        self._pipelines[info.path] = entry
        self._hash_cache[info.path] = model.new_model_hash[:10]
        return entry

    def _free_memory(self) -> None:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release_gpu(self) -> None:
        with self._lock:
            self.release_calls += 1
            if self._released:
                return
            self._released = True
            # Nothing loaded, nothing to free: and no torch import (seconds) before every trainer start.
            if not self._pipelines or self._device().type != "cuda":
                return
            for entry in self._pipelines.values():
                entry.pipe.to("cpu")
                for lora in entry.loras.values():
                    for module in lora.modules:
                        module.to("cpu")
            self._free_memory()

    def restore_gpu(self) -> None:
        with self._lock:
            self.restore_calls += 1
            self._bring_back()

    def _bring_back(self) -> None:
        if not self._released:
            return
        self._released = False
        if not self._pipelines:
            return
        device = self._device()
        if device.type == "cuda":
            for entry in self._pipelines.values():
                entry.pipe.to(device)  # LoRA modules follow when they are next applied

    # ---- LoRA files -------------------------------------------------------------------------------------------
    def _lora(self, entry: _Loaded, path_text: str, *, cached: bool = True) -> _Lora:
        path = Path(path_text)
        if not path.is_file():
            raise HostError(tr("LoRA file not found: {path}", path=path_text))
        st = path.stat()
        stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        key = os.path.abspath(path)
        found = entry.loras.get(key)
        if cached and found is not None and found.stat == stat:
            entry.loras.move_to_end(key)
            return found
        lora = _Lora(path=path_text, stat=stat,
                     modules=self._lora_modules(entry, path), short_hash=safetensors_data_hash(path)[:12])
        if cached:
            entry.loras[key] = lora
            while len(entry.loras) > self._max_loras:
                entry.loras.popitem(last=False)
        return lora

    def _lora_modules(self, entry: _Loaded, path: Path) -> list:
        """LyCORIS modules for every layer the file names; HostError naming the file when it does not fit."""
        from lycoris.modules import get_module

        from lib_trainer.trainer.models import read_state_dict
        from lib_trainer.trainer.network import module_from_file

        logging.getLogger("LyCORIS").setLevel(logging.WARNING)
        try:
            state = read_state_dict(path)
        except Exception as exc:
            raise HostError(tr("Cannot read LoRA file {name}: {error}", name=path.name, error=str(exc))) from exc
        inverse = {v: k for k, v in entry.name_map.items()}  # SDXL files name UNet layers by their LDM paths
        renamed: dict = {}
        for key, value in state.items():
            module, _, param = key.partition(".")
            renamed[f"{inverse.get(module, module)}.{param}"] = value
        wanted = {k.partition(".")[0] for k in renamed if k.startswith(("lora_unet_", "lora_te"))}
        if not wanted:
            raise HostError(tr("{name} is not a LoRA file this host can apply (no lora_unet_/lora_te keys).",
                               name=path.name))
        model = entry.model
        roots = [("lora_unet", model.unet)]
        if len(model.text_encoders) == 1:
            roots.append(("lora_te", model.text_encoders[0]))
        else:
            roots += [(f"lora_te{i + 1}", te) for i, te in enumerate(model.text_encoders)]
        modules = []
        for prefix, root in roots:
            for name, layer in root.named_modules():
                lora_name = f"{prefix}_{name}".replace(".", "_")
                if lora_name not in wanted:
                    continue
                try:
                    kind, params = get_module(renamed, lora_name)
                    # building copies the file's tensors into layers shaped after ours: a size mismatch fails here
                    module = module_from_file(kind, params, lora_name, layer) if kind is not None else None
                except Exception as exc:
                    raise HostError(tr(
                        "{name} does not fit checkpoint {checkpoint}: layer {layer} cannot be applied ({error}). "
                        "Was it trained on another architecture?",
                        name=path.name, checkpoint=Path(entry.path).name, layer=lora_name, error=str(exc),
                    )) from exc
                if module is not None:
                    modules.append(module)
        missing = sorted(wanted - {m.lora_name for m in modules})
        if missing:
            raise HostError(tr(
                "{name} does not fit checkpoint {checkpoint}: {count} of its layers have no match here (first: "
                "{first}). Was it trained on another architecture?",
                name=path.name, checkpoint=Path(entry.path).name, count=len(missing), first=missing[0],
            ))
        for module in modules:
            module.requires_grad_(False).eval()
        return modules

    # ---- txt2img ----------------------------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        return list(SAMPLERS)

    def _scheduler(self, sampler: str, model):
        import diffusers

        cls_name, extra, _, _ = SAMPLERS[sampler]
        config = dict(model.scheduler_config, prediction_type="v_prediction" if model.v_prediction else "epsilon")
        return getattr(diffusers, cls_name).from_config({**config, **extra})

    def interrupt(self) -> None:
        with self._state_lock:
            if self._running is not None:
                self._running.set()

    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        check_request(request)
        if request.sampler not in SAMPLERS:
            raise HostError(tr("Unknown sampler {name}; this host has: {names}", name=request.sampler,
                               names=", ".join(SAMPLERS)))
        with self._lock:
            stop = threading.Event()
            with self._state_lock:
                self._running = stop
            try:
                return self._draw(request, stop, interrupt)
            finally:
                with self._state_lock:
                    self._running = None

    def _draw(self, request: Txt2ImgRequest, stop: threading.Event,
              interrupt: Optional[threading.Event]) -> Txt2ImgResult:
        import torch

        def stopped() -> bool:
            return stop.is_set() or (interrupt is not None and interrupt.is_set())

        def on_step_end(pipe, step, timestep, callback_kwargs):
            if stopped():
                raise _Stop()
            return callback_kwargs

        if stopped():
            raise HostInterrupted(tr("Image generation was interrupted."))
        self._bring_back()
        info = self._resolve(request.checkpoint)
        entry = self._load(info)
        self._current = info.path
        model = entry.model
        unet_param = next(model.unet.parameters())

        seen: set[str] = set()
        loras: list[tuple[LoraSpec, _Lora]] = []
        for spec in request.loras:
            if float(spec.weight) == 0.0:
                if not Path(spec.path).is_file():
                    raise HostError(tr("LoRA file not found: {path}", path=spec.path))
                continue
            key = os.path.abspath(spec.path)
            # the same file twice gets modules of its own, so that both wrap the layers
            loras.append((spec, self._lora(entry, spec.path, cached=key not in seen)))
            seen.add(key)

        seed = int(request.seed)
        if seed < 0:
            seed = random.randrange(2**32)
        kwargs = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt or None, width=request.width,
            height=request.height, num_inference_steps=request.steps, guidance_scale=float(request.cfg_scale),
            generator=torch.Generator(device="cpu").manual_seed(seed), callback_on_step_end=on_step_end,
        )
        clip_skip = max(1, int(request.clip_skip or 1))
        if clip_skip > 1 and model.arch != "sdxl":  # SDXL always uses the penultimate layers, like the WebUI
            kwargs["clip_skip"] = clip_skip - 1  # diffusers counts the layers skipped, the WebUI the layer used
        entry.pipe.scheduler = self._scheduler(request.sampler, model)

        applied: list = []
        try:
            for spec, lora in loras:
                for module in lora.modules:
                    module.to(unet_param.device, unet_param.dtype)
                    module.multiplier = float(spec.weight)
                    module.apply_to()
                    applied.append(module)
            with torch.no_grad():
                image = entry.pipe(**kwargs).images[0]
        except _Stop:
            raise HostInterrupted(tr("Image generation was interrupted.")) from None
        finally:
            for module in reversed(applied):
                module.restore()
        infotext = self._infotext(request, seed, entry, clip_skip, loras)
        image.info["parameters"] = infotext
        return Txt2ImgResult(image=image, infotext=infotext, seed=seed,
                             loras_applied=[spec.path for spec, _ in loras])

    def _infotext(self, request: Txt2ImgRequest, seed: int, entry: _Loaded, clip_skip: int,
                  loras: list[tuple[LoraSpec, _Lora]]) -> str:
        _, _, sampler, schedule = SAMPLERS[request.sampler]
        tags = lora_prompt((_tag_name(Path(spec.path)), spec.weight) for spec, _ in loras)
        prompt = f"{request.prompt} {tags}".strip() if tags else request.prompt
        lines = [prompt]
        if request.negative_prompt:
            lines.append(f"Negative prompt: {request.negative_prompt}")
        params: list[tuple[str, str]] = [("Steps", str(request.steps)), ("Sampler", sampler)]
        if schedule:
            params.append(("Schedule type", schedule))
        params += [
            ("CFG scale", _fmt(request.cfg_scale)), ("Seed", str(seed)), ("Size", f"{request.width}x{request.height}"),
            ("Model hash", entry.model.new_model_hash[:10]), ("Model", Path(entry.path).stem),
        ]
        if clip_skip > 1:
            params.append(("Clip skip", str(clip_skip)))
        if loras:
            hashes = ", ".join(f"{_tag_name(Path(spec.path))}: {lora.short_hash}" for spec, lora in loras)
            params.append(("Lora hashes", hashes))
        lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params))
        return "\n".join(lines)

    # ---- what this host does not have -------------------------------------------------------------------------
    def taggers(self) -> list[TaggerInfo]:
        return []

    def tag(self, tagger_id: str, image, threshold: Optional[float] = None) -> list[str]:
        raise HostError(tr("This host has no tagger: captioning needs the WebUI (DeepBooru, BLIP or the WD14 "
                           "tagger). Manual captions still work."))

    def upscalers(self) -> list[str]:
        return []

    def upscale(self, image, upscaler: str, scale: float):
        raise HostError(tr("This host has no upscaler: upscaling needs the WebUI."))

    # ---- folders ----------------------------------------------------------------------------------------------
    def lora_dir(self) -> Path:
        self._lora_dir.mkdir(parents=True, exist_ok=True)
        return self._lora_dir

    def outputs_dir(self) -> Path:
        self._outputs_dir.mkdir(parents=True, exist_ok=True)
        return self._outputs_dir

    def refresh_loras(self) -> None:
        """Nothing to do: LoRA files are read from disk by path, and a changed file (size or time) is reloaded."""

    def send_to_txt2img(self, prompt: str) -> bool:
        return False

    def forget_preview_loras(self, version_dir: Path) -> None:
        """Nothing is staged (files are applied from where they are); drop cached modules of that version."""
        root = os.path.abspath(version_dir) + os.sep
        with self._lock:
            for entry in self._pipelines.values():
                for key in [k for k in entry.loras if k.startswith(root)]:
                    del entry.loras[key]
