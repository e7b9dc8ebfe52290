"""Aspect-ratio buckets, as kohya sd-scripts plans them.

A *bucket* is a training size ``(width, height)`` in pixels. Every picture is assigned the bucket whose aspect
ratio is nearest its own, scaled so that it covers the bucket and center-cropped to it; a batch only ever holds
pictures of one bucket, so tensors stack.

``make_buckets`` produces the same set as sd-scripts' bucket manager for the same ``resolution``,
``min_bucket_reso``, ``max_bucket_reso`` and ``bucket_reso_steps``, so ``ss_bucket_info`` and step counts
match. One deliberate difference: ``assign_bucket`` compares aspect ratios on a log scale (sd-scripts compares
``w/h`` linearly, which treats a portrait picture differently from the same picture turned landscape).

All sizes are ``(width, height)`` as in Pillow, except where a name says otherwise (``crop_top_left`` is
``(top, left)``, the order SDXL's conditioning uses).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from PIL import Image

__all__ = [
    "Bucket",
    "ResizedCrop",
    "make_buckets",
    "no_bucket",
    "assign_bucket",
    "assign_bucket_no_upscale",
    "no_upscale_size",
    "cover_and_center",
    "sdxl_time_ids",
    "resize_crop",
    "batches_by_bucket",
    "bucket_info",
]

Bucket = Tuple[int, int]

_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS

#: The VAE of every supported architecture downscales by 8, so training sizes must be multiples of 8.
LATENT_FACTOR = 8


def _whole(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _reso(name: str, value: Any) -> Bucket:
    """Accept ``512``, ``(768, 512)``, ``[768, 512]`` or ``"768,512"``; return ``(w, h)``."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").replace("×", ",").split(",") if p.strip()]
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"{name} must be a size like 512 or 768,512, got {value!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a size like 512 or (768, 512), got {value!r}") from None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2:
        raise ValueError(f"{name} must have a width and a height, got {value!r}")
    return (_whole(f"{name} width", items[0]), _whole(f"{name} height", items[1]))


def make_buckets(
    max_area_reso: Union[int, Tuple[int, int]],
    min_size: int = 256,
    max_size: int = 1024,
    step: int = 64,
) -> List[Bucket]:
    """All buckets for training at ``max_area_reso`` (the ``resolution``; its area is the area budget).

    Every bucket ``(w, h)`` has ``w`` and ``h`` multiples of ``step`` inside ``[min_size, max_size]`` and
    ``w * h <= max_area_reso[0] * max_area_reso[1]``; for each width the tallest such height is taken (and the
    transposed bucket added), plus the largest square within the area. Sorted, no duplicates.
    """
    width, height = _reso("resolution", max_area_reso)
    step = _whole("bucket_reso_steps", step)
    min_size = _whole("min_bucket_reso", min_size)
    max_size = _whole("max_bucket_reso", max_size)
    if step % LATENT_FACTOR:
        raise ValueError(
            f"bucket_reso_steps must be a multiple of {LATENT_FACTOR} (the VAE's downscale factor), got {step}"
        )
    if width % step or height % step:
        raise ValueError(
            f"resolution {width}×{height} is not a multiple of bucket_reso_steps {step}; "
            f"use e.g. {max(step, width // step * step)}×{max(step, height // step * step)}"
        )
    if min_size > max_size:
        raise ValueError(f"min_bucket_reso ({min_size}) is larger than max_bucket_reso ({max_size})")
    if min_size > min(width, height):
        raise ValueError(
            f"min_bucket_reso ({min_size}) must not exceed the resolution's smaller side ({min(width, height)})"
        )
    if max_size < max(width, height):
        raise ValueError(
            f"max_bucket_reso ({max_size}) must not be below the resolution's larger side ({max(width, height)})"
        )

    max_area = width * height
    lo = -(-min_size // step) * step  # smallest multiple of step >= min_size
    hi = max_size // step * step  # largest multiple of step <= max_size
    buckets = set()
    side = math.isqrt(max_area) // step * step
    buckets.add((side, side))  # within bounds: min_size <= min(w, h) <= side <= max(w, h) <= max_size
    for w in range(lo, hi + 1, step):
        h = min(hi, max_area // w // step * step)
        if h >= lo:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def no_bucket(resolution: Union[int, Tuple[int, int]]) -> List[Bucket]:
    """The single bucket used when bucketing is off: every picture is scaled and center-cropped to it."""
    width, height = _reso("resolution", resolution)
    if width % LATENT_FACTOR or height % LATENT_FACTOR:
        raise ValueError(
            f"resolution {width}×{height} must be a multiple of {LATENT_FACTOR} (the VAE's downscale factor)"
        )
    return [(width, height)]


def _image_size(image_size: Any) -> Bucket:
    try:
        w, h = image_size
    except (TypeError, ValueError):
        raise ValueError(f"image size must be (width, height), got {image_size!r}") from None
    if isinstance(w, bool) or isinstance(h, bool) or not isinstance(w, int) or not isinstance(h, int):
        raise ValueError(f"image size must be whole numbers, got {image_size!r}")
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {w}×{h}")
    return w, h


def assign_bucket(image_size: Tuple[int, int], buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest (on a log scale) to the picture's ``(width, height)``.

    Ties go to the larger bucket, then the narrower one, so the choice never depends on the list's order.
    """
    w, h = _image_size(image_size)
    if not buckets:
        raise ValueError("no buckets to choose from")
    target = math.log(w / h)
    best = None
    best_key = None
    for bucket in buckets:
        bw, bh = bucket
        key = (abs(math.log(bw / bh) - target), -(bw * bh), bw)
        if best_key is None or key < best_key:
            best, best_key = (bw, bh), key
    return best  # type: ignore[return-value]


def no_upscale_size(
    image_size: Tuple[int, int], max_area_reso: Union[int, Tuple[int, int]], step: int = 64
) -> Tuple[Bucket, Tuple[int, int]]:
    """``bucket_no_upscale`` as sd-scripts' ``BucketManager.select_bucket`` does it: ``(bucket, resized_size)``.

    A picture within the area budget (``resolution``'s width × height) is not resized at all; its bucket is its
    own size rounded down to multiples of ``step``, so it is only cropped (by less than ``step`` on each side).
    A larger picture is shrunk, keeping its aspect ratio, to the budget: one side is rounded to ``step`` (the
    side whose rounding keeps the aspect ratio closer) and the other follows the ratio; the bucket is that size
    rounded down. ``min_bucket_reso`` / ``max_bucket_reso`` play no part (as in sd-scripts). One difference: a
    side shorter than ``step`` gets a bucket of one ``step`` (sd-scripts would make an empty bucket), the only
    case where a picture is enlarged.
    """
    w, h = _image_size(image_size)
    aw, ah = _reso("resolution", max_area_reso)
    step = _whole("bucket_reso_steps", step)
    max_area = aw * ah

    def round_to_step(x: float) -> int:
        x = int(x + 0.5)
        return max(step, x - x % step)

    if w * h > max_area:
        aspect = w / h
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        width_rounded = round_to_step(resized_w)
        ar_width_rounded = width_rounded / round_to_step(width_rounded / aspect)
        height_rounded = round_to_step(resized_h)
        ar_height_rounded = round_to_step(height_rounded * aspect) / height_rounded
        if abs(ar_width_rounded - aspect) < abs(ar_height_rounded - aspect):
            resized = (width_rounded, int(width_rounded / aspect + 0.5))
        else:
            resized = (int(height_rounded * aspect + 0.5), height_rounded)
    else:
        resized = (w, h)
    bucket = (max(step, resized[0] - resized[0] % step), max(step, resized[1] - resized[1] % step))
    return bucket, resized


def assign_bucket_no_upscale(
    image_size: Tuple[int, int], max_area_reso: Union[int, Tuple[int, int]], step: int = 64
) -> Bucket:
    """The bucket ``bucket_no_upscale`` gives a picture (see :func:`no_upscale_size`)."""
    return no_upscale_size(image_size, max_area_reso, step)[0]


class ResizedCrop(NamedTuple):
    """What ``resize_crop`` returns (unpacks as ``image, crop_top_left, original_size``)."""

    image: Image.Image
    #: ``(top, left)`` of the crop in the scaled picture, in pixels (SDXL's ``crops_coords_top_left`` order).
    crop_top_left: Tuple[int, int]
    #: ``(width, height)`` of the picture before scaling.
    original_size: Tuple[int, int]

    @property
    def sdxl_time_ids(self) -> Tuple[int, int, int, int, int, int]:
        """SDXL's size conditioning, in its order: original (h, w), crop (top, left), target (h, w)."""
        ow, oh = self.original_size
        tw, th = self.image.size
        top, left = self.crop_top_left
        return (oh, ow, top, left, th, tw)


def cover_and_center(
    image_size: Tuple[int, int], bucket: Tuple[int, int], resized: Optional[Tuple[int, int]] = None
) -> Tuple[Bucket, Tuple[int, int]]:
    """The size a picture is scaled to so that it covers ``bucket``, and the ``(top, left)`` of a centered crop.

    ``resized`` is a size chosen beforehand (``bucket_no_upscale``'s, see :func:`no_upscale_size`), used when it
    covers the bucket. Pure geometry: callers that only need SDXL's size conditioning (cached latents) need not
    decode the picture.
    """
    bw, bh = _image_size(bucket)
    w, h = image_size
    if w < 1 or h < 1:
        raise ValueError(f"cannot resize an empty image ({w}×{h})")
    if resized is not None and resized[0] >= bw and resized[1] >= bh:
        rw, rh = resized
    else:
        scale = max(bw / w, bh / h)
        rw = max(bw, round(w * scale))
        rh = max(bh, round(h * scale))
    return (rw, rh), ((rh - bh) // 2, (rw - bw) // 2)


def sdxl_time_ids(
    image_size: Tuple[int, int], bucket: Tuple[int, int], resized: Optional[Tuple[int, int]] = None
) -> Tuple[int, int, int, int, int, int]:
    """SDXL's size conditioning of a centered crop: original (h, w), crop (top, left), target (h, w).

    The same numbers as ``resize_crop(...).sdxl_time_ids`` without a random crop."""
    _, (top, left) = cover_and_center(image_size, bucket, resized)
    w, h = image_size
    bw, bh = _image_size(bucket)
    return (h, w, top, left, bh, bw)


def resize_crop(
    image: Image.Image, bucket: Tuple[int, int], *, rng: Optional[random.Random] = None,
    resized: Optional[Tuple[int, int]] = None,
) -> ResizedCrop:
    """Scale ``image`` (already EXIF-transposed) so that it covers ``bucket`` (or to ``resized``, a size chosen
    beforehand that covers it), then crop it to the bucket.

    The crop is centered, or placed at random when ``rng`` is given (sd-scripts' ``random_crop``).
    """
    bw, bh = _image_size(bucket)
    w, h = image.size
    (rw, rh), (top, left) = cover_and_center(image.size, bucket, resized)
    if (rw, rh) != (w, h):
        image = image.resize((rw, rh), _LANCZOS)
    if rng is not None:
        left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    if (rw, rh) != (bw, bh):
        image = image.crop((left, top, left + bw, top + bh))
    return ResizedCrop(image, (top, left), (w, h))


def batches_by_bucket(
    items_with_bucket: Iterable[Tuple[Any, Bucket]], batch_size: int, rng: random.Random
) -> List[List[Tuple[Any, Bucket]]]:
    """Split ``(item, bucket)`` pairs into batches that never mix buckets, in a shuffled order.

    Each bucket's items are shuffled, cut into batches of ``batch_size`` (the last one of a bucket may be
    smaller, as in sd-scripts), and the batches of all buckets are shuffled together. Buckets are visited in
    sorted order, so the result depends only on the input order and the state of ``rng``. The pairs are returned
    as given; ``len(result)`` is the number of steps in the epoch.
    """
    batch_size = _whole("batch_size", batch_size)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    groups: Dict[Bucket, List[Tuple[Any, Bucket]]] = defaultdict(list)
    for pair in items_with_bucket:
        _item, bucket = pair
        groups[(int(bucket[0]), int(bucket[1]))].append(pair)
    batches: List[List[Tuple[Any, Bucket]]] = []
    for bucket in sorted(groups):
        members = groups[bucket]
        rng.shuffle(members)
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches


def bucket_info(
    assignments: Iterable[Tuple[Tuple[int, int], Bucket]], buckets: Optional[Sequence[Bucket]] = None
) -> Dict[str, Any]:
    """``ss_bucket_info`` metadata from ``(image_size, bucket)`` pairs (one per use in an epoch, so repeats count).

    Shape: ``{"buckets": {index: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}`` where ``index``
    is the bucket's position in ``buckets`` (default: the sorted buckets used) and ``x`` the mean absolute
    difference between a picture's ``w/h`` and its bucket's.
    """
    counts: Dict[Bucket, int] = defaultdict(int)
    errors: List[float] = []
    for size, bucket in assignments:
        w, h = _image_size(size)
        bw, bh = _image_size(bucket)
        counts[(bw, bh)] += 1
        errors.append(abs(w / h - bw / bh))
    order = list(buckets) if buckets is not None else sorted(counts)
    index = {tuple(b): i for i, b in enumerate(order)}
    missing = [b for b in counts if b not in index]
    if missing:
        raise ValueError(f"buckets {missing} are not in the bucket list")
    info: Dict[str, Any] = {
        "buckets": {
            index[b]: {"resolution": [b[0], b[1]], "count": counts[b]} for b in sorted(counts, key=index.__getitem__)
        },
        "mean_img_ar_error": (sum(errors) / len(errors)) if errors else 0.0,
    }
    return info
