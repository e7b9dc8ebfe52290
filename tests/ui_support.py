"""Shared pieces of the tab's tests (tests/test_ui_*.py): a small host for the UI callbacks, contexts, pictures.

``PaintHost`` keeps to the host contract where the tab relies on it (checkpoints by path/title, taggers, txt2img
returning an image of the asked size and listing the LoRAs applied, a Lora folder) without loading any model,
so that the callbacks can be called directly in milliseconds. The real hosts are tested by the host contract
suite; the tab is driven end to end against the standalone host by tests/test_browser.py.
"""
from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any, List, Optional

from PIL import Image

from lib_trainer.hosts.base import CheckpointInfo, Host, HostError, TaggerInfo, Txt2ImgRequest, Txt2ImgResult
from lib_trainer.projects import Workspace
from lib_trainer.ui.context import UIContext, UISettings
from tests.trainer_fixtures import write_picture


class PaintHost(Host):
    """Draws a flat colour per request (seed and LoRA weights decide it), tags every picture "dog, solo"."""

    name = "paint"

    def __init__(self, root: Path, taggers: bool = False, base_model: Optional[Path] = None):
        self.root = Path(root)
        self.model = base_model or self.root / "models" / "base.safetensors"
        self.model.parent.mkdir(parents=True, exist_ok=True)
        if not self.model.exists():
            self.model.write_bytes(b"placeholder: only its path is used")
        self.with_taggers = taggers
        self.sent: List[str] = []
        self.forgotten: List[Path] = []  # version folders whose staged preview LoRAs were dropped
        self.requests: List[Txt2ImgRequest] = []
        self._lock = threading.Lock()

    def checkpoints(self, refresh: bool = False) -> List[CheckpointInfo]:
        return [CheckpointInfo(title="base.safetensors", path=str(self.model), arch="sd1")]

    def release_gpu(self) -> None:
        pass

    def restore_gpu(self) -> None:
        pass

    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        with self._lock:
            self.requests.append(request)
        shade = int(sum(l.weight for l in request.loras) * 60 + request.seed) % 256
        image = Image.new("RGB", (request.width, request.height), (shade, 90, 160))
        return Txt2ImgResult(image=image, infotext=f"{request.prompt}\nSteps: {request.steps}, Seed: {request.seed}",
                             seed=request.seed, loras_applied=[l.path for l in request.loras if l.weight])

    def interrupt(self) -> None:
        pass

    def samplers(self) -> List[str]:
        return ["Euler a", "Euler"]

    def taggers(self) -> List[TaggerInfo]:
        return [TaggerInfo("paint", "Paint tagger", True, 0.35)] if self.with_taggers else []

    def tag(self, tagger_id: str, image: Any, threshold: Optional[float] = None) -> List[str]:
        if not self.with_taggers or tagger_id != "paint":
            raise HostError("no such tagger")
        return ["dog", "solo"]

    def upscalers(self) -> List[str]:
        return []

    def upscale(self, image: Any, upscaler: str, scale: float) -> Any:
        raise HostError("no upscaler")

    def lora_dir(self) -> Path:
        path = self.root / "models" / "Lora"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def outputs_dir(self) -> Path:
        return self.root

    def refresh_loras(self) -> None:
        pass

    def send_to_txt2img(self, prompt: str) -> bool:
        self.sent.append(prompt)
        return False

    def forget_preview_loras(self, version_dir: Path) -> None:
        self.forgotten.append(Path(version_dir))


class NoRunner:
    """For callbacks that only read jobs: a runner with an empty queue (status is the version's own state)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def jobs(self) -> list:
        return []

    def status(self, project: str, version: str, events: int = 20) -> dict:
        return {**self.workspace.version(project, version).to_dict(), "job": None, "position": None}


def make_context(tmp: Path, runner: Any = None, taggers: bool = False, **settings: Any) -> UIContext:
    host = PaintHost(tmp, taggers=taggers)
    workspace = Workspace(tmp / "outputs" / "train_tools")
    return UIContext(workspace, host, runner if runner is not None else NoRunner(workspace), UISettings(**settings))


def pictures(folder: Path, count: int = 3, size: tuple = (96, 80)) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_picture(folder / f"dog_{i:02d}.png", size, seed=i) for i in range(count)]


def broken_file(folder: Path, name: str = "broken.png") -> Path:
    path = folder / name
    path.write_bytes(b"this is text, not a picture")
    return path


def fake_checkpoint(path: Path, epoch: int, step: int) -> Path:
    """A .safetensors file with only a header (epoch and step in its metadata), like a tiny LoRA's header."""
    header = json.dumps({"__metadata__": {"ss_epoch": str(epoch), "ss_steps": str(step),
                                          "ss_base_model_version": "sd_v1"}}).encode()
    header += b" " * (-len(header) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def value(update: Any) -> Any:
    """The value a callback output sets: a plain value, or the ``value`` of a gr.update dict."""
    if isinstance(update, dict) and update.get("__type__") in ("update", "generic_update"):
        return update.get("value")
    return update


__all__ = ["PaintHost", "NoRunner", "make_context", "pictures", "broken_file", "fake_checkpoint", "value"]
