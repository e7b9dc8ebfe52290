"""A real WebUI for the WebUI-host tests: started on loopback, driven over HTTP, stopped at the end.

How the WebUI host is tested against a real WebUI (``TRAIN_TOOLS_WEBUI_DIR=/path/to/stable-diffusion-webui``):

- The WebUI is started from its own folder with its own Python (``<dir>/venv/bin/python``, or
  ``TRAIN_TOOLS_WEBUI_PYTHON``; more launch options in ``TRAIN_TOOLS_WEBUI_ARGS``, e.g. ``--always-cpu`` for
  Forge) and ``--data-dir`` pointing at a temporary folder, so nothing in the WebUI install is
  changed: the temporary folder holds the WebUI's config, its models folder (the tiny SD1 checkpoint with a yaml
  and a local CLIP text-encoder config beside it, since the machine is offline; for Forge, which reads no yaml, a
  config folder in its own layout that ``tests/webui_probe/scripts/forge_tiny_sd1.py`` registers inside the Forge
  process, see ``write_tiny_sd1_forge_repo``), its Lora folder, and an
  ``extensions/`` folder with two symlinks made for the run: this repository (the real extension) and
  ``tests/webui_probe`` (a test-only extension). Everything is removed when the process ends.
- The test-only extension exposes the real ``lib_trainer.hosts.webui.host.WebUIHost`` — constructed inside the WebUI
  process, using the real ``modules``, queue lock and Lora extension — as one HTTP route. :class:`RemoteHost` is a
  ``Host`` that forwards each call there, so ``tests/host_contract.py`` runs unchanged against the real WebUI.
  Interrupt events are forwarded too: setting the event asks the server to set the request's own event.
- The WebUI's own API (``/sdapi/v1/…``, enabled with ``--api``) is used to observe from outside what the host did
  (tests/test_webui_real.py): the checkpoint list, the Lora list, the options a request must leave unchanged, and a
  person's own txt2img after ours.
- The WebUI runs with ``HF_HUB_OFFLINE=1``: nothing can be downloaded here. DeepBooru gets stand-in weights (random,
  in the real model's architecture, with a short tag list) so that the real tagging path runs; BLIP/CLIP cannot
  run offline and are therefore not offered by the host. With ``TRAIN_TOOLS_WEBUI_WD14_DIR`` pointing at a
  checkout of picobyte's WD14 tagger extension (and onnxruntime in the WebUI's environment, as that extension
  requires), it is linked in too, with a stand-in ONNX model (written here byte by byte; its tags follow the
  picture's colour) in its local-model folder.

Start-up costs about half a minute on a CPU; one server is shared by every test module of the session.
"""
from __future__ import annotations

import atexit
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

from lib_trainer.hosts.base import (
    CheckpointInfo,
    Host,
    HostError,
    HostInterrupted,
    TaggerInfo,
    Txt2ImgRequest,
    Txt2ImgResult,
)

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "webui_probe"
WEBUI_ENV = "TRAIN_TOOLS_WEBUI_DIR"
PYTHON_ENV = "TRAIN_TOOLS_WEBUI_PYTHON"
ARGS_ENV = "TRAIN_TOOLS_WEBUI_ARGS"  # more launch options, e.g. "--always-cpu" for Forge
WD14_ENV = "TRAIN_TOOLS_WEBUI_WD14_DIR"  # a checkout of the WD14 tagger extension to link in as well
START_TIMEOUT = 420.0
CHECKPOINT_NAME = "tiny-sd1"
DEEPBOORU_TAGS = ["1girl", "solo", "dog", "outdoors", "red_ball", "^_^", "rating:safe"]


# ---- the tiny checkpoint, set up the way a WebUI loads it ------------------------------------------------------

def write_tiny_sd1_config(webui_dir: Path, checkpoint: Path, clip_dir: Path) -> Path:
    """``<checkpoint>.yaml`` for a tiny SD1 model, made from the WebUI's own ``configs/v1-inference.yaml``, plus a
    local CLIP text-encoder config and tokenizer in ``clip_dir`` (the yaml's FrozenCLIPEmbedder would otherwise
    fetch ``openai/clip-vit-large-patch14`` from the Hugging Face hub): the toy model's writers, at the tiny sizes."""
    from lib_trainer.demo.tiny_model import TINY_CONFIGS
    from lib_trainer.demo.toy_model import write_clip_folder, write_webui_yaml

    cfg = TINY_CONFIGS["sd1"]
    write_clip_folder(clip_dir, cfg)
    text = (webui_dir / "configs" / "v1-inference.yaml").read_text(encoding="utf-8")
    return write_webui_yaml(checkpoint, text, str(clip_dir), cfg)


FORGE_REPO_ENV = "TRAIN_TOOLS_FORGE_TINY_SD1_REPO"  # read by tests/webui_probe/scripts/forge_tiny_sd1.py
FORGE_SD15_REPO = Path("backend", "huggingface", "runwayml", "stable-diffusion-v1-5")


def write_tiny_sd1_forge_repo(webui_dir: Path, repo: Path, config: Optional[dict[str, Any]] = None) -> Path:
    """A config folder for the tiny SD1 model in the layout Forge builds a model from, made from Forge's own SD1.5
    folder (``backend/huggingface/runwayml/stable-diffusion-v1-5``) with the tiny text encoder's and VAE's sizes,
    plus ``guess.json``: the UNet sizes huggingface_guess must match for it.

    Forge reads no yaml for the architecture: huggingface_guess matches the checkpoint's UNet against a fixed list
    (SD1.5 only at model_channels 320 and context_dim 768) and Forge builds the text encoder and VAE from that
    entry's folder, so a smaller SD1 checkpoint is refused ("Failed to recognize model type!"). The probe extension
    registers this folder as one more SD1.5 entry inside the Forge process; nothing in the Forge install changes.
    ``config``: the model's sizes in ``lib_trainer.demo.tiny_model``'s layout (default: the tiny SD1 model's; the
    toy model's ``lib_trainer.demo.toy_model.TOY_CONFIG`` works too).
    """
    from lib_trainer.demo.tiny_model import TINY_CONFIGS

    cfg = config or TINY_CONFIGS["sd1"]
    te, unet, vae = cfg["text_encoders"][0], cfg["unet"], cfg["vae"]
    source = webui_dir / FORGE_SD15_REPO
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("unet", "safety_checker", "feature_extractor"))
    index = json.loads((repo / "model_index.json").read_text(encoding="utf-8"))
    for part in ("safety_checker", "feature_extractor"):  # Forge skips them; their folders are not copied
        index.pop(part, None)
    (repo / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    def update(part: str, **values: Any) -> None:
        path = repo / part / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config.update(values)
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    update("text_encoder", hidden_size=te["width"], intermediate_size=4 * te["width"],
           num_hidden_layers=te["layers"], num_attention_heads=max(1, te["width"] // 64), projection_dim=te["width"])
    update("vae", block_out_channels=[vae["ch"] * m for m in vae["ch_mult"]], layers_per_block=vae["num_res_blocks"],
           latent_channels=vae["z_channels"])
    (repo / "guess.json").write_text(json.dumps({
        "model_channels": unet["model_channels"], "context_dim": unet["context_dim"],
        "use_linear_in_transformer": unet["use_linear_in_transformer"],
    }), encoding="utf-8")
    return repo


def write_deepbooru_standin(python: str, webui_dir: Path, target: Path) -> None:
    """Random weights in the architecture of the WebUI's DeepDanbooru model (built by the WebUI's own
    ``modules/deepbooru_model.py``), with a short tag list: the real tagging code runs; the tags mean nothing."""
    script = (
        "import importlib.util, sys, types, torch\n"
        # the model file alone, without starting the WebUI's device set-up (Forge's would look for CUDA)
        "package = sys.modules['modules'] = types.ModuleType('modules')\n"
        "package.__path__ = []\n"
        "package.devices = sys.modules['modules.devices'] = types.ModuleType('modules.devices')\n"
        "spec = importlib.util.spec_from_file_location('deepbooru_model', 'modules/deepbooru_model.py')\n"
        "deepbooru_model = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(deepbooru_model)\n"
        "torch.manual_seed(0)\n"
        "model = deepbooru_model.DeepDanbooruModel()\n"
        f"tags = {DEEPBOORU_TAGS!r}\n"
        "tags += [f'standin_{i}' for i in range(model.n_Conv_178.out_channels - len(tags))]\n"
        "state = {k: v.half() for k, v in model.state_dict().items()}\n"
        "state['tags'] = tags\n"
        "import io, zipfile\n"
        "buffer = io.BytesIO()\n"
        "torch.save(state, buffer)\n"
        # the WebUI's safe unpickler accepts only the entries older torch wrote (no .format_version and
        # .storage_alignment), as a real downloaded model-resnet_custom_v3.pt has them
        "source = zipfile.ZipFile(buffer)\n"
        f"with zipfile.ZipFile({str(target)!r}, 'w', zipfile.ZIP_STORED) as out:\n"
        "    for info in source.infolist():\n"
        "        if info.filename.rsplit('/', 1)[-1] not in ('.format_version', '.storage_alignment'):\n"
        "            out.writestr(info, source.read(info.filename))\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([python, "-c", script], cwd=webui_dir, env=_child_env(), capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        raise RuntimeError(f"could not write the DeepBooru stand-in:\n{done.stderr[-3000:]}")


# -- a stand-in WD14 tagger model: a few bytes of ONNX, written by hand (no onnx package needed) -----------------

WD14_MODEL_FOLDER = "wd-v1-4-convnextv2-tagger-v2"  # a folder name picobyte's fork accepts for a local model
# (tag, category, bias, weight of the mean blue/green/red channel): the model sees BGR pixels, 0–255
WD14_TAGS = [
    ("general", 9, 2.0, (0, 0, 0)), ("sensitive", 9, -5.0, (0, 0, 0)), ("questionable", 9, -5.0, (0, 0, 0)),
    ("explicit", 9, -5.0, (0, 0, 0)),
    ("red_theme", 0, -1.0, (-5, -5, 10)), ("blue_theme", 0, -1.0, (10, -5, -5)),
    ("green_theme", 0, -1.0, (-5, 10, -5)), ("^_^", 0, 0.0, (0, 0, 0)), ("solo", 0, 1.0, (0, 0, 0)),
]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: an int (varint) or bytes/str (length-delimited)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, dims: list, values: list) -> bytes:
    import struct

    return (b"".join(_field(1, d) for d in dims) + _field(2, 1) + _field(8, name)
            + _field(9, struct.pack(f"<{len(values)}f", *values)))


def _value_info(name: str, dims: list) -> bytes:
    shape = b"".join(_field(1, _field(1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))


def _node(op: str, inputs: list, output: str, attributes: bytes = b"") -> bytes:
    return b"".join(_field(1, i) for i in inputs) + _field(2, output) + _field(3, output) + _field(4, op) + attributes


def wd14_standin_onnx() -> bytes:
    """sigmoid(mean colour / 255 · W + b): a real ONNX model whose tags follow the picture's colour."""
    count = len(WD14_TAGS)
    weights = [WD14_TAGS[j][3][c] for c in range(3) for j in range(count)]  # [3, count], row-major
    ints = b"".join(_field(8, a) for a in (1, 2))
    axes = _field(5, _field(1, "axes") + ints + _field(20, 7))  # AttributeProto: INTS
    keepdims = _field(5, _field(1, "keepdims") + _field(3, 0) + _field(20, 2))  # INT
    graph = b"".join([
        _field(1, _node("ReduceMean", ["input_1:0"], "mean", axes + keepdims)),
        _field(1, _node("Mul", ["mean", "scale"], "scaled")),
        _field(1, _node("MatMul", ["scaled", "weights"], "logits")),
        _field(1, _node("Add", ["logits", "bias"], "shifted")),
        _field(1, _node("Sigmoid", ["shifted"], "predictions_sigmoid")),
        _field(2, "wd14_standin"),
        _field(5, _tensor("scale", [], [1 / 255])),
        _field(5, _tensor("weights", [3, count], weights)),
        _field(5, _tensor("bias", [count], [t[2] for t in WD14_TAGS])),
        _field(11, _value_info("input_1:0", [1, 448, 448, 3])),
        _field(12, _value_info("predictions_sigmoid", [1, count])),
    ])
    return _field(1, 8) + _field(2, "train-tools-tests") + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))


def write_wd14_standin(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(wd14_standin_onnx())
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},1" for i, (name, cat, _, _) in enumerate(WD14_TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRAIN_TOOLS_REPO=str(REPO), PYTHONUNBUFFERED="1")
    return env


# ---- the server --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebUIServer:
    """One real WebUI process with Train Tools and the probe extension, on 127.0.0.1."""

    def __init__(self, webui_dir: Path, tiny_checkpoint: Path) -> None:
        self.webui_dir = webui_dir.resolve()
        python = os.environ.get(PYTHON_ENV) or str(self.webui_dir / "venv" / "bin" / "python")
        if not Path(python).exists():
            raise RuntimeError(f"no Python for the WebUI at {python}: set {PYTHON_ENV}")
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="tt-webui-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "webui.log"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        try:
            self._prepare(tiny_checkpoint)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _prepare(self, tiny_checkpoint: Path) -> None:
        models = self.data_dir / "models"
        self.checkpoint = models / "Stable-diffusion" / f"{CHECKPOINT_NAME}.safetensors"
        self.checkpoint.parent.mkdir(parents=True)
        shutil.copyfile(tiny_checkpoint, self.checkpoint)
        self.forge_repo: Optional[Path] = None
        if (self.webui_dir / "configs" / "v1-inference.yaml").is_file():  # Forge reads no yaml: it has none
            write_tiny_sd1_config(self.webui_dir, self.checkpoint, models / "tiny-clip-sd1")
        elif (self.webui_dir / FORGE_SD15_REPO).is_dir():
            self.forge_repo = write_tiny_sd1_forge_repo(self.webui_dir, models / "tiny-sd1-forge")
        write_deepbooru_standin(self.python, self.webui_dir, models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
        extensions = self.data_dir / "extensions"
        extensions.mkdir()
        (extensions / "train_tools").symlink_to(REPO, target_is_directory=True)
        (extensions / "train_tools_probe").symlink_to(PROBE, target_is_directory=True)
        wd14 = os.environ.get(WD14_ENV)
        self.wd14 = bool(wd14)
        if wd14:  # the WD14 tagger extension, with a stand-in model where it looks for local ONNX models
            (extensions / "wd14_tagger").symlink_to(Path(wd14).resolve(), target_is_directory=True)
            write_wd14_standin(models / "TaggerOnnx" / WD14_MODEL_FOLDER)

    def start(self) -> None:
        args = [
            self.python, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test",
            "--skip-version-check", "--no-download-sd-model", "--use-cpu", "all", "--no-half", "--api",
            "--server-name", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--ckpt", str(self.checkpoint), *os.environ.get(ARGS_ENV, "").split(),
        ]
        if (self.webui_dir / "modules_forge").is_dir():
            # Forge (gradio 4) serves files only from its allowed paths, by default the data folder alone: with
            # --data-dir elsewhere its own script.js, ui.js, … would answer 403 and the page would run without them.
            args += ["--gradio-allowed-path", str(self.webui_dir)]
        env = _child_env()
        if self.forge_repo is not None:
            env[FORGE_REPO_ENV] = str(self.forge_repo)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, cwd=self.webui_dir, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the WebUI exited with {self.process.returncode}:\n{self.log_tail()}")
            # No request before the WebUI says it has started: one that arrives between gradio's launch and the
            # API set-up makes starlette build its middleware stack, and the WebUI then dies adding its own.
            if "Startup time:" not in self.log_tail(400):
                time.sleep(1.0)
                continue
            try:
                if self.call("name") and self.get("/sdapi/v1/sd-models"):
                    # A1111 loads its model in a background thread after start-up: one image through the
                    # WebUI's own API waits for it, so the tests never race the WebUI's own loading
                    self.post("/sdapi/v1/txt2img", {"prompt": "warm-up", "steps": 1, "width": 64, "height": 64})
                    return
            except (OSError, RemoteError, ValueError):
                pass
            time.sleep(1.0)
        raise RuntimeError(f"the WebUI did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)  # symlinks are removed, never followed

    # ---- HTTP ---------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 600.0) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8") or "null")

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def call(self, method: str, **args: Any) -> Any:
        answer = self._request("POST", "/train_tools_probe/v1/call", {"method": method, "args": args})
        error = answer.get("error")
        if error:
            kind = {"HostInterrupted": HostInterrupted, "HostError": HostError}.get(error["kind"], RemoteError)
            raise kind(error["message"])
        return answer.get("result")


class RemoteError(RuntimeError):
    """Something other than a HostError went wrong inside the WebUI."""


_server: Optional[WebUIServer] = None
_server_lock = threading.Lock()


def shared_server(tiny_checkpoint: Path) -> WebUIServer:
    """The session's WebUI (started on first use, stopped when the test process exits)."""
    global _server
    with _server_lock:
        if _server is None:
            webui_dir = Path(os.environ[WEBUI_ENV])
            server = WebUIServer(webui_dir, tiny_checkpoint)
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            atexit.register(server.stop)
            _server = server
        return _server


# ---- the Host that forwards to it --------------------------------------------------------------------------------

def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image(data: str):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


class RemoteHost(Host):
    """The WebUI host of a running WebUI, called through the probe extension (see the module docstring)."""

    def __init__(self, server: WebUIServer) -> None:
        self.server = server
        self.name = server.call("name")

    def checkpoints(self, refresh: bool = False) -> list[CheckpointInfo]:
        return [CheckpointInfo(**c) for c in self.server.call("checkpoints", refresh=refresh)]

    def release_gpu(self) -> None:
        self.server.call("release_gpu")

    def restore_gpu(self) -> None:
        self.server.call("restore_gpu")

    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        from dataclasses import asdict

        token = uuid.uuid4().hex if interrupt is not None else ""
        done = threading.Event()

        def forward() -> None:  # the event lives here; the request's own event lives in the WebUI
            while not done.wait(0.05):
                if interrupt.is_set():
                    while not done.is_set() and not self.server.call("set_event", token=token):
                        done.wait(0.05)  # the request has not reached the host yet
                    return

        watcher = None
        if interrupt is not None:
            watcher = threading.Thread(target=forward, daemon=True)
            watcher.start()
        try:
            answer = self.server.call("txt2img", request=asdict(request), token=token,
                                      interrupted=interrupt is not None and interrupt.is_set())
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        return Txt2ImgResult(image=_image(answer["image"]), infotext=answer["infotext"], seed=answer["seed"],
                             loras_applied=answer["loras_applied"])

    def interrupt(self) -> None:
        self.server.call("interrupt")

    def samplers(self) -> list[str]:
        return self.server.call("samplers")

    def taggers(self) -> list[TaggerInfo]:
        return [TaggerInfo(**t) for t in self.server.call("taggers")]

    def tag(self, tagger_id: str, image, threshold: Optional[float] = None) -> list[str]:
        return self.server.call("tag", tagger_id=tagger_id, image=_png(image.convert("RGB")), threshold=threshold)

    def upscalers(self) -> list[str]:
        return self.server.call("upscalers")

    def upscale(self, image, upscaler: str, scale: float):
        return _image(self.server.call("upscale", image=_png(image.convert("RGB")), upscaler=upscaler, scale=scale))

    def lora_dir(self) -> Path:
        return Path(self.server.call("lora_dir"))

    def outputs_dir(self) -> Path:
        return Path(self.server.call("outputs_dir"))

    def refresh_loras(self) -> None:
        self.server.call("refresh_loras")

    def send_to_txt2img(self, prompt: str) -> bool:
        return self.server.call("send_to_txt2img", prompt=prompt)

    def forget_preview_loras(self, version_dir: Path) -> None:
        self.server.call("forget_preview_loras", version_dir=str(version_dir))
