"""Dataset throughput: importing and preprocessing (cropping) generated pictures, plus the dataset report.

    python bench/dataset_speed.py [--count 1000] [--crops center,focal,none] [--format png] [--out FILE]

Prints ONE JSON document on stdout::

    {count, picture_sizes, source_format, output_format, workers, cpu_count, loadavg_1m_before, generate_s,
     import: {seconds, cpu_s, pictures_per_s, imported, captions, skipped},
     preprocess: [{crop, format, flip, seconds, cpu_s, pictures_per_s, outputs, skipped}],
     rerun_s, report: {seconds, cpu_s, pictures_per_s, near_duplicate_groups},
     import_and_crop_s, target_s, within_target, loadavg_1m_after}

``seconds`` is wall-clock time; ``cpu_s`` the CPU time the process used in that phase (all threads), which moves
less than wall time when other programs share the machine (see ``loadavg_1m_*``).

What is timed, in this order, on a temporary folder that is removed at the end:

1. ``import``: ``lib_trainer.dataset.importer.import_pictures`` of a folder of ``--count`` generated JPEG photos
   (a mix of 1024×768, 768×1024, 1200×800 and 900×900: what a phone export scaled for the web looks like) —
   reading, hashing, fully decoding every file to catch damage, copying the originals into ``source/``.
2. ``preprocess``: ``lib_trainer.dataset.preprocess.preprocess`` at 512×512 for each crop mode of ``--crops``
   (each into its own folder), with the OpenCV Haar face detector in ``focal`` mode.
3. ``rerun_s``: the first crop mode again, unchanged: the idempotent no-op pass (the manifest says everything is
   up to date).
4. ``report``: ``lib_trainer.dataset.report.build_report`` over ``source/`` (headers, perceptual hashes of every
   picture, near-duplicate search, captions).

``import_and_crop_s`` is import + the first crop mode, the number issue 3 sets a target for (under 60 s for 1,000
pictures on a 2-core machine). Generating the pictures (``generate_s``) is not part of it. Captioning is not
measured here: it runs on the host's taggers (DeepBooru/BLIP/WD14), i.e. on the GPU inside the WebUI.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib_trainer.dataset.importer import ImportOptions, import_pictures  # noqa: E402
from lib_trainer.dataset.preprocess import PreprocessOptions, preprocess  # noqa: E402
from lib_trainer.dataset.report import build_report  # noqa: E402

SIZES = [(1024, 768), (768, 1024), (1200, 800), (900, 900)]
TARGET_S = 60.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _picture(index: int, size: tuple) -> Image.Image:
    """A photo-like picture: smooth colour blobs with fine grain, different for every index."""
    rng = np.random.default_rng(index)
    blobs = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.normal(0, 6, (size[1], size[0], 1))
    arr = np.clip(np.asarray(blobs, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def generate(folder: Path, count: int, source_format: str, workers: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"jpg": ".jpg", "png": ".png"}[source_format]

    def make(i: int) -> None:
        im = _picture(i, SIZES[i % len(SIZES)])
        path = folder / f"photo_{i:05d}{ext}"
        if source_format == "jpg":
            im.save(path, "JPEG", quality=90)
        else:
            im.save(path, "PNG", compress_level=1)
        if i % 2 == 0:
            path.with_suffix(".txt").write_text(f"sks dog, photo {i % 7}, outdoors", encoding="utf-8")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(make, range(count)))


def _cpu_s() -> float:
    """CPU seconds this process (all its threads) has used: what a phase costs, whatever else the machine runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    workers = args.workers or min(4, os.cpu_count() or 1)
    crops = [c.strip() for c in args.crops.split(",") if c.strip()]
    result: Dict[str, Any] = {
        "count": args.count,
        "picture_sizes": [list(s) for s in SIZES],
        "source_format": args.source_format,
        "output_format": args.format,
        "resolution": args.resolution,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_before": _loadavg(),
    }
    uploads = work / "uploads"
    t = time.perf_counter()
    generate(uploads, args.count, args.source_format, workers)
    result["generate_s"] = round(time.perf_counter() - t, 2)
    log(f"generated {args.count} pictures in {result['generate_s']} s")

    source = work / "version" / "dataset" / "source"
    t, cpu = time.perf_counter(), _cpu_s()
    report = import_pictures([uploads], source, options=ImportOptions(workers=workers))
    seconds = time.perf_counter() - t
    result["import"] = {
        "seconds": round(seconds, 2),
        "cpu_s": round(_cpu_s() - cpu, 2),
        "pictures_per_s": round(len(report.imported) / seconds, 1),
        "imported": len(report.imported),
        "captions": len(report.captions),
        "skipped": len(report.skipped),
    }
    log(f"import: {result['import']}")

    result["preprocess"] = []
    train = work / "version" / "dataset" / "train"
    for crop in crops:
        options = PreprocessOptions(width=args.resolution, height=args.resolution, crop=crop, flip=args.flip,
                                    image_format=args.format)
        t, cpu = time.perf_counter(), _cpu_s()
        done = preprocess(source, train, repeats=1, concept=f"bench {crop}", options=options, workers=workers)
        seconds = time.perf_counter() - t
        entry = {
            "crop": crop,
            "format": args.format,
            "flip": args.flip,
            "seconds": round(seconds, 2),
            "cpu_s": round(_cpu_s() - cpu, 2),
            "pictures_per_s": round(done.sources / seconds, 1),
            "outputs": len(done.outputs),
            "skipped": len(done.skipped),
        }
        result["preprocess"].append(entry)
        log(f"preprocess: {entry}")

    if crops:
        options = PreprocessOptions(width=args.resolution, height=args.resolution, crop=crops[0], flip=args.flip,
                                    image_format=args.format)
        t = time.perf_counter()
        again = preprocess(source, train, repeats=1, concept=f"bench {crops[0]}", options=options, workers=workers)
        result["rerun_s"] = round(time.perf_counter() - t, 2)
        result["rerun_written"] = len(again.written)
        log(f"rerun: {result['rerun_s']} s, {len(again.written)} rewritten")

    if not args.no_report:
        t, cpu = time.perf_counter(), _cpu_s()
        doctor = build_report(source, args.resolution, workers=workers)
        seconds = time.perf_counter() - t
        result["report"] = {
            "seconds": round(seconds, 2),
            "cpu_s": round(_cpu_s() - cpu, 2),
            "pictures_per_s": round(doctor.pictures / seconds, 1),
            "near_duplicate_groups": len(doctor.near_duplicates),
        }
        log(f"report: {result['report']}")

    if crops:
        total = result["import"]["seconds"] + result["preprocess"][0]["seconds"]
        result["import_and_crop_s"] = round(total, 2)
        result["target_s"] = TARGET_S * args.count / 1000
        result["within_target"] = total <= result["target_s"]
    result["loadavg_1m_after"] = _loadavg()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="pictures to generate (default 1000)")
    parser.add_argument("--crops", default="center,focal,none",
                        help="crop modes to time, comma-separated; the first counts for the target (default: "
                             "center,focal,none)")
    parser.add_argument("--format", choices=("auto", "png", "jpg"), default="auto",
                        help="output format (default auto: JPEG for JPEG sources, else PNG)")
    parser.add_argument("--source-format", choices=("jpg", "png"), default="jpg", help="generated pictures' format")
    parser.add_argument("--resolution", type=int, default=512, help="square target size (default 512)")
    parser.add_argument("--flip", action="store_true", help="also write mirrored copies")
    parser.add_argument("--workers", type=int, help="threads (default: min(4, CPU count))")
    parser.add_argument("--no-report", action="store_true", help="skip the dataset report")
    parser.add_argument("--tmp", type=Path, help="parent folder of the temporary work folder")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tt-dataset-bench-", dir=args.tmp))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
