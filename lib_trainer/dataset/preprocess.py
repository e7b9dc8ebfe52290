"""Preprocessing: turn ``dataset/source/`` into ``dataset/train/<repeats>_<concept>/``, the folder the trainer reads.

For every source picture: normalise it (orientation, colour, transparency onto a background), scale it so that
it covers the target, and cut the target out of it:

* ``center`` — the middle of the picture;
* ``focal`` — around the faces OpenCV's bundled Haar cascades find, else around the busiest part of the picture
  (local entropy plus edge strength), in the spirit of the WebUI's own "auto focal point crop";
* ``none`` — no cut to the target's shape: the picture keeps its aspect ratio and is scaled to the aspect-ratio
  bucket (the trainer's own bucket list at the target's area) it trains in, so the trainer does not resample it
  again. Train with buckets.

Optionally a mirrored copy of each output (``flip``) and extra close-ups of the faces in each picture
(``face_crops``: the "face strengthening" that helps person LoRAs). Pictures smaller than what they are cut to
are enlarged with the host's upscaler when one is passed in (``upscale(image, scale) -> image``), else with plain
Lanczos. The caption beside a source picture (``.txt`` or ``.caption``) is copied beside each of its outputs.

Re-running is idempotent: a manifest in the output folder (``.preprocess.json``) remembers which source (and
which options) made each output, so unchanged pictures are not redone, outputs whose source is gone (or that
the options no longer ask for) are removed, and a caption someone edited in the output folder is kept — it is
only replaced while it still holds the text copied from the source. ``dataset/source/`` is only ever read.
Every file is written atomically; where to cut is decided in ``crop``. Standard library, Pillow, numpy and
(optionally) OpenCV.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageOps

from lib_trainer.common.files import atomic_save, atomic_write_json, atomic_write_text, read_json, short_hash
from lib_trainer.common.i18n import tr
from lib_trainer.dataset.crop import (FaceDetector, cover_size, crop_window, detect_faces, face_crop_boxes,
                                      focal_point)
from lib_trainer.dataset.images import (DEFAULT_MAX_PIXELS, ImageProblem, inspect_image, iter_images, open_image,
                                        parse_background)
from lib_trainer.dataset.importer import safe_name_stem
from lib_trainer.trainer.buckets import assign_bucket, make_buckets
from lib_trainer.trainer.folders import parse_folder_name

PathLike = Union[str, "os.PathLike[str]"]
Upscaler = Callable[[Image.Image, float], Image.Image]
Progress = Callable[[int, int, str], None]
CROP_MODES = ("center", "focal", "none")
MANIFEST_NAME = ".preprocess.json"
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS
_BOX = getattr(Image, "Resampling", Image).BOX
_STEP = 64
_FOLDER_BAD = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')


class PreprocessError(ValueError):
    """Options that cannot work (the message says why, in the person's language)."""


@dataclass
class PreprocessOptions:
    width: int = 512
    height: int = 512
    crop: str = "center"  # center | focal | none
    flip: bool = False
    #: Extra close-up of up to this many faces per picture (0: none).
    face_crops: int = 0
    #: A face close-up shows this many face-heights (about head and shoulders at 2.2).
    face_zoom: float = 2.2
    background: Union[str, Tuple[int, int, int]] = "white"
    caption_extension: str = ".txt"
    #: "auto": JPEG (quality 95, full colour resolution) for JPEG sources — already lossy, a PNG of them keeps
    #: nothing more and costs ~10× the encoding time and ~3× the disk — and PNG for everything else (drawings,
    #: screenshots, transparency: lossless stays lossless). Or "png" / "jpg" for all.
    image_format: str = "auto"  # auto | png | jpg
    jpeg_quality: int = 95
    #: "area": shrink by pixel-area averaging (what sd-scripts does; 2× faster than Lanczos), enlarge with
    #: Lanczos; "lanczos": Lanczos both ways (a little sharper when shrinking).
    resample: str = "area"
    #: Bucket limits for crop mode "none" (widened to the target when they would exclude it).
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    #: Replace captions in the output folder even when someone edited them there.
    overwrite_captions: bool = False
    #: A name for the upscaler passed to preprocess(); changing it redoes the enlarged pictures.
    upscaler_name: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS

    def fingerprint(self) -> Dict[str, Any]:
        """What decides how an output looks (so a change redoes the outputs)."""
        data = dataclasses.asdict(self)
        for key in ("caption_extension", "overwrite_captions", "max_pixels"):
            data.pop(key)
        data["background"] = list(parse_background(self.background))
        return data


@dataclass
class PreprocessResult:
    folder: str
    written: List[str] = field(default_factory=list)  # outputs (pictures) made this time
    unchanged: List[str] = field(default_factory=list)  # outputs that were already up to date
    removed: List[str] = field(default_factory=list)  # outputs (and their captions) removed
    captions_written: List[str] = field(default_factory=list)
    captions_kept: List[str] = field(default_factory=list)  # edited in the output folder, so left alone
    skipped: List[Dict[str, str]] = field(default_factory=list)  # {"name", "reason", "code"} source pictures
    messages: List[str] = field(default_factory=list)
    sources: int = 0
    stopped: bool = False

    @property
    def outputs(self) -> List[str]:
        return sorted(self.written + self.unchanged)

    def summary(self) -> str:
        text = tr(
            "{sources} source pictures → {outputs} training pictures in {folder} ({written} made, {unchanged} "
            "unchanged, {removed} removed, {skipped} skipped).",
            sources=self.sources, outputs=len(self.outputs), folder=Path(self.folder).name, written=len(self.written),
            unchanged=len(self.unchanged), removed=len(self.removed), skipped=len(self.skipped),
        )
        if self.stopped:
            text += " " + tr("Stopped before the end; run it again to finish.")
        return text

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["summary"] = self.summary()
        return data


def validate_target(width: int, height: int) -> Tuple[int, int]:
    """``(width, height)`` when both are positive multiples of 64, else :class:`PreprocessError`."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise PreprocessError(tr("Width and height must be whole numbers, not {w!r}×{h!r}.", w=width, h=height)) from None
    if w != width or h != height or w < _STEP or h < _STEP or w % _STEP or h % _STEP:
        def near(v: int) -> int:
            return max(_STEP, int(round(v / _STEP)) * _STEP)
        raise PreprocessError(tr(
            "Width and height must be multiples of 64 (the model works in 64-pixel steps), not {w}×{h}; "
            "try {sw}×{sh}.", w=width, h=height, sw=near(w), sh=near(h)))
    return w, h


def _check_options(options: PreprocessOptions) -> None:
    validate_target(options.width, options.height)
    if options.crop not in CROP_MODES:
        raise PreprocessError(tr("Crop mode must be one of {modes}, not {mode!r}.", modes=", ".join(CROP_MODES), mode=options.crop))
    if options.resample not in ("area", "lanczos"):
        raise PreprocessError(tr("Resampling must be area or lanczos, not {value!r}.", value=options.resample))
    if options.image_format not in ("auto", "png", "jpg"):
        raise PreprocessError(tr("Output format must be auto, png or jpg, not {fmt!r}.", fmt=options.image_format))
    if not (0 <= int(options.face_crops) <= 10):
        raise PreprocessError(tr("Face crops per picture must be between 0 and 10."))
    if not (1.0 <= float(options.face_zoom) <= 10.0):
        raise PreprocessError(tr("Face zoom must be between 1 and 10."))
    if options.caption_extension not in (".txt", ".caption"):
        raise PreprocessError(tr("Caption files must end in .txt or .caption."))
    try:
        parse_background(options.background)
    except ValueError as exc:
        raise PreprocessError(str(exc)) from None


def concept_folder_name(repeats: int, concept: str) -> str:
    """``"<repeats>_<concept>"`` as the trainer reads it; :class:`PreprocessError` for a name a folder cannot have."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PreprocessError(tr("Repeats must be a whole number of at least 1, not {value!r}.", value=repeats))
    text = (concept or "").strip()
    if not text:
        raise PreprocessError(tr("The concept (the folder's name after the repeats) must not be empty."))
    if _FOLDER_BAD.search(text) or text in (".", "..") or text.endswith(".") or ".." in text.split("/"):
        raise PreprocessError(tr(
            "The concept {concept!r} cannot be a folder name: leave out / \\ : * ? \" < > | and control characters, "
            "and do not end it with a dot.", concept=concept))
    if len(text.encode("utf-8")) > 150:
        raise PreprocessError(tr("The concept is too long for a folder name (at most 150 bytes)."))
    return f"{repeats}_{text}"


@dataclass
class _Job:
    source: Path
    stem: str  # output stem
    image_sig: str
    caption_file: Optional[Path]
    caption_sig: str
    redo_images: bool


@dataclass
class _Done:
    job: _Job
    outputs: List[str] = field(default_factory=list)
    problem: Optional[ImageProblem] = None
    notes: List[str] = field(default_factory=list)


def _render(image: Image.Image, box: Tuple[float, float, float, float], size: Tuple[int, int],
            upscale: Optional[Upscaler], notes: List[str], name: str, resample: str = "area") -> Image.Image:
    """The ``box`` region of ``image`` at exactly ``size``: one resampling from the original pixels (see
    ``PreprocessOptions.resample``); a region smaller than ``size`` goes through the host's ``upscale`` first
    when there is one."""
    left, top, right, bottom = box
    factor = max(size[0] / (right - left), size[1] / (bottom - top))
    if factor > 1.0 + 1e-6 and upscale is not None:
        region = image.crop((int(round(left)), int(round(top)), int(round(right)), int(round(bottom))))
        try:
            enlarged = upscale(region, factor)
            if not isinstance(enlarged, Image.Image):
                raise TypeError(type(enlarged).__name__)
            enlarged = enlarged.convert("RGB")
            return enlarged if enlarged.size == size else enlarged.resize(size, _LANCZOS)
        except Exception as exc:  # the host's upscaler failing must not lose the picture
            notes.append(tr("{name}: the upscaler failed ({detail}); plain resizing was used", name=name, detail=str(exc)[:200]))
    if (left, top, right, bottom) == (0, 0, size[0], size[1]) and image.size == size:
        return image
    if resample == "area" and factor <= 1.0:
        return image.resize(size, _BOX, box=box)
    return image.resize(size, _LANCZOS, box=box, reducing_gap=3.0)


def _proxy(image: Image.Image, longest: int = 512) -> Tuple[Image.Image, float]:
    """A copy at most about ``longest`` pixels long (box-reduced: fast) and its scale to ``image``."""
    k = max(1, max(image.size) // longest)
    return (image.reduce(k) if k > 1 else image), float(k)


def _save(image: Image.Image, path: Path, options: PreprocessOptions) -> None:
    if path.suffix == ".jpg":
        atomic_save(path, lambda tmp: image.save(tmp, format="JPEG", quality=options.jpeg_quality, subsampling=0))
    else:
        atomic_save(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))


def _process(job: _Job, out_dir: Path, options: PreprocessOptions, upscale: Optional[Upscaler],
             face_detector: Optional[FaceDetector]) -> _Done:
    done = _Done(job)
    target = (options.width, options.height)
    name = job.source.name
    try:
        info = inspect_image(job.source, decode=False, min_side=1, max_pixels=options.max_pixels)
        if options.crop == "none":
            buckets = make_buckets(target, min(options.min_bucket_reso, *target), max(options.max_bucket_reso, *target), _STEP)
            shape = assign_bucket(info.size, buckets)
        else:
            shape = target
        # A big JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as it still covers what it is cut to.
        reduce_to = None if options.face_crops else cover_size(info.size, shape)
        image = open_image(job.source, background=options.background, max_pixels=options.max_pixels, reduce_to=reduce_to)
    except ImageProblem as problem:
        done.problem = problem
        return done
    focus = None
    if options.crop == "focal":
        proxy, k = _proxy(image)
        (px, py), _why = focal_point(proxy, shape, face_detector)
        focus = (px * k, py * k)
    main = _render(image, crop_window(image.size, shape, focus), shape, upscale, done.notes, name, options.resample)
    if options.image_format == "auto":
        ext = ".jpg" if info.format in ("JPEG", "MPO") else ".png"
    else:
        ext = "." + options.image_format
    outputs: List[Tuple[str, Image.Image]] = [(job.stem + ext, main)]
    if options.face_crops:
        faces = list(face_detector(image)) if face_detector is not None else []
        for i, (bx, by, bw, bh) in enumerate(face_crop_boxes(image.size, faces, target, options.face_zoom, options.face_crops), 1):
            close_up = _render(image, (bx, by, bx + bw, by + bh), target, upscale, done.notes, name, options.resample)
            outputs.append((f"{job.stem}_face{i}{ext}", close_up))
    if options.flip:
        outputs += [(Path(n).stem + "_flip" + ext, ImageOps.mirror(im)) for n, im in list(outputs)]
    for out_name, im in outputs:
        _save(im, out_dir / out_name, options)
        done.outputs.append(out_name)
    return done


def _one_at_a_time(upscale: Upscaler) -> Upscaler:
    """The host's upscaler holds one model on one GPU: pictures are worked on in threads, upscaled one by one."""
    lock = threading.Lock()

    def call(image: Image.Image, scale: float) -> Image.Image:
        with lock:
            return upscale(image, scale)

    return call


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _source_caption(picture: Path, options: PreprocessOptions) -> Optional[Path]:
    order = [options.caption_extension] + [e for e in (".txt", ".caption") if e != options.caption_extension]
    for ext in order:
        candidate = picture.with_name(picture.stem + ext)
        if candidate.is_file():
            return candidate
    return None


def _output_stems(sources: Sequence[Path]) -> Dict[Path, str]:
    """A safe output stem per source; sources whose stems clash (case-insensitively, or with another source's
    ``_flip``/``_faceN`` outputs) get a short hash of their file name added, for all of them alike."""
    stems = {src: safe_name_stem(src.stem, max_bytes=100) for src in sources}
    counts: Dict[str, int] = {}
    for stem in stems.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    derived = re.compile(r"^(.*)_(flip|face\d+|face\d+_flip)$")
    for src, stem in stems.items():
        m = derived.match(stem.lower())
        clash = counts[stem.lower()] > 1 or (m is not None and m.group(1) in counts)
        if clash:
            stems[src] = f"{stem}_{short_hash(src.name, length=6)}"
    return stems


def _move_other_repeats(out_root: Path, folder_name: str, concept: str, result: PreprocessResult) -> None:
    """When the repeats changed, the folder is renamed rather than redone (captions edited there survive)."""
    target = out_root / folder_name
    if not out_root.is_dir():
        return
    for child in sorted(out_root.iterdir(), key=lambda p: p.name):
        parsed = parse_folder_name(child.name)
        if child.is_dir() and parsed is not None and parsed[1] == concept and child.name != folder_name:
            if target.exists():
                result.messages.append(tr(
                    "{old} holds the same concept with other repeats and is trained too; delete it if it is left "
                    "over.", old=child.name))
                continue
            os.replace(child, target)
            result.messages.append(tr("Renamed {old} to {new} (the repeats changed).", old=child.name, new=folder_name))


def _remove_output(out_dir: Path, name: str, options: PreprocessOptions, result: PreprocessResult) -> None:
    path = out_dir / name
    if path.exists():
        path.unlink()
        result.removed.append(name)
    for ext in (".txt", ".caption"):
        caption = out_dir / (Path(name).stem + ext)
        if caption.exists():
            caption.unlink()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sync_captions(out_dir: Path, done: _Done, entry: Dict[str, Any], options: PreprocessOptions,
                   result: PreprocessResult) -> None:
    if done.job.caption_file is None:
        return
    try:
        text = _caption_text(done.job.caption_file)
    except OSError as exc:
        result.messages.append(tr("Cannot read the caption {name}: {detail}", name=done.job.caption_file.name, detail=str(exc)))
        return
    written = entry.setdefault("captions", {})
    for out_name in done.outputs:
        cap_name = Path(out_name).stem + options.caption_extension
        cap_path = out_dir / cap_name
        if cap_path.exists():
            current = cap_path.read_bytes()
            ours = written.get(cap_name) == hashlib.sha256(current).hexdigest()
            if not ours and not options.overwrite_captions:
                result.captions_kept.append(cap_name)
                continue
            if current == text.encode("utf-8"):
                written[cap_name] = _sha(text)
                continue
        atomic_write_text(cap_path, text)
        written[cap_name] = _sha(text)
        result.captions_written.append(cap_name)


def _caption_text(path: Path) -> str:
    """A source caption as it is written beside the outputs: decoded (UTF-8, BOM or UTF-16), line breaks
    normalised, surrounding whitespace removed."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-8-sig", errors="replace")
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def preprocess(
    source_dir: PathLike,
    out_root: PathLike,
    *,
    repeats: int,
    concept: str,
    options: Optional[PreprocessOptions] = None,
    upscale: Optional[Upscaler] = None,
    face_detector: Optional[FaceDetector] = detect_faces,
    progress: Optional[Progress] = None,
    stop: Optional[threading.Event] = None,
    workers: Optional[int] = None,
) -> PreprocessResult:
    """Make ``out_root/<repeats>_<concept>/`` from the pictures in ``source_dir`` (see the module's docstring).

    ``out_root`` is ``dataset/train`` (or ``dataset/reg`` for regularization pictures). ``upscale(image, scale)``
    enlarges pictures smaller than their crop (the host's upscaler, called from one thread at a time; None:
    Lanczos). ``face_detector(image)`` returns face boxes ``(x, y, w, h)`` (default: OpenCV's Haar cascades; it
    is called from several threads at once). ``progress(done, total, name)`` after
    each picture; ``stop`` ends the run after the pictures being worked on (what is done stays done, and the next
    run continues). Raises :class:`PreprocessError` for impossible options.
    """
    options = options or PreprocessOptions()
    _check_options(options)
    folder_name = concept_folder_name(repeats, concept)
    if upscale is not None:
        upscale = _one_at_a_time(upscale)
    source = Path(source_dir)
    root = Path(out_root)
    out_dir = root / folder_name
    try:
        if out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents:
            raise PreprocessError(tr("The output folder must not be inside the source folder."))
    except OSError:
        pass
    result = PreprocessResult(folder=str(out_dir))
    if not source.is_dir():
        raise PreprocessError(tr("The source folder {folder} does not exist; import pictures first.", folder=str(source)))
    root.mkdir(parents=True, exist_ok=True)
    _move_other_repeats(root, folder_name, concept.strip(), result)
    out_dir.mkdir(parents=True, exist_ok=True)

    manifest_path = out_dir / MANIFEST_NAME
    manifest = read_json(manifest_path, default={}) or {}
    old_entries: Dict[str, Dict[str, Any]] = manifest.get("sources", {}) if isinstance(manifest, dict) else {}
    fingerprint = options.fingerprint()
    same_options = isinstance(manifest, dict) and manifest.get("options") == json.loads(json.dumps(fingerprint))

    sources = list(iter_images(source))
    result.sources = len(sources)
    stems = _output_stems(sources)
    entries: Dict[str, Dict[str, Any]] = {}
    jobs: List[_Job] = []
    for src in sources:
        cap = _source_caption(src, options)
        job = _Job(src, stems[src], _signature(src), cap, _signature(cap) if cap else "", True)
        old = old_entries.get(src.name)
        if (
            same_options
            and isinstance(old, dict)
            and old.get("image_sig") == job.image_sig
            and old.get("stem") == job.stem
            and old.get("outputs")
            and all((out_dir / n).is_file() for n in old["outputs"])
        ):
            job.redo_images = False
        jobs.append(job)

    # Outputs whose source is gone: removed before anything else.
    live = {src.name for src in sources}
    for name, old in old_entries.items():
        if name not in live and isinstance(old, dict):
            for out_name in old.get("outputs", []):
                _remove_output(out_dir, out_name, options, result)

    def save_manifest() -> None:
        kept = dict(entries)
        for name, old in old_entries.items():  # not reached this time (stopped): keep what we know of it
            if name in live and name not in kept and isinstance(old, dict):
                kept[name] = old
        data = {"version": 1, "options": fingerprint, "sources": kept}
        if json.loads(json.dumps(data)) != manifest:  # unchanged: left alone, so a no-op run writes nothing
            atomic_write_json(manifest_path, data)

    total = len(jobs)
    done_count = 0
    n_workers = workers or min(4, os.cpu_count() or 1)

    def finish(done: _Done) -> None:
        nonlocal done_count
        job = done.job
        old = old_entries.get(job.source.name) if isinstance(old_entries.get(job.source.name), dict) else {}
        previous_outputs = list(old.get("outputs", [])) if old else []
        if done.problem is not None:
            result.skipped.append({"name": job.source.name, "reason": done.problem.message, "code": done.problem.code})
            for out_name in previous_outputs:
                _remove_output(out_dir, out_name, options, result)
        else:
            if job.redo_images:
                result.written.extend(done.outputs)
                for out_name in previous_outputs:
                    if out_name not in done.outputs:
                        _remove_output(out_dir, out_name, options, result)
            else:
                result.unchanged.extend(done.outputs)
            entry = {"image_sig": job.image_sig, "caption_sig": job.caption_sig, "stem": job.stem,
                     "outputs": done.outputs, "captions": dict(old.get("captions", {})) if old else {}}
            _sync_captions(out_dir, done, entry, options, result)
            entries[job.source.name] = entry
        result.messages.extend(done.notes)
        done_count += 1
        if progress:
            progress(done_count, total, job.source.name)

    try:
        todo: List[_Job] = []
        for job in jobs:
            if job.redo_images:
                todo.append(job)
            else:
                finish(_Done(job, outputs=list(old_entries[job.source.name]["outputs"])))

        def run(job: _Job) -> Optional[_Done]:
            if stop is not None and stop.is_set():
                return None
            return _process(job, out_dir, options, upscale, face_detector)

        if n_workers <= 1:
            for job in todo:
                done = run(job)
                if done is None:
                    break
                finish(done)
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="tt-prep") as pool:
                for done in pool.map(run, todo):
                    if done is not None:
                        finish(done)
        result.stopped = stop is not None and stop.is_set() and done_count < total
    finally:
        save_manifest()
    for key in ("written", "unchanged", "removed", "captions_written", "captions_kept"):
        getattr(result, key).sort()
    if options.face_crops and not result.stopped:
        result.messages.append(_face_note(result.outputs))
    return result


def _face_note(outputs: Sequence[str]) -> str:
    """What "a close-up of each face" gave: the face finder can find none (drawings, faces from the side)."""
    close_ups = [n for n in outputs if re.search(r"_face\d+$", Path(n).stem)]
    if not close_ups:
        return tr("No face was found in the pictures, so no close-up was added.")
    pictures = {re.sub(r"_face\d+$", "", Path(n).stem) for n in close_ups}
    return tr("{n} face close-up(s) added, from {pictures} of the pictures.", n=len(close_ups), pictures=len(pictures))
