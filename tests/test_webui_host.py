"""Unit tests of lib_trainer/hosts/webui/ against a small double of the WebUI's ``modules`` package.

The double mimics the few behaviours of AUTOMATIC1111 1.10.1 (and Forge) that the adapter relies on, read from
their code: ``override_settings`` applied during ``process_images`` and restored after it, ``<lora:NAME:w>`` found
by basename under ``cmd_opts.lora_dir`` and reported under "Lora hashes", a missing network reported as a
"Lora not found" comment, ``shared.state`` interrupts, the queue lock. It lets CI check the adapter's own logic;
it is not the verification — tests/test_host_contract.py and tests/test_webui_real.py run the same host inside a
real WebUI when TRAIN_TOOLS_WEBUI_DIR is set.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from PIL import Image

from lib_trainer.hosts.base import PREVIEW_FOLDER, HostError, HostInterrupted, LoraSpec, Txt2ImgRequest
from lib_trainer.hosts.webui.host import WebUIHost
from lib_trainer.hosts.webui.loras import lora_family, lora_module_names, parse_lora_hashes

SD1_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x.weight"]
SD2_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.ln_final.weight"]
SDXL_KEYS = ["model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.1.model.ln_final.weight"]
SD_LORA_KEYS = ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
SDXL_LORA_KEYS = ["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"]


def write_safetensors(path: Path, keys: list[str], metadata: Optional[dict] = None) -> Path:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(1) for k in keys}, str(path), metadata=metadata)
    return path


# ---- the double of the WebUI -------------------------------------------------------------------------------------

class OwnedLock:
    """The WebUI's queue lock is not reentrant: taking it twice in one thread would hang the WebUI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: Optional[int] = None

    def __enter__(self):
        if self.owner == threading.get_ident():
            raise AssertionError("queue_lock taken twice by one thread")
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self.owner = None
        self._lock.release()

    def held_by_me(self) -> bool:
        return self.owner == threading.get_ident()


class Options:
    LABELS = {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_lora", "lora_add_hashes_to_infotext",
              "uni_pc_order", "interrogate_deepbooru_score_threshold", "deepbooru_sort_alpha",
              "interrogate_return_ranks", "outdir_samples", "outdir_txt2img_samples", "outdir_txt2img_grids"}

    def __init__(self, defaults: dict, **data: Any) -> None:
        object.__setattr__(self, "defaults", dict(defaults))
        object.__setattr__(self, "data", dict(data))  # like config.json: only what was ever changed
        object.__setattr__(self, "data_labels", {k: object() for k in self.LABELS})

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        try:
            return self.defaults[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value


class State:
    def __init__(self) -> None:
        self.interrupted = False
        self.job = ""
        self.calls: list[str] = []

    def begin(self, job: str = "(unknown)") -> None:
        self.calls.append("begin")
        self.interrupted = False
        self.job = job

    def end(self) -> None:
        self.calls.append("end")
        self.job = ""

    def interrupt(self) -> None:
        self.calls.append("interrupt")
        self.interrupted = True


@dataclass
class WebCheckpoint:
    filename: str
    title: str
    shorthash: Optional[str] = None
    ids: list = field(default_factory=list)


class Model:
    def __init__(self, info: WebCheckpoint) -> None:
        self.sd_checkpoint_info = info
        self.device = "cuda"


@dataclass
class Network:
    name: str
    modules: dict


@dataclass
class Processed:
    images: list
    infotexts: list
    seed: int
    comments: str = ""
    info: str = ""


@dataclass
class Upscaler:
    name: str
    data_path: Optional[str]
    calls: list = field(default_factory=list)

    @property
    def scaler(self):
        return self

    def upscale(self, img, scale, selected_model=None):
        self.calls.append((scale, selected_model))
        return img.resize((int(img.width * scale) // 8 * 8, int(img.height * scale) // 8 * 8))


class FakeWebUI:
    """``modules`` + the Lora extension's ``networks``, installed into sys.modules for one test."""

    def __init__(self, root: Path, monkeypatch, forge: bool = False) -> None:
        self.root = root
        self.lora_dir = root / "models" / "Lora"
        self.ckpt_dir = root / "models" / "Stable-diffusion"
        self.queue_lock = OwnedLock()
        self.state = State()
        defaults = dict(CLIP_stop_at_last_layers=1, uni_pc_order=3, outdir_samples="")
        self.opts = Options(defaults, sd_model_checkpoint="", sd_lora="my_style", lora_add_hashes_to_infotext=False,
                            interrogate_deepbooru_score_threshold=0.5, deepbooru_sort_alpha=True,
                            interrogate_return_ranks=True,
                            outdir_txt2img_samples=str(root / "outputs" / "txt2img-images"),
                            outdir_txt2img_grids=str(root / "outputs" / "txt2img-grids"))
        self.processed: list = []  # every p given to process_images
        self.seen_opts: list[dict] = []
        self.lock_held_while_drawing: list[bool] = []
        self.steps_delay = 0.0
        self.unload_calls: list = []
        self.to_device_calls: list = []
        self.list_models_calls = 0
        self.skip_networks: set[str] = set()  # names the Lora extension fails to load (errors comment)
        self.unfit_networks: set[str] = set()  # names loaded with only part of their layers matched
        self.networks_available: dict[str, Path] = {}
        self.loaded_networks: list[Network] = []
        self.list_networks_calls = 0
        self.checkpoints_list: dict[str, WebCheckpoint] = {}
        self.aliases: dict[str, WebCheckpoint] = {}
        self.model_data = types.SimpleNamespace(sd_model=None, loaded_sd_models=[])
        self.upscalers = [Upscaler("None", None), Upscaler("Lanczos", None), Upscaler("R-ESRGAN 4x+", "/m/esrgan.pth")]
        self.deepbooru_calls: list = []
        self.interrogator_calls: list = []
        self.interrogator_result = "a dog on the grass, by an artist, sharp focus"
        self.forge = forge
        self.soft_empty_cache_calls = 0
        self._install(monkeypatch)

    # -- sd_models ------------------------------------------------------------------------------------------------
    def list_models(self) -> None:
        self.list_models_calls += 1
        self.checkpoints_list.clear()
        self.aliases.clear()
        for path in sorted(self.ckpt_dir.rglob("*")):
            if path.suffix in (".safetensors", ".ckpt"):
                name = path.relative_to(self.ckpt_dir).as_posix()
                sha = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
                info = WebCheckpoint(str(path), f"{name} [{sha}]", sha, ids=[name, f"{name} [{sha}]", path.stem])
                self.checkpoints_list[info.title] = info
                for alias in info.ids:
                    self.aliases[alias] = info

    def load_current(self) -> Model:
        info = next(iter(self.checkpoints_list.values()))
        model = Model(info)
        self.model_data.sd_model = model
        self.model_data.loaded_sd_models = [model]
        return model

    def unload_model_weights(self, sd_model=None, info=None):
        self.unload_calls.append(sd_model)
        if self.forge:
            return None
        if sd_model is None:
            raise AssertionError("A1111 would load a model here (shared.sd_model) just to unload it")
        sd_model.device = "cpu"
        return sd_model

    def send_model_to_device(self, m) -> None:
        self.to_device_calls.append(m)
        m.device = "cuda"

    # -- processing -----------------------------------------------------------------------------------------------
    def make_p(self, **kwargs):
        class P:
            def __init__(self) -> None:
                self.scripts = "the txt2img scripts"
                self.closed = False
                for key, value in kwargs.items():
                    setattr(self, key, value)

            def close(self) -> None:
                self.closed = True

        return P()

    def process_images(self, p) -> Processed:
        import re

        self.processed.append(p)
        self.lock_held_while_drawing.append(self.queue_lock.held_by_me())
        # as 1.10.1 does: only options present in opts.data are put back afterwards
        stored = {k: self.opts.data[k] for k in p.override_settings if k in self.opts.data}
        try:
            for key, value in p.override_settings.items():
                self.opts.data[key] = value
            self.seen_opts.append(dict(self.opts.defaults, **self.opts.data))
            if self.opts.uni_pc_order > p.steps and p.sampler_name == "UniPC":
                raise AssertionError("UniPC order must be < sampling steps")
            for _ in range(p.steps):
                if self.state.interrupted:
                    return Processed([], [], p.seed)
                time.sleep(self.steps_delay)
            names = re.findall(r"<lora:([^:>]+):([^:>]+)>", p.prompt)
            found, missing, errors, self.loaded_networks = [], [], [], []
            for name, _weight in names:
                if name not in self.networks_available:
                    self.list_available_networks()
                if name not in self.networks_available:
                    missing.append(name)
                elif name in self.skip_networks:
                    errors.append(f"{name} (1)")
                else:
                    found.append(name)
                    file_modules = lora_module_names(self.networks_available[name])
                    kept = list(file_modules)[:-1] if name in self.unfit_networks else list(file_modules)
                    self.loaded_networks.append(Network(name, {m: object() for m in kept}))
            seed = p.seed if p.seed >= 0 else 4242
            digest = hashlib.sha256(f"{p.prompt}|{p.negative_prompt}|{seed}|{p.sampler_name}".encode()).digest()
            image = Image.new("RGB", (p.width, p.height), tuple(digest[:3]))
            params = [f"Steps: {p.steps}", f"Sampler: {p.sampler_name}", f"CFG scale: {p.cfg_scale}", f"Seed: {seed}",
                      f"Size: {p.width}x{p.height}"]
            if found and self.opts.data["lora_add_hashes_to_infotext"]:
                params.append('Lora hashes: "' + ", ".join(f"{n}: {n[-12:]}" for n in found) + '"')
            infotext = f"{p.prompt}\nNegative prompt: {p.negative_prompt}\n" + ", ".join(params)
            comments = ""
            if missing:
                comments += f"Lora not found: {', '.join(missing)}\n"
            if errors:
                comments += f"Networks with errors: {', '.join(errors)}\n"
            return Processed([image], [infotext], seed, comments)
        finally:
            if p.override_settings_restore_afterwards:
                for key, value in stored.items():
                    self.opts.data[key] = value

    # -- the Lora extension ---------------------------------------------------------------------------------------
    def list_available_networks(self) -> None:
        self.list_networks_calls += 1
        self.networks_available = {p.stem: p for p in self.lora_dir.rglob("*.safetensors")
                                   if not any(part.startswith(".") for part in p.relative_to(self.lora_dir).parts)}

    # -- modules --------------------------------------------------------------------------------------------------
    def _install(self, monkeypatch) -> None:
        webui = self
        pkg = types.ModuleType("modules")
        pkg.__path__ = []
        sd_models = types.ModuleType("modules.sd_models")
        sd_models.checkpoints_list = self.checkpoints_list
        sd_models.checkpoint_aliases = self.aliases
        sd_models.list_models = self.list_models
        sd_models.model_data = self.model_data
        sd_models.unload_model_weights = self.unload_model_weights
        sd_models.send_model_to_device = self.send_model_to_device
        if self.forge:
            sd_models.forge_model_reload = lambda: None
        shared = types.ModuleType("modules.shared")
        shared.opts = self.opts
        shared.state = self.state
        shared.cmd_opts = types.SimpleNamespace(lora_dir=str(self.lora_dir))
        shared.sd_upscalers = self.upscalers
        shared.refresh_checkpoints = self.list_models

        class Interrogator:
            def interrogate(self, image):
                webui.interrogator_calls.append(("interrogate", dict(webui.opts.data)))
                return webui.interrogator_result

            def load(self):
                webui.interrogator_calls.append("load")

            def generate_caption(self, image):
                webui.interrogator_calls.append("caption")
                return "a dog on the grass"

            def unload(self):
                webui.interrogator_calls.append("unload")

        shared.interrogator = Interrogator()
        processing = types.ModuleType("modules.processing")
        processing.StableDiffusionProcessingTxt2Img = self.make_p
        processing.process_images = self.process_images
        call_queue = types.ModuleType("modules.call_queue")
        call_queue.queue_lock = self.queue_lock
        sd_samplers = types.ModuleType("modules.sd_samplers")
        sd_samplers.all_samplers = [types.SimpleNamespace(name=n, aliases=a) for n, a in (
            ("DPM++ 2M", ["k_dpmpp_2m"]), ("Euler a", ["k_euler_a"]), ("Euler", ["k_euler"]), ("UniPC", []))]

        def get_sampler_and_scheduler(name, scheduler, convert_automatic=True):
            for label in ("Karras", "Exponential"):
                if name.endswith(" " + label):
                    return name[: -len(label) - 1], label
            return name, "Automatic"

        sd_samplers.get_sampler_and_scheduler = get_sampler_and_scheduler
        paths = types.ModuleType("modules.paths")
        paths.models_path = str(self.root / "models")
        paths.data_path = str(self.root)
        deepbooru = types.ModuleType("modules.deepbooru")

        class DeepDanbooru:
            def start(self):
                webui.deepbooru_calls.append("start")

            def stop(self):
                webui.deepbooru_calls.append("stop")

            def tag_multi(self, image):
                opts = webui.opts.data
                webui.deepbooru_calls.append(("tag", dict(opts)))
                scores = {"solo": 0.9, "dog": 0.8, "grass": 0.4}
                tags = sorted(t for t, s in scores.items() if s >= opts["interrogate_deepbooru_score_threshold"])
                if not opts["deepbooru_sort_alpha"]:
                    tags.sort(key=lambda t: -scores[t])
                if opts["interrogate_return_ranks"]:
                    tags = [f"({t}:{scores[t]:.3f})" for t in tags]
                return ", ".join(tags)

        deepbooru.model = DeepDanbooru()
        networks = _NetworksView(self)
        memory = types.ModuleType("backend.memory_management")

        def soft_empty_cache(force=False):
            webui.soft_empty_cache_calls += 1

        memory.soft_empty_cache = soft_empty_cache
        modules = {"modules": pkg, "modules.sd_models": sd_models, "modules.shared": shared,
                   "modules.processing": processing, "modules.call_queue": call_queue,
                   "modules.sd_samplers": sd_samplers, "modules.paths": paths, "modules.deepbooru": deepbooru,
                   "networks": networks}
        if self.forge:
            backend = types.ModuleType("backend")
            backend.__path__ = []
            modules.update({"backend": backend, "backend.memory_management": memory})
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.delitem(sys.modules, "tagger.utils", raising=False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)


class _NetworksView(types.ModuleType):
    """The Lora extension's ``networks`` module, reading the double's state."""

    def __init__(self, webui: FakeWebUI) -> None:
        super().__init__("networks")
        self._webui = webui

    def list_available_networks(self) -> None:
        self._webui.list_available_networks()

    def update_available_networks_by_names(self, names) -> None:
        self._webui.list_available_networks()

    @property
    def available_network_aliases(self) -> dict:
        return self._webui.networks_available

    @property
    def loaded_networks(self) -> list:
        return self._webui.loaded_networks


@pytest.fixture
def webui(tmp_path, monkeypatch) -> FakeWebUI:
    fake = FakeWebUI(tmp_path, monkeypatch)
    write_safetensors(fake.ckpt_dir / "tiny-sd1.safetensors", SD1_KEYS)
    write_safetensors(fake.ckpt_dir / "xl" / "big-xl.safetensors", SDXL_KEYS)
    fake.list_models()
    fake.load_current()
    return fake


@pytest.fixture
def host(webui) -> WebUIHost:
    return WebUIHost()


@pytest.fixture
def lora(tmp_path) -> Path:
    return write_safetensors(tmp_path / "projects" / "dog" / "versions" / "v1" / "checkpoints" / "dog-000002.safetensors",
                             SD_LORA_KEYS, {"ss_output_name": "dog"})


def request(**changes) -> Txt2ImgRequest:
    values = dict(prompt="dog, red ball", negative_prompt="blurry", seed=7, steps=4, width=64, height=64)
    values.update(changes)
    return Txt2ImgRequest(**values)


# ---- checkpoints -------------------------------------------------------------------------------------------------

def test_checkpoints_come_from_the_webui_list_with_arch(webui, host, tmp_path):
    write_safetensors(webui.ckpt_dir / "sd2v.safetensors", SD2_KEYS)
    (webui.ckpt_dir / "sd2v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    write_safetensors(webui.ckpt_dir / "sd2.safetensors", SD2_KEYS)
    (webui.ckpt_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    listing = host.checkpoints()
    assert len(listing) == 2 and webui.list_models_calls == 1, "without refresh the WebUI's own list is used"
    listing = host.checkpoints(refresh=True)
    assert webui.list_models_calls == 2
    by_name = {Path(c.path).name: c for c in listing}
    assert {n: c.arch for n, c in by_name.items()} == {
        "broken.safetensors": "unknown", "sd2.safetensors": "sd2", "sd2v.safetensors": "sd2-v",
        "tiny-sd1.safetensors": "sd1", "big-xl.safetensors": "sdxl"}
    tiny = by_name["tiny-sd1.safetensors"]
    assert tiny.title.startswith("tiny-sd1.safetensors [") and tiny.hash and os.path.isabs(tiny.path)


def test_checkpoint_is_chosen_by_path_or_title_and_unknown_raises(webui, host):
    xl = next(c for c in host.checkpoints() if c.arch == "sdxl")
    for wanted in (xl.path, xl.title, "xl/big-xl.safetensors"):
        host.txt2img(request(checkpoint=wanted))
        assert webui.processed[-1].override_settings["sd_model_checkpoint"] == xl.title
        assert webui.opts.sd_model_checkpoint == "", "the person's checkpoint setting must be restored"
    host.txt2img(request(checkpoint=None))
    assert "sd_model_checkpoint" not in webui.processed[-1].override_settings
    with pytest.raises(HostError, match="nowhere.safetensors"):
        host.txt2img(request(checkpoint="nowhere.safetensors"))


# ---- txt2img -----------------------------------------------------------------------------------------------------

def test_txt2img_draws_under_the_queue_lock_without_scripts_or_saving(webui, host):
    result = host.txt2img(request(clip_skip=2, sampler="Euler a", cfg_scale=5.5))
    p = webui.processed[-1]
    assert webui.lock_held_while_drawing == [True]
    assert p.scripts is None and p.do_not_save_samples and p.do_not_save_grid and p.closed
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.width, p.height, p.cfg_scale, p.sampler_name) == (
        "dog, red ball", "blurry", 7, 4, 64, 64, 5.5, "Euler a")
    assert p.batch_size == 1 and p.n_iter == 1 and p.restore_faces is False and p.tiling is False
    seen = webui.seen_opts[-1]
    assert seen["CLIP_stop_at_last_layers"] == 2 and seen["sd_lora"] == "None"
    assert webui.opts.CLIP_stop_at_last_layers == 1, "an option at its default must not keep our value"
    assert "CLIP_stop_at_last_layers" not in webui.opts.data and "uni_pc_order" not in webui.opts.data
    assert webui.opts.sd_lora == "my_style", "the person's 'add network to prompt' is only off for our image"
    assert webui.state.calls == ["begin", "end"] and webui.state.job == ""
    assert result.image.size == (64, 64) and result.seed == 7 and result.loras_applied == []
    assert result.infotext.startswith("dog, red ball\nNegative prompt: blurry\n")
    assert result.image.info["parameters"] == result.infotext


def test_samplers_aliases_schedulers_and_unipc(webui, host):
    assert host.samplers() == ["DPM++ 2M", "Euler a", "Euler", "UniPC"]
    host.txt2img(request(sampler="k_euler"))
    assert webui.processed[-1].sampler_name == "Euler"
    host.txt2img(request(sampler="DPM++ 2M Karras"))
    assert (webui.processed[-1].sampler_name, webui.processed[-1].scheduler) == ("DPM++ 2M", "Karras")
    host.txt2img(request(sampler="UniPC", steps=2))
    assert webui.processed[-1].override_settings["uni_pc_order"] == 2 and webui.opts.uni_pc_order == 3
    host.txt2img(request(sampler="UniPC", steps=10))
    assert "uni_pc_order" not in webui.processed[-1].override_settings
    with pytest.raises(HostError, match="No Such"):
        host.txt2img(request(sampler="No Such"))
    with pytest.raises(HostError):
        host.txt2img(request(width=60))


def test_loras_are_staged_by_content_and_named_in_the_prompt(webui, host, lora, tmp_path):
    result = host.txt2img(request(loras=[LoraSpec(str(lora), 0.4)]))
    p = webui.processed[-1]
    staged = list((webui.lora_dir / PREVIEW_FOLDER).rglob("*.safetensors"))
    assert len(staged) == 1 and staged[0].read_bytes() == lora.read_bytes()
    name = staged[0].stem
    assert p.prompt == f"dog, red ball<lora:{name}:0.4>"
    assert webui.seen_opts[-1]["lora_add_hashes_to_infotext"] is True
    assert webui.opts.lora_add_hashes_to_infotext is False, "the person's setting is back after the image"
    assert result.loras_applied == [str(lora)] and parse_lora_hashes(result.infotext) == {name: name[-12:]}
    host.txt2img(request(loras=[LoraSpec(str(lora), 1.0)]))
    assert list((webui.lora_dir / PREVIEW_FOLDER).rglob("*.safetensors")) == staged, "the copy is reused"
    zero = host.txt2img(request(loras=[LoraSpec(str(lora), 0.0)]))
    assert "<lora:" not in webui.processed[-1].prompt and zero.loras_applied == []

    host.forget_preview_loras(lora.parents[1])
    assert not (webui.lora_dir / PREVIEW_FOLDER).exists() and name not in webui.networks_available
    host.forget_preview_loras(lora.parents[1])  # nothing left: no error


@pytest.mark.parametrize("failure", ["missing", "errors", "unfit", "unreported"])
def test_a_lora_the_webui_skipped_raises_naming_the_file(webui, host, lora, failure):
    name = host._staging_area().name_for(lora)
    if failure == "missing":
        webui.list_available_networks = lambda: None  # the Lora extension never finds the file
    elif failure == "errors":
        webui.skip_networks.add(name)
    elif failure == "unfit":
        webui.unfit_networks.add(name)
    else:
        webui.opts.data_labels.pop("lora_add_hashes_to_infotext")  # an older WebUI: no hashes in the infotext
    with pytest.raises(HostError, match="dog-000002.safetensors"):
        host.txt2img(request(loras=[LoraSpec(str(lora), 0.8)]))


def test_forge_does_not_check_layers(tmp_path, monkeypatch, lora):
    fake = FakeWebUI(tmp_path, monkeypatch, forge=True)
    write_safetensors(fake.ckpt_dir / "tiny-sd1.safetensors", SD1_KEYS)
    fake.list_models()
    host = WebUIHost()
    name = host._staging_area().name_for(lora)
    fake.unfit_networks.add(name)  # Forge keeps no per-layer record; the hashes are its evidence
    assert host.txt2img(request(loras=[LoraSpec(str(lora), 0.8)])).loras_applied == [str(lora)]


def test_lora_files_are_checked_before_drawing(webui, host, lora, tmp_path):
    with pytest.raises(HostError, match="gone-000003"):
        host.txt2img(request(loras=[LoraSpec(str(lora), 1.0), LoraSpec(str(tmp_path / "gone-000003.safetensors"), 0.5)]))
    with pytest.raises(HostError, match="gone-000004"):
        host.txt2img(request(loras=[LoraSpec(str(tmp_path / "gone-000004.safetensors"), 0.0)]))
    pt = tmp_path / "old.pt"
    pt.write_bytes(b"pickle")
    with pytest.raises(HostError, match="old.pt"):
        host.txt2img(request(loras=[LoraSpec(str(pt), 1.0)]))
    xl_lora = write_safetensors(tmp_path / "xl-style.safetensors", SDXL_LORA_KEYS)
    with pytest.raises(HostError, match="xl-style.safetensors.*SDXL"):
        host.txt2img(request(loras=[LoraSpec(str(xl_lora), 1.0)]))
    xl = next(c for c in host.checkpoints() if c.arch == "sdxl")
    with pytest.raises(HostError, match="dog-000002"):
        host.txt2img(request(checkpoint=xl.path, loras=[LoraSpec(str(lora), 1.0)]))
    assert webui.processed == [], "nothing is drawn with a LoRA that cannot apply"
    assert lora_family(lora) == "sd" and lora_family(xl_lora) == "sdxl" and lora_family(pt) is None


def test_without_the_lora_extension_loras_raise_and_plain_images_still_work(webui, host, lora, monkeypatch):
    monkeypatch.delitem(sys.modules, "networks")
    with pytest.raises(HostError, match="Lora extension"):
        host.txt2img(request(loras=[LoraSpec(str(lora), 1.0)]))
    assert host.txt2img(request()).image.size == (64, 64)
    host.refresh_loras()


# ---- interrupts --------------------------------------------------------------------------------------------------

def test_interrupt_event_before_the_request_draws_nothing(webui, host):
    event = threading.Event()
    event.set()
    with pytest.raises(HostInterrupted):
        host.txt2img(request(), interrupt=event)
    assert webui.processed == []
    host.interrupt()  # nothing running: the WebUI is not told anything
    assert "interrupt" not in webui.state.calls


@pytest.mark.parametrize("how", ["event", "interrupt()"])
def test_interrupt_during_the_request(webui, host, how):
    webui.steps_delay = 0.02
    event = threading.Event()
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = host.txt2img(request(steps=500), interrupt=event)
        except BaseException as exc:  # noqa: BLE001 — checked below
            outcome["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 10
    while not webui.processed and time.monotonic() < deadline:
        time.sleep(0.01)
    event.set() if how == "event" else host.interrupt()
    worker.join(10)
    assert not worker.is_alive() and isinstance(outcome.get("error"), HostInterrupted)
    assert "interrupt" in webui.state.calls and webui.state.calls[-1] == "end"
    webui.steps_delay = 0.0
    assert host.txt2img(request()).image.size == (64, 64), "the next request is not interrupted"


def test_a_webui_failure_becomes_a_host_error(webui, host, monkeypatch):
    def broken(p):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(sys.modules["modules.processing"], "process_images", broken)
    with pytest.raises(HostError, match="CUDA out of memory"):
        host.txt2img(request())
    assert webui.state.calls[-1] == "end"


# ---- GPU ---------------------------------------------------------------------------------------------------------

def test_release_and_restore_on_a1111(webui, host):
    model = webui.model_data.sd_model
    other = Model(model.sd_checkpoint_info)
    webui.model_data.loaded_sd_models.append(other)
    host.restore_gpu()
    assert webui.to_device_calls == []
    host.release_gpu()
    host.release_gpu()
    assert webui.unload_calls == [model, other] and model.device == other.device == "cpu"
    host.restore_gpu()
    host.restore_gpu()
    assert webui.to_device_calls == [model] and model.device == "cuda" and other.device == "cpu"
    host.release_gpu()
    host.txt2img(request())
    assert model.device == "cuda" and len(webui.to_device_calls) == 2, "txt2img brings the model back first"


def test_release_with_no_model_loaded_loads_nothing(tmp_path, monkeypatch):
    fake = FakeWebUI(tmp_path, monkeypatch)
    host = WebUIHost()
    host.release_gpu()
    host.restore_gpu()
    assert fake.unload_calls == [] and fake.to_device_calls == []


def test_forge_unloads_everything_and_restores_by_itself(tmp_path, monkeypatch):
    fake = FakeWebUI(tmp_path, monkeypatch, forge=True)
    host = WebUIHost()
    assert host.name == "forge"
    host.release_gpu()
    host.release_gpu()
    host.restore_gpu()
    assert fake.unload_calls == [None] and fake.soft_empty_cache_calls == 1 and fake.to_device_calls == []


def test_a1111_is_named_webui(host):
    assert host.name == "webui"


# ---- taggers, upscalers, folders ---------------------------------------------------------------------------------

def test_deepbooru_tags_best_first_with_the_given_threshold(webui, host):
    infos = {t.id: t for t in host.taggers()}
    assert set(infos) == {"deepbooru", "blip", "clip"}
    assert infos["deepbooru"].uses_threshold and infos["deepbooru"].default_threshold == 0.5
    picture = Image.new("RGB", (32, 32))
    assert host.tag("deepbooru", picture) == ["solo", "dog"]
    assert host.tag("deepbooru", picture, 0.3) == ["solo", "dog", "grass"]
    assert webui.deepbooru_calls[0] == "start" and webui.deepbooru_calls[-1] == "stop"
    assert webui.opts.deepbooru_sort_alpha is True and webui.opts.interrogate_return_ranks is True
    assert webui.opts.interrogate_deepbooru_score_threshold == 0.5, "the person's options are back"


def test_blip_and_clip_interrogator(webui, host):
    picture = Image.new("RGB", (32, 32))
    assert host.tag("clip", picture) == ["a dog on the grass", "by an artist", "sharp focus"]
    assert webui.interrogator_calls[0][1]["interrogate_return_ranks"] is False
    assert host.tag("blip", picture) == ["a dog on the grass"]
    assert webui.interrogator_calls[1:] == ["load", "caption", "unload"]
    webui.interrogator_result = "a dog<error>"
    with pytest.raises(HostError):
        host.tag("clip", picture)
    with pytest.raises(HostError, match="nope"):
        host.tag("nope", picture)


def test_offline_offers_only_taggers_with_local_models(webui, host, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert host.taggers() == []
    model = webui.root / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    assert [t.id for t in host.taggers()] == ["deepbooru"]


def hf_cache(monkeypatch, cache, repo_id, filename):
    """A Hugging Face cache at ``cache`` holding one file of ``repo_id``."""
    import huggingface_hub.constants

    snapshot = cache / ("models--" + repo_id.replace("/", "--"))
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc")
    (snapshot / "snapshots" / "abc").mkdir(parents=True)
    (snapshot / "snapshots" / "abc" / filename).write_bytes(b"file")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_offline_says_why_each_tagger_is_left_out_and_what_to_do(webui, host, monkeypatch, tmp_path):
    """A1111 has DeepBooru, BLIP and CLIP built in: a host offering none of them says why for each (the model is
    not on disk and the WebUI runs offline, where it goes and where it comes from), and why WD14 is missing."""
    assert [t.title for t in host.unavailable_taggers()] == ["WD14 tagger"]  # online: only the extension is missing
    assert "not loaded" in host.unavailable_taggers()[0].reason
    assert "stable-diffusion-webui-wd14-tagger" in host.unavailable_taggers()[0].reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no CLIP model in ~/.cache/clip
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    missing = {t.title: t.reason for t in host.unavailable_taggers()}
    assert host.taggers() == [] and list(missing) == [
        "DeepBooru (anime tags)", "BLIP (a sentence)", "CLIP interrogator (BLIP sentence + CLIP keywords)",
        "WD14 tagger"]
    models = webui.root / "models"
    deepbooru = missing["DeepBooru (anime tags)"]
    assert str(models / "torch_deepdanbooru") in deepbooru and "model-resnet_custom_v3.pt" in deepbooru
    assert "HF_HUB_OFFLINE" in deepbooru and "offline" in deepbooru
    assert "TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt" in deepbooru
    assert str(models / "BLIP") in missing["BLIP (a sentence)"]
    assert "model_base_caption_capfilt_large.pth" in missing["BLIP (a sentence)"]
    model = models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    (models / "BLIP").mkdir()
    (models / "BLIP" / "model_base_caption_capfilt_large.pth").write_bytes(b"weights")
    assert [t.id for t in host.taggers()] == ["deepbooru"]  # BLIP's tokenizer is not in the Hugging Face cache
    tokenizer = next(t.reason for t in host.unavailable_taggers() if t.title == "BLIP (a sentence)")
    assert "bert-base-uncased tokenizer" in tokenizer and "not in the cache" in tokenizer
    hf_cache(monkeypatch, tmp_path / "hf", "bert-base-uncased", "vocab.txt")
    assert [t.id for t in host.taggers()] == ["deepbooru", "blip"]
    missing = {t.title: t.reason for t in host.unavailable_taggers()}
    assert list(missing) == ["CLIP interrogator (BLIP sentence + CLIP keywords)", "WD14 tagger"]
    clip = missing["CLIP interrogator (BLIP sentence + CLIP keywords)"]
    assert "ViT-L-14.pt" in clip and str(tmp_path / "home" / ".cache" / "clip") in clip
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "clip" / "ViT-L-14.pt").write_bytes(b"weights")
    assert [t.id for t in host.taggers()] == ["deepbooru", "blip", "clip"]
    assert [t.title for t in host.unavailable_taggers()] == ["WD14 tagger"]


class WD14Interrogator:
    """An interrogator of the WD14 tagger extension (picobyte's fork): a Hugging Face model or a local one."""

    def __init__(self, name, repo_id=None, local_model=None):
        self.name, self.repo_id, self.local_model, self.model_path, self.is_hf = (
            name, repo_id, local_model, "model.onnx", local_model is None)

    def interrogate(self, image):
        return {"general": 0.9}, {"long_hair": 0.9, "^_^": 0.6, "solo": 0.95, "grass": 0.2}


@pytest.fixture
def wd14(monkeypatch):
    utils = types.ModuleType("tagger.utils")
    utils.interrogators = {"wd14-vit.v2": WD14Interrogator("WD14 ViT v2", repo_id="SmilingWolf/wd-v1-4-vit-tagger-v2")}
    utils.refreshed = 0

    def refresh_interrogators():  # what its refresh button does: add the models found on disk
        utils.refreshed += 1
        utils.interrogators["local-onnx"] = WD14Interrogator("local-onnx", local_model="/m/model.onnx")
        return sorted(utils.interrogators)

    utils.refresh_interrogators = refresh_interrogators
    monkeypatch.setitem(sys.modules, "tagger.utils", utils)
    return utils


def test_wd14_tagger_extension_interrogators(webui, host, wd14):
    wd = next(t for t in host.taggers() if t.id == "wd14:wd14-vit.v2")
    assert "WD14 ViT v2" in wd.title and wd.uses_threshold and wd.default_threshold == 0.35
    assert "wd14:local-onnx" in {t.id for t in host.taggers()} and wd14.refreshed == 1, "refreshed once"
    picture = Image.new("RGB", (32, 32))
    assert host.tag(wd.id, picture) == ["solo", "long hair", "^_^"]
    assert host.tag(wd.id, picture, 0.1) == ["solo", "long hair", "^_^", "grass"]


def test_wd14_offline_offers_local_and_cached_models_only(webui, host, wd14, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert [t.id for t in host.taggers()] == ["wd14:local-onnx"]
    wd14_reason = next(t.reason for t in host.unavailable_taggers() if t.title == "WD14 tagger")
    assert "WD14 ViT v2" in wd14_reason and "not on disk" in wd14_reason and "local-onnx" not in wd14_reason
    snapshot = tmp_path / "hf" / "models--SmilingWolf--wd-v1-4-vit-tagger-v2"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc")
    (snapshot / "snapshots" / "abc").mkdir(parents=True)
    (snapshot / "snapshots" / "abc" / "model.onnx").write_bytes(b"onnx")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert [t.id for t in host.taggers()] == ["wd14:wd14-vit.v2", "wd14:local-onnx"]
    assert "WD14 tagger" not in [t.title for t in host.unavailable_taggers()]


def test_upscalers_leave_out_none_and_give_the_exact_size(webui, host):
    assert host.upscalers() == ["Lanczos", "R-ESRGAN 4x+"]
    picture = Image.new("RGB", (50, 30))
    assert host.upscale(picture, "R-ESRGAN 4x+", 2.0).size == (100, 60)
    assert webui.upscalers[2].calls == [(2.0, "/m/esrgan.pth")]
    with pytest.raises(HostError):
        host.upscale(picture, "None", 2.0)
    with pytest.raises(HostError):
        host.upscale(picture, "Lanczos", 0)


def test_folders_and_small_calls(webui, host, tmp_path):
    assert host.lora_dir() == webui.lora_dir and webui.lora_dir.is_dir()
    assert host.outputs_dir() == tmp_path / "outputs" and (tmp_path / "outputs").is_dir()
    webui.opts.outdir_samples = str(tmp_path / "my images")
    assert host.outputs_dir() == tmp_path / "my images"
    calls = webui.list_networks_calls
    host.refresh_loras()
    assert webui.list_networks_calls == calls + 1
    assert host.send_to_txt2img("<lora:dog:0.8>") is False


def test_parse_lora_hashes():
    text = 'dog\nSteps: 20, Lora hashes: "tt-a: 0123456789ab, tt-b: ba9876543210", Version: 1.10.1'
    assert parse_lora_hashes(text) == {"tt-a": "0123456789ab", "tt-b": "ba9876543210"}
    assert parse_lora_hashes("dog\nSteps: 20, Lora hashes: tt-a: 0123456789ab, Version: v") == {"tt-a": "0123456789ab"}
    assert parse_lora_hashes("Lora hashes: in the prompt only\nSteps: 20") == {}
