"""The host protocol: the contract between the core of Train Tools and the program that draws images.

Everything in lib_trainer that needs the WebUI goes through a :class:`Host`. Two implementations exist:
``hosts/webui/`` (AUTOMATIC1111 1.10 / Forge, inside the WebUI process) and ``hosts/standalone.py`` (diffusers,
for the standalone app, the CLI and the tests). ``tests/host_contract.py`` runs the same checks against both, so
the docstrings below are the contract: an adapter that passes them may be used by the core without special cases.

Standard library + Pillow only: the WebUI process imports this module.
"""
from __future__ import annotations

import abc
import hashlib
import os
import re
import shutil
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from lib_trainer.common.files import atomic_copy, sha256_file
from lib_trainer.common.i18n import tr

if TYPE_CHECKING:  # Pillow is only needed for the annotations
    from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]

ARCHS = ("sd1", "sd2", "sd2-v", "sdxl", "unknown")


@dataclass(frozen=True)
class CheckpointInfo:
    """A base model the host can draw with (and the trainer can train on)."""

    title: str  # what the host shows; unique within one checkpoints() list
    path: str  # absolute path of the file (the trainer's pretrained_model_name_or_path)
    arch: str  # one of ARCHS; "unknown" when the host cannot tell
    hash: Optional[str] = None  # short hash if the host knows it (WebUI: sha256[:10])
    resolution: Optional[int] = None  # the side the model was made for, when not its architecture's usual one


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA *file* (anywhere on disk) and its strength."""

    path: str
    weight: float


@dataclass
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0  # -1: the host draws a random seed and reports it in Txt2ImgResult.seed
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"  # one of Host.samplers()
    clip_skip: int = 1  # 1 = the last layer (the WebUI's "Clip skip" setting)
    checkpoint: Optional[str] = None  # CheckpointInfo.path or .title; None = the host's current checkpoint
    loras: list[LoraSpec] = field(default_factory=list)


@dataclass
class Txt2ImgResult:
    image: "Image.Image"
    infotext: str  # the WebUI's "parameters" text: prompt, "Negative prompt: …", "Steps: …, Sampler: …, …"
    seed: int  # the seed really used
    loras_applied: list[str]  # LoraSpec.path of every spec really applied, in request order


@dataclass(frozen=True)
class TaggerInfo:
    id: str
    title: str
    uses_threshold: bool
    default_threshold: Optional[float] = None


@dataclass(frozen=True)
class TaggerUnavailable:
    """A tagger the host knows of but leaves out of taggers(): ``reason`` (translated) says what is missing and
    what to do."""
    title: str
    reason: str


class HostError(RuntimeError):
    """A failure with a clear, user-facing (translated) message."""


class HostInterrupted(HostError):
    """txt2img was stopped by Host.interrupt() or by the request's interrupt event; no image was produced."""


def check_request(request: Txt2ImgRequest) -> None:
    """Reject requests no host can draw, with a message a person understands (both adapters call this)."""
    if request.width <= 0 or request.height <= 0 or request.width % 8 or request.height % 8:
        raise HostError(tr("Width and height must be positive multiples of 8 (got {width}x{height}).",
                           width=request.width, height=request.height))
    if request.steps < 1:
        raise HostError(tr("Steps must be at least 1 (got {steps}).", steps=request.steps))


class Host(abc.ABC):
    """What the core needs from the program that draws images. Every method may be called from any thread."""

    name: str = "host"  # "webui", "forge", "standalone"

    @abc.abstractmethod
    def checkpoints(self, refresh: bool = False) -> list[CheckpointInfo]:
        """Every base model the host can draw with, in the host's order.

        The list is cached; ``refresh=True`` rescans the disk first. ``path`` is absolute, ``title`` is unique in
        the list and accepted by ``Txt2ImgRequest.checkpoint`` like ``path`` is. A file the host cannot read is
        listed with arch "unknown" (or left out), never an exception.
        """

    @abc.abstractmethod
    def release_gpu(self) -> None:
        """Free the GPU memory the host's models hold, before training starts.

        Idempotent, safe when nothing is loaded and on a CPU-only machine. txt2img still works afterwards (the
        host brings its model back by itself if it has to).
        """

    @abc.abstractmethod
    def restore_gpu(self) -> None:
        """Undo release_gpu() after training (also after a crashed training). Idempotent; a no-op without a
        release before it."""

    @abc.abstractmethod
    def txt2img(self, request: Txt2ImgRequest, *, interrupt: Optional[threading.Event] = None) -> Txt2ImgResult:
        """Draw exactly one image of ``request.width`` × ``request.height``.

        - One request at a time: a call blocks while another txt2img of this host runs (in the WebUI: under its
          queue lock, so a person's own txt2img waits its turn between our requests).
        - Deterministic: the same request with a seed >= 0 gives the same pixels on the same host; a different
          seed gives a different image. ``seed=-1`` lets the host draw one, reported in ``result.seed``.
        - ``checkpoint`` is a CheckpointInfo path or title; one the host does not know raises HostError.
        - Each LoraSpec's file is applied at its weight (LoRA, LoCon, LoHa, LoKr in kohya/LyCORIS key layout).
          A spec with weight 0 is not applied and not listed. A file that is missing, unreadable or does not fit
          the checkpoint raises HostError naming the file: the host never draws silently without it.
        - LoRAs never outlive the request: a later request without them draws exactly the base image.
        - ``interrupt`` set before or during the request, or Host.interrupt() during it, raises HostInterrupted.
        - ``result.infotext`` follows the WebUI's format (applied LoRAs under "Lora hashes");
          ``result.loras_applied`` lists the ``path`` of each applied spec, as given, in request order.
        - Bad sizes or steps (see check_request) and an unknown sampler raise HostError.
        """

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Stop the txt2img in progress, if any (its caller gets HostInterrupted). Later requests are not
        affected; without a request in progress this does nothing."""

    @abc.abstractmethod
    def samplers(self) -> list[str]:
        """Sampler names ``Txt2ImgRequest.sampler`` accepts, in the WebUI's spelling; "Euler a" is always one."""

    @abc.abstractmethod
    def taggers(self) -> list[TaggerInfo]:
        """The captioning models the host offers (DeepBooru, BLIP, WD14 …); [] when it has none."""

    def unavailable_taggers(self) -> list[TaggerUnavailable]:
        """The taggers the host knows of but does not offer now (model not on disk, extension missing …), each
        with why and what to do; [] when it has nothing to say."""
        return []

    @abc.abstractmethod
    def tag(self, tagger_id: str, image: "Image.Image", threshold: Optional[float] = None) -> list[str]:
        """Tags for ``image``, best first, as the tagger writes them (no weights). ``threshold`` None means the
        tagger's default. An id not in taggers() (so every id when taggers() is empty) raises HostError."""

    @abc.abstractmethod
    def upscalers(self) -> list[str]:
        """Names upscale() accepts; [] when the host has none."""

    @abc.abstractmethod
    def upscale(self, image: "Image.Image", upscaler: str, scale: float) -> "Image.Image":
        """``image`` enlarged ``scale`` times by ``upscaler``. A name not in upscalers() raises HostError."""

    @abc.abstractmethod
    def lora_dir(self) -> Path:
        """The folder whose files ``<lora:NAME:w>`` resolves (searched recursively); it exists on return."""

    @abc.abstractmethod
    def outputs_dir(self) -> Path:
        """The host's outputs root; Train Tools keeps its work in ``outputs_dir() / "train_tools"``. It exists on
        return."""

    @abc.abstractmethod
    def refresh_loras(self) -> None:
        """Make the host see LoRA files added to or removed from lora_dir() (after "Use this checkpoint")."""

    @abc.abstractmethod
    def send_to_txt2img(self, prompt: str) -> bool:
        """Put ``prompt`` into the host's txt2img prompt box; False when the host has none (standalone)."""

    @abc.abstractmethod
    def forget_preview_loras(self, version_dir: Path) -> None:
        """Remove whatever txt2img staged for LoRA files of the version in ``version_dir`` (when the version is
        deleted or its previews are done). No error when nothing was staged."""


# --- Staging LoRA files for hosts that resolve <lora:NAME:w> by name --------------------------------------------

PREVIEW_FOLDER = "train_tools_preview"
NAME_PREFIX = "tt-"
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f\s]+')
_TAG_FORBIDDEN = re.compile(r"[:<>\s]")


def _safe_part(text: str, max_len: int = 32) -> str:
    text = _UNSAFE.sub("_", unicodedata.normalize("NFC", text)).strip(" ._")
    return text[:max_len].rstrip(" ._") or "x"


def version_key(version_dir: PathLike) -> str:
    """A folder name for one version: readable (``<project>-<version>``) and unique (a hash of its location)."""
    path = Path(os.path.abspath(version_dir))
    parts = [path.name]
    if path.parent.name == "versions" and path.parent.parent.name:
        parts.insert(0, path.parent.parent.name)  # projects/<project>/versions/<version>
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:8]
    return "-".join(_safe_part(p) for p in parts) + "-" + digest


def version_dir_of(lora_path: PathLike) -> Path:
    """The version a LoRA file belongs to: ``<version>/checkpoints/<file>`` → ``<version>``, else its folder."""
    parent = Path(os.path.abspath(lora_path)).parent
    return parent.parent if parent.name == "checkpoints" else parent


def _format_weight(weight: float) -> str:
    return format(round(float(weight), 6), "g")


def lora_prompt(specs: Iterable[tuple[str, float]]) -> str:
    """``<lora:NAME:W>`` tags, space-separated, for (name, weight) pairs: ``[("tt-ab", 0.4)]`` → ``<lora:tt-ab:0.4>``."""
    tags = []
    for name, weight in specs:
        if not name or _TAG_FORBIDDEN.search(name):
            raise ValueError(f"{name!r} cannot be used in a <lora:…> tag (no ':', '<', '>' or spaces)")
        tags.append(f"<lora:{name}:{_format_weight(weight)}>")
    return " ".join(tags)


class LoraStaging:
    """Copies of LoRA files under unique names, for hosts that find ``<lora:NAME:w>`` only by file name.

    The WebUI resolves NAME as a basename (or ``ss_output_name``) found anywhere under its Lora folder, never a
    path, and Forge caches networks by name. So every file drawn by the preview is copied to
    ``<lora_dir>/train_tools_preview/<version-key>/tt-<hash>.safetensors`` where ``<hash>`` is derived from the
    file's content and its version: a name is unique across the whole Lora folder and never stands for other
    weights. The person's Lora list gains one clearly named folder, emptied version by version by forget().
    Thread-safe.
    """

    def __init__(self, lora_dir: PathLike) -> None:
        self.lora_dir = Path(lora_dir)
        self._lock = threading.Lock()
        self._hashes: dict[tuple, str] = {}

    @property
    def root(self) -> Path:
        return self.lora_dir / PREVIEW_FOLDER

    def version_folder(self, version_dir: PathLike) -> Path:
        return self.root / version_key(version_dir)

    def _content_hash(self, path: Path) -> str:
        st = path.stat()
        # the change time too: a file rewritten in place within the mtime's granularity must not keep its name
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is None:
            cached = sha256_file(path)
            with self._lock:
                self._hashes[key] = cached
        return cached

    def name_for(self, path: PathLike, version_dir: Optional[PathLike] = None) -> str:
        """The name stage() gives ``path`` (without copying anything)."""
        path = Path(path)
        version = Path(version_dir) if version_dir is not None else version_dir_of(path)
        seed = f"{self._content_hash(path)}\0{version_key(version)}"
        return NAME_PREFIX + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16]

    def stage(self, path: PathLike, version_dir: Optional[PathLike] = None) -> str:
        """Copy ``path`` (atomically) into the version's staging folder and return the name to put in
        ``<lora:NAME:w>``. An existing copy is reused. ``version_dir`` defaults to version_dir_of(path)."""
        path = Path(path)
        if not path.is_file():
            raise HostError(tr("LoRA file not found: {path}", path=str(path)))
        version = Path(version_dir) if version_dir is not None else version_dir_of(path)
        name = self.name_for(path, version)
        folder = self.version_folder(version)
        target = folder / (name + path.suffix.lower())
        if target.is_file():
            return name
        atomic_copy(path, target)  # its hidden .tmp file never shows up in the host's Lora scan
        return name

    def forget(self, version_dir: PathLike) -> None:
        """Delete the version's staging folder (nothing else); no error when it does not exist."""
        folder = self.version_folder(version_dir)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            self.root.rmdir()  # only succeeds when no other version has staged copies
        except OSError:
            pass
