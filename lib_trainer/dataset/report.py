"""The dataset report ("dataset doctor"): what a set of pictures looks like, and what to fix before training.

It reads a folder of pictures — a version's ``dataset/source/``, or ``dataset/train/`` with its
``<repeats>_<concept>`` folders — and tells: how many pictures (and which files cannot be read), their sizes and
aspect ratios, how they fall into aspect-ratio buckets at the chosen resolution (the trainer's own bucket code),
which are smaller than the training size, which look like near-duplicates (perceptual hashes), how many have
captions and which tags are most frequent; then a plain-language list of what to fix. The captions counted can
be those of another tree (``captions_from``): the originals are surveyed in ``dataset/source`` while the captions
that count are the ones beside the training pictures in ``dataset/train``, which is what the trainer reads.

``build_report`` returns a :class:`DatasetReport`: ``to_dict()`` is JSON-serialisable, ``to_markdown()`` is what the
tab shows. Standard library, Pillow and numpy only.
"""
from __future__ import annotations

import concurrent.futures
import copy
import math
import os
import statistics
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from lib_trainer.dataset.images import ImageProblem, inspect_image, iter_images, open_image
from lib_trainer.common.i18n import tr
from lib_trainer.trainer.buckets import assign_bucket, assign_bucket_no_upscale, make_buckets
from lib_trainer.trainer.folders import parse_folder_name

__all__ = [
    "PictureEntry",
    "DatasetReport",
    "build_report",
    "recount_captions",
    "read_caption",
    "split_caption",
    "dhash",
    "phash",
    "hamming",
    "near_duplicate_groups",
]

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int, str], None]

_BOX = getattr(Image, "Resampling", Image).BOX
_SIZE_BINS = (256, 512, 768, 1024)  # short-side bins: <256, 256–511, 512–767, 768–1023, ≥1024
_EXTREME_RATIO = 2.0


# --- captions ---------------------------------------------------------------------------------------------------


def read_caption(path: PathLike) -> str:
    """The caption text of a ``.txt``/``.caption`` file as the trainer reads it: the first non-empty line,
    stripped; UTF-8 (with or without BOM) or UTF-16 as Windows Notepad saves it."""
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-8-sig", errors="replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def split_caption(caption: str) -> List[str]:
    """Comma-separated tags, whitespace collapsed, empty ones dropped."""
    return [t for t in (" ".join(part.split()) for part in caption.split(",")) if t]


def _caption_file(picture: Path, extensions: Sequence[str]) -> Optional[Path]:
    for ext in extensions:
        candidate = picture.with_name(picture.stem + ext)
        if candidate.is_file():
            return candidate
    return None


# --- perceptual hashes ------------------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def _gray(image: Image.Image, size: Tuple[int, int]) -> np.ndarray:
    small = image.convert("L")
    # Box-average in steps first: cheap, and it avoids the aliasing a single tiny resize would give.
    while small.width >= size[0] * 4 and small.height >= size[1] * 4:
        small = small.reduce(2)
    return np.asarray(small.resize(size, _BOX), dtype=np.float64)


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9×8 grey thumbnail brighter than its right neighbour."""
    g = _gray(image, (9, 8))
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: the 8×8 lowest frequencies of a 32×32 grey thumbnail's DCT, above or below
    their median (the DC term left out of the median)."""
    g = _gray(image, (32, 32))
    coeffs = (_DCT32 @ g @ _DCT32.T)[:8, :8].flatten()
    median = np.median(coeffs[1:])
    bits = coeffs > median
    return int("".join("1" if b else "0" for b in bits), 2)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def _distances_to(hashes: np.ndarray, i: int) -> np.ndarray:
    """Hamming distances from ``hashes[i]`` to every later hash."""
    x = np.bitwise_xor(hashes[i + 1 :], hashes[i])
    return _POPCOUNT8[x.view(np.uint8).reshape(-1, 8)].sum(axis=1)


def near_duplicate_groups(
    phashes: Sequence[int], dhashes: Sequence[int], *, max_phash: int = 8, max_dhash: int = 12
) -> List[List[int]]:
    """Groups (indices, each group sorted, groups by first index) of pictures whose pHash *and* dHash are within
    the given Hamming distances of another member's — the same picture resized, recompressed, slightly
    recoloured or trimmed. Two different pictures rarely agree on both."""
    n = len(phashes)
    if n < 2:
        return []
    ph = np.array(phashes, dtype=np.uint64)
    dh = np.array(dhashes, dtype=np.uint64)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(n - 1):
        close = np.nonzero((_distances_to(ph, i) <= max_phash) & (_distances_to(dh, i) <= max_dhash))[0]
        for j in close:
            ra, rb = find(i), find(i + 1 + int(j))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: Dict[int, List[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


# --- the report -------------------------------------------------------------------------------------------------


@dataclass
class PictureEntry:
    name: str  # path relative to the folder, with "/"
    width: int
    height: int
    bucket: Tuple[int, int]
    upscale: float  # how much the picture is enlarged to cover its bucket (1.0: not at all)
    caption_file: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    folder: str = ""  # the <repeats>_<concept> folder it lies in, if any
    phash: Optional[str] = None  # 16 hex digits
    dhash: Optional[str] = None


@dataclass
class DatasetReport:
    folder: str
    resolution: Tuple[int, int]
    pictures: int = 0
    unreadable: List[Dict[str, str]] = field(default_factory=list)  # {"name", "reason", "code"}
    sizes: Dict[str, Any] = field(default_factory=dict)  # min/median/max of width, height, short side, megapixels
    short_side_bins: List[Dict[str, Any]] = field(default_factory=list)  # {"label", "count"}
    aspect_ratios: List[Dict[str, Any]] = field(default_factory=list)  # {"label", "count"}
    buckets: List[Dict[str, Any]] = field(default_factory=list)  # {"resolution": [w, h], "count", "upscaled"}
    bucketing: bool = True
    small: List[str] = field(default_factory=list)  # smaller than their bucket: enlarged for training
    extreme: List[str] = field(default_factory=list)  # wider or taller than 2:1
    near_duplicates: List[List[str]] = field(default_factory=list)
    captioned: int = 0
    #: Where the captions were counted when not beside the surveyed pictures (the training pictures' folder).
    caption_folder: str = ""
    caption_pictures: int = 0  # pictures whose captions were counted (those of caption_folder, or the surveyed)
    uncaptioned: List[str] = field(default_factory=list)
    empty_captions: List[str] = field(default_factory=list)
    tag_frequency: List[Tuple[str, int]] = field(default_factory=list)  # most frequent first
    folders: List[Dict[str, Any]] = field(default_factory=list)  # {"name", "repeats", "concept", "pictures"}
    advice: List[str] = field(default_factory=list)
    entries: List[PictureEntry] = field(default_factory=list)
    batch_size: int = 1  # the advice's batch size
    host_upscalers: bool = True  # whether the host has upscalers besides Lanczos (the advice on small pictures)

    @property
    def caption_coverage(self) -> float:
        return self.captioned / self.caption_pictures if self.caption_pictures else 0.0

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        data["tag_frequency"] = [[t, n] for t, n in self.tag_frequency]
        for entry in data["entries"]:
            entry["bucket"] = list(entry["bucket"])
        data["caption_coverage"] = self.caption_coverage
        return data

    def to_markdown(self, max_tags: int = 30) -> str:
        w, h = self.resolution
        out: List[str] = [f"### {tr('Dataset report')}", ""]
        if self.caption_folder:
            out.append(tr("**{n}** pictures, {bad} unreadable; {captioned} of the {total} training pictures have a "
                          "caption ({pct:.0f}%).", n=self.pictures, bad=len(self.unreadable), captioned=self.captioned,
                          total=self.caption_pictures, pct=100 * self.caption_coverage))
        else:
            out.append(tr("**{n}** pictures, {captioned} with a caption ({pct:.0f}%), {bad} unreadable.",
                          n=self.pictures, captioned=self.captioned, pct=100 * self.caption_coverage,
                          bad=len(self.unreadable)))
        if self.sizes:
            s = self.sizes
            out.append(tr("Short side {min}–{max} px (median {median}); {mp} megapixels on average.",
                          min=_num(s["short_side"]["min"]), max=_num(s["short_side"]["max"]),
                          median=_num(s["short_side"]["median"]),
                          mp=f"{s['megapixels']['mean']:.2f}"))
        out += ["", f"#### {tr('What to fix')}", ""]
        out += [f"- {line}" for line in self.advice] or [f"- {tr('Nothing — the dataset looks ready.')}"]
        if self.folders:
            out += ["", f"#### {tr('Folders')}", "", f"| {tr('Folder')} | {tr('Repeats')} | {tr('Pictures')} |", "|---|---:|---:|"]
            out += [f"| {_md(f['name'])} | {f['repeats']} | {f['pictures']} |" for f in self.folders]
        if self.pictures:
            out += ["", f"#### {tr('Sizes and shapes')}", "", f"| {tr('Short side')} | {tr('Pictures')} |", "|---|---:|"]
            out += [f"| {b['label']} | {b['count']} |" for b in self.short_side_bins]
            out += ["", f"| {tr('Aspect ratio')} | {tr('Pictures')} |", "|---|---:|"]
            out += [f"| {a['label']} | {a['count']} |" for a in self.aspect_ratios]
            out += ["", f"#### {tr('Buckets at {w}×{h}', w=w, h=h)}", "",
                    f"| {tr('Bucket')} | {tr('Pictures')} | {tr('Enlarged')} |", "|---|---:|---:|"]
            out += [f"| {b['resolution'][0]}×{b['resolution'][1]} | {b['count']} | {b['upscaled']} |" for b in self.buckets]
        if self.near_duplicates:
            out += ["", f"#### {tr('Near-duplicates')}", ""]
            out += ["- " + ", ".join(f"`{_md(n)}`" for n in group) for group in self.near_duplicates]
        if self.tag_frequency:
            out += ["", f"#### {tr('Most frequent tags')}", "", f"| {tr('Tag')} | {tr('Pictures')} |", "|---|---:|"]
            out += [f"| {_md(t)} | {n} |" for t, n in self.tag_frequency[:max_tags]]
        if self.unreadable:
            out += ["", f"#### {tr('Unreadable files')}", ""]
            out += [f"- `{_md(u['name'])}`: {u['reason']}" for u in self.unreadable]
        return "\n".join(out) + "\n"


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


@dataclass
class _Seen:
    path: Path
    name: str
    folder: str
    size: Optional[Tuple[int, int]] = None
    problem: Optional[ImageProblem] = None
    phash: Optional[int] = None
    dhash: Optional[int] = None


def _look(item: _Seen, hashes: bool, max_pixels: int) -> _Seen:
    try:
        info = inspect_image(item.path, decode=not hashes, min_side=1, max_pixels=max_pixels)
        item.size = info.size
        if hashes:
            image = open_image(item.path, reduce_to=(64, 64), max_pixels=max_pixels)
            item.phash, item.dhash = phash(image), dhash(image)
    except ImageProblem as problem:
        item.size = None
        item.problem = problem
    return item


def _collect(roots: Sequence[Path]) -> Tuple[List[_Seen], List[Dict[str, Any]]]:
    items: List[_Seen] = []
    folders: List[Dict[str, Any]] = []
    for root in roots:
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        for path in iter_images(root, recursive=False):
            items.append(_Seen(path, prefix + path.name, ""))
        try:
            subfolders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        except FileNotFoundError:
            subfolders = []
        for sub in subfolders:
            pictures = list(iter_images(sub, recursive=True))
            parsed = parse_folder_name(sub.name)
            folders.append({"name": prefix + sub.name, "repeats": parsed[0] if parsed else None,
                            "concept": parsed[1] if parsed else None, "pictures": len(pictures)})
            for path in pictures:
                items.append(_Seen(path, prefix + path.relative_to(root).as_posix(), prefix + sub.name))
    return items, folders


def _plural(n: int, one: str, many: str, **values: Any) -> str:
    return tr(one, n=n, **values) if n == 1 else tr(many, n=n, **values)


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (tr(" and {n} more", n=len(names) - limit) if len(names) > limit else "")


def _stats(values: Sequence[float]) -> Dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": sum(values) / len(values)}


def build_report(
    folder: Union[PathLike, Sequence[PathLike]],
    resolution: Union[int, Tuple[int, int]] = 512,
    *,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 1024,
    bucket_reso_steps: int = 64,
    bucketing: bool = True,
    bucket_no_upscale: bool = False,
    batch_size: int = 1,
    caption_extension: str = ".txt",
    near_duplicates: bool = True,
    max_phash_distance: int = 8,
    max_dhash_distance: int = 12,
    max_pixels: int = 178_956_970,
    workers: Optional[int] = None,
    progress: Optional[Progress] = None,
    stop: Optional[threading.Event] = None,
    captions_from: Optional[PathLike] = None,
) -> DatasetReport:
    """Survey the pictures in ``folder`` (or several folders) for training at ``resolution``.

    Pictures lying in the folder and in its subfolders are read (a ``<repeats>_<concept>`` subfolder is listed with
    its repeats). Captions are the ``caption_extension`` file beside each picture, else the other of
    ``.txt``/``.caption``. The bucket plan uses the trainer's own ``make_buckets``; ``min_bucket_reso`` and
    ``max_bucket_reso`` are widened to the resolution when they would exclude it. With ``bucketing=False``
    (preprocessing crops every picture to the resolution) the only bucket is the resolution itself. ``stop`` ends
    the survey early (the report covers what was read). ``captions_from``: the folder tree whose captions the
    trainer reads (a version's ``dataset/train``); when it holds pictures, the captions, the tag frequencies and the
    caption advice are those of its pictures, named by their path in it.
    """
    roots = [Path(folder)] if isinstance(folder, (str, os.PathLike)) else [Path(f) for f in folder]
    res = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    cap_exts = [ext] + [e for e in (".txt", ".caption") if e != ext]
    buckets = make_buckets(res, min(min_bucket_reso, *res), max(max_bucket_reso, *res), bucket_reso_steps)

    items, folder_rows = _collect(roots)
    report = DatasetReport(folder=", ".join(str(r) for r in roots), resolution=res, folders=folder_rows,
                           bucketing=bucketing)

    n_workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    seen: List[_Seen] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="tt-report") as pool:
        for item in pool.map(lambda it: it if (stop is not None and stop.is_set()) else _look(it, near_duplicates, max_pixels), items):
            done += 1
            if progress:
                progress(done, len(items), item.name)
            if item.size is None and item.problem is None:
                continue  # not looked at: stopped
            seen.append(item)

    good: List[_Seen] = []
    for item in seen:
        if item.problem is not None:
            report.unreadable.append({"name": item.name, "reason": item.problem.message, "code": item.problem.code})
        else:
            good.append(item)
    report.pictures = len(good)

    for item in good:
        w, h = item.size  # type: ignore[misc]
        if not bucketing:
            bucket = res
        elif bucket_no_upscale:
            bucket = assign_bucket_no_upscale((w, h), res, bucket_reso_steps)
        else:
            bucket = assign_bucket((w, h), buckets)
        upscale = max(bucket[0] / w, bucket[1] / h)
        entry = PictureEntry(item.name, w, h, bucket, round(upscale, 4), folder=item.folder,
                             phash=f"{item.phash:016x}" if item.phash is not None else None,
                             dhash=f"{item.dhash:016x}" if item.dhash is not None else None)
        entry.caption_file, entry.tags = _caption_of(item.path, cap_exts)
        if upscale > 1.0:
            report.small.append(item.name)
        ratio = w / h
        if ratio > _EXTREME_RATIO or ratio < 1 / _EXTREME_RATIO:
            report.extreme.append(item.name)
        report.entries.append(entry)

    _fill_spread(report)
    if near_duplicates and len(good) > 1:
        groups = near_duplicate_groups([i.phash or 0 for i in good], [i.dhash or 0 for i in good],
                                       max_phash=max_phash_distance, max_dhash=max_dhash_distance)
        report.near_duplicates = [[good[i].name for i in g] for g in groups]
    report.batch_size = batch_size
    _count_captions(report, captions_from, cap_exts)
    return report


def recount_captions(report: DatasetReport, captions_from: Optional[PathLike] = None,
                     caption_extension: str = ".txt", host_upscalers: Optional[bool] = None) -> DatasetReport:
    """A copy of ``report`` with its captions counted again (in ``captions_from`` when it holds pictures, as in
    :func:`build_report`) and its advice redone: captions change far more often than the pictures, whose survey
    (sizes, hashes) is the slow part. ``host_upscalers``: whether the host has upscalers (None: as before)."""
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    fresh = copy.deepcopy(report)
    if host_upscalers is not None:
        fresh.host_upscalers = host_upscalers
    fresh.captioned, fresh.caption_folder, fresh.caption_pictures = 0, "", 0
    fresh.uncaptioned, fresh.empty_captions, fresh.tag_frequency = [], [], []
    _count_captions(fresh, captions_from, [ext] + [e for e in (".txt", ".caption") if e != ext])
    return fresh


def _caption_of(picture: Path, extensions: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """(the caption file's name or None, its tags) as the trainer reads them."""
    cap = _caption_file(picture, extensions)
    if cap is None:
        return None, []
    try:
        return cap.name, split_caption(read_caption(cap))
    except OSError:
        return cap.name, []


def _count_captions(report: DatasetReport, captions_from: Optional[PathLike], extensions: Sequence[str]) -> None:
    """Coverage, missing and empty captions, tag frequencies and the advice: of the pictures in ``captions_from``
    when it holds any, else of the surveyed pictures."""
    training = sorted(iter_images(captions_from, recursive=True)) if captions_from is not None else []
    if training:
        report.caption_folder = str(captions_from)
        pictures = [(p.relative_to(captions_from).as_posix(), _caption_of(p, extensions)) for p in training]
    else:
        pictures = [(e.name, (e.caption_file, e.tags)) for e in report.entries]
    tag_counts: Dict[str, int] = {}
    tag_display: Dict[str, str] = {}
    report.caption_pictures = len(pictures)
    for name, (caption_file, tags) in pictures:
        if caption_file is None:
            report.uncaptioned.append(name)
        elif tags:
            report.captioned += 1
        else:
            report.empty_captions.append(name)
        for tag in dict.fromkeys(t.lower() for t in tags):
            tag_counts[tag] = tag_counts.get(tag, 0) + 1
        for tag in tags:
            tag_display.setdefault(tag.lower(), tag)
    report.tag_frequency = sorted(((tag_display[t], n) for t, n in tag_counts.items()), key=lambda tn: (-tn[1], tn[0]))
    report.advice = _advice(report, report.batch_size)


def _fill_spread(report: DatasetReport) -> None:
    entries = report.entries
    if not entries:
        return
    report.sizes = {
        "width": _stats([e.width for e in entries]),
        "height": _stats([e.height for e in entries]),
        "short_side": _stats([min(e.width, e.height) for e in entries]),
        "megapixels": _stats([e.width * e.height / 1e6 for e in entries]),
    }
    edges = _SIZE_BINS
    labels = [tr("under {px} px", px=edges[0])]
    labels += [tr("{lo}–{hi} px", lo=lo, hi=hi - 1) for lo, hi in zip(edges, edges[1:])]
    labels.append(tr("{px} px or more", px=edges[-1]))
    counts = [0] * len(labels)
    for e in entries:
        counts[sum(1 for edge in edges if min(e.width, e.height) >= edge)] += 1
    report.short_side_bins = [{"label": l, "count": c} for l, c in zip(labels, counts)]

    shapes = [
        (tr("very tall (narrower than 1:2)"), lambda r: r < 0.5),
        (tr("portrait (1:2 to 4:5)"), lambda r: 0.5 <= r < 0.8),
        (tr("about square (4:5 to 5:4)"), lambda r: 0.8 <= r <= 1.25),
        (tr("landscape (5:4 to 2:1)"), lambda r: 1.25 < r <= 2.0),
        (tr("very wide (wider than 2:1)"), lambda r: r > 2.0),
    ]
    report.aspect_ratios = [{"label": label, "count": sum(1 for e in entries if test(e.width / e.height))}
                            for label, test in shapes]

    per_bucket: Dict[Tuple[int, int], List[PictureEntry]] = {}
    for e in entries:
        per_bucket.setdefault(tuple(e.bucket), []).append(e)  # type: ignore[arg-type]
    report.buckets = [
        {"resolution": [b[0], b[1]], "count": len(es), "upscaled": sum(1 for e in es if e.upscale > 1.0)}
        for b, es in sorted(per_bucket.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def _advice(report: DatasetReport, batch_size: int) -> List[str]:
    advice: List[str] = []
    n = report.pictures
    if n == 0:
        advice.append(tr("There are no pictures yet — import some first."))
    if report.unreadable:
        names = [u["name"] for u in report.unreadable]
        advice.append(_plural(len(names), "1 file cannot be read and will be skipped: {names}.",
                              "{n} files cannot be read and will be skipped: {names}.", names=_names(names)))
    if 0 < n < 10:
        advice.append(_plural(n, "Only 1 picture — 15 to 50 varied pictures usually give a better LoRA.",
                              "Only {n} pictures — 15 to 50 varied pictures usually give a better LoRA."))
    if report.small:
        w, h = report.resolution
        if report.host_upscalers:
            fix = tr("Use larger pictures, or pick one of the WebUI's upscalers under \"Enlarge small pictures "
                     "with\" before preprocessing.")
        else:
            fix = tr("Use larger pictures: here preprocessing can only enlarge them with Lanczos, which adds no "
                     "detail (the WebUI's upscalers do better).")
        if not report.bucketing and w == h:
            advice.append(_plural(
                len(report.small),
                "1 picture is under {px} px on the short side — it will be upscaled and look soft ({names}).",
                "{n} pictures are under {px} px on the short side — they will be upscaled and look soft ({names}).",
                px=w, names=_names(report.small)) + " " + fix)
        else:
            advice.append(_plural(
                len(report.small),
                "1 picture is smaller than the size it trains at — it will be upscaled and look soft ({names}).",
                "{n} pictures are smaller than the size they train at — they will be upscaled and look soft "
                "({names}).", names=_names(report.small)) + " " + fix)
    if report.near_duplicates:
        groups = ["(" + ", ".join(g) + ")" for g in report.near_duplicates]
        advice.append(_plural(
            len(groups),
            "1 group of near-duplicate pictures {names} — keep one, or that picture is learned more than the rest.",
            "{n} groups of near-duplicate pictures {names} — keep one of each, or those pictures are learned more than the rest.",
            names=_names(groups, 3)))
    if report.uncaptioned and report.caption_folder:
        advice.append(_plural(
            len(report.uncaptioned),
            "1 training picture has no caption ({names}) — caption it, or it trains with its concept's name alone "
            "as the caption.",
            "{n} training pictures have no caption ({names}) — caption them, or they train with their concept's "
            "name alone as the caption.",
            names=_names(report.uncaptioned)))
    elif report.uncaptioned and n:
        advice.append(_plural(
            len(report.uncaptioned),
            "1 picture has no caption ({names}) — caption it, or it trains with its folder's name as the caption.",
            "{n} pictures have no caption ({names}) — caption them, or they train with their folder's name as the caption.",
            names=_names(report.uncaptioned)))
    if report.empty_captions:
        advice.append(_plural(len(report.empty_captions), "1 caption file is empty ({names}).",
                              "{n} caption files are empty ({names}).", names=_names(report.empty_captions)))
    if report.extreme:
        advice.append(_plural(
            len(report.extreme),
            "1 picture is wider or taller than 2:1 ({names}) — a square crop cuts most of it away; use crop mode "
            "“none” (buckets) or crop it by hand.",
            "{n} pictures are wider or taller than 2:1 ({names}) — a square crop cuts most of them away; use crop "
            "mode “none” (buckets) or crop them by hand.",
            names=_names(report.extreme)))
    if batch_size > 1 and report.buckets:
        thin = [b for b in report.buckets if b["count"] < batch_size]
        if thin:
            advice.append(_plural(
                len(thin),
                "1 bucket holds fewer pictures than the batch size ({batch}); its steps train smaller batches.",
                "{n} buckets hold fewer pictures than the batch size ({batch}); their steps train smaller batches.",
                batch=batch_size))
    empty_folders = [f["name"] for f in report.folders if f["pictures"] == 0]
    if empty_folders:
        advice.append(_plural(len(empty_folders), "1 folder holds no pictures: {names}.",
                              "{n} folders hold no pictures: {names}.", names=_names(empty_folders)))
    return advice
