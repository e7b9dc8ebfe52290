import math
import random

import pytest
from PIL import Image

from lib_trainer.trainer.buckets import (
    ResizedCrop,
    assign_bucket,
    assign_bucket_no_upscale,
    batches_by_bucket,
    bucket_info,
    cover_and_center,
    make_buckets,
    no_bucket,
    no_upscale_size,
    resize_crop,
)


@pytest.mark.parametrize(
    "reso,min_size,max_size,step",
    [
        ((512, 512), 256, 1024, 64),
        ((768, 768), 256, 1024, 64),
        ((1024, 1024), 256, 2048, 64),
        ((768, 512), 320, 1024, 32),
        ((64, 64), 32, 128, 16),
        ((1024, 1024), 640, 1536, 32),
    ],
)
def test_bucket_geometry(reso, min_size, max_size, step):
    buckets = make_buckets(reso, min_size, max_size, step)
    max_area = reso[0] * reso[1]
    assert buckets == sorted(set(buckets))
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert min_size <= w <= max_size and min_size <= h <= max_size
        assert w * h <= max_area
    side = math.isqrt(max_area) // step * step
    assert (side, side) in buckets
    # Symmetric: every landscape bucket has its portrait twin.
    assert all((h, w) in buckets for w, h in buckets)
    # For every allowed width, the tallest height that fits the area is there.
    for w in range(min_size, max_size + 1, step):
        fits = [h for h in range(min_size, max_size + 1, step) if w * h <= max_area]
        if fits:
            assert (w, max(fits)) in buckets


def test_default_sd15_buckets_match_sd_scripts():
    # sd-scripts' bucket set for resolution 512, min 256, max 1024, steps 64 (17 buckets; the mirrored
    # buckets of wide widths such as (256, 832) are part of it).
    assert make_buckets((512, 512), 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
    ]


def test_make_buckets_validation():
    with pytest.raises(ValueError, match="not a multiple of bucket_reso_steps"):
        make_buckets((500, 500), 256, 1024, 64)
    with pytest.raises(ValueError, match="larger than max_bucket_reso"):
        make_buckets((512, 512), 1024, 256, 64)
    with pytest.raises(ValueError, match="multiple of 8"):
        make_buckets((512, 512), 256, 1024, 12)
    with pytest.raises(ValueError, match="min_bucket_reso"):
        make_buckets((512, 512), 640, 1024, 64)
    with pytest.raises(ValueError, match="max_bucket_reso"):
        make_buckets((1024, 1024), 256, 768, 64)
    with pytest.raises(ValueError, match="whole number"):
        make_buckets((512, 512), 256, 1024, 6.5)
    with pytest.raises(ValueError):
        make_buckets((512, 0), 256, 1024, 64)
    assert make_buckets(512, 256, 1024, 64) == make_buckets((512, 512), 256, 1024, 64)
    assert make_buckets("512,512", 256, 1024, 64) == make_buckets((512, 512), 256, 1024, 64)


def test_assign_bucket_by_aspect_ratio():
    buckets = make_buckets((512, 512), 256, 1024, 64)
    assert assign_bucket((1000, 1000), buckets) == (512, 512)
    # 2:1 → 704×320 (2.2); 768×320 (2.4) and 640×384 (1.67) are both farther on a log scale.
    assert assign_bucket((2000, 1000), buckets) == (704, 320)
    assert assign_bucket((1000, 2000), buckets) == (320, 704)  # the log ratio is symmetric
    errs = sorted((abs(math.log((w / h) / 2)), (w, h)) for w, h in buckets)
    assert errs[0][1] == (704, 320)
    assert assign_bucket((4096, 1024), buckets) == (1024, 256)
    assert assign_bucket((30, 40), buckets) == (448, 576)
    # Exact ratio present: that bucket.
    assert assign_bucket((640, 384), buckets) == (640, 384)
    with pytest.raises(ValueError):
        assign_bucket((0, 10), buckets)
    with pytest.raises(ValueError):
        assign_bucket((10, 10), [])


def test_no_bucket_and_no_upscale():
    assert no_bucket(512) == [(512, 512)]
    assert no_bucket((768, 512)) == [(768, 512)]
    assert assign_bucket((100, 3000), no_bucket(512)) == (512, 512)
    with pytest.raises(ValueError, match="multiple of 8"):
        no_bucket(500)
    # A small picture keeps its size (rounded down to steps); a big one shrinks to the area budget.
    assert assign_bucket_no_upscale((300, 200), 512, 64) == (256, 192)
    w, h = assign_bucket_no_upscale((4000, 2000), 512, 64)
    assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and w > h
    assert assign_bucket_no_upscale((20, 20), 512, 64) == (64, 64)


@pytest.mark.parametrize("size, bucket, resized", [
    # within the area: not resized, the bucket is the size rounded down (only cropped)
    ((300, 200), (256, 192), (300, 200)),
    # larger: sqrt(512²·a) × 512²/that, one side rounded to 64 (the one whose rounding keeps the aspect ratio
    # closer), the other following the ratio, then both rounded down. 4000×2000: 724.1×362.0; width 704 gives
    # 704/320 = 2.2, height 320 gives 640/320 = 2.0, so (640, 320).
    ((4000, 2000), (640, 320), (640, 320)),
    # 1000×3000: 295.6×886.8; width 256 gives 256/768 (exact), height 832 gives 256/832, so (256, 768)
    ((1000, 3000), (256, 768), (256, 768)),
    # 700×500: 605.8×432.7; width 576 → 576/384 = 1.5, height 384 → 512/384 = 1.33 (closer to 1.4), so the height
    # 384 and the width 384·1.4 = 537.6 → 538, bucket 512×384
    ((700, 500), (512, 384), (538, 384)),
])
def test_no_upscale_size_is_sd_scripts_select_bucket(size, bucket, resized):
    """sd-scripts' BucketManager.select_bucket with no_upscale (library/train_util.py), worked by hand."""
    assert no_upscale_size(size, 512, 64) == (bucket, resized)
    # the picture is scaled to `resized` (never larger than itself) and cropped to the bucket at its centre
    (rw, rh), (top, left) = cover_and_center(size, bucket, resized)
    assert (rw, rh) == resized and rw <= size[0] and rh <= size[1]
    assert (top, left) == ((resized[1] - bucket[1]) // 2, (resized[0] - bucket[0]) // 2)


def test_resize_crop_covers_and_centers():
    img = Image.new("RGB", (400, 200), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 50, 200))  # a red band on the left that the crop must cut
    out = resize_crop(img, (128, 128))
    assert isinstance(out, ResizedCrop)
    image, crop_top_left, original_size = out  # unpacks as a 3-tuple
    assert image.size == (128, 128)
    assert original_size == (400, 200)
    assert crop_top_left == (0, (256 - 128) // 2)
    assert image.getpixel((0, 64))[0] < 40  # the red band was cropped away
    assert out.sdxl_time_ids == (200, 400, 0, 64, 128, 128)

    tall = resize_crop(Image.new("RGB", (50, 100)), (64, 96))
    assert tall.image.size == (64, 96)
    assert tall.crop_top_left == ((128 - 96) // 2, 0)

    same = resize_crop(Image.new("RGB", (64, 64)), (64, 64))
    assert same.image.size == (64, 64) and same.crop_top_left == (0, 0)

    rnd = [resize_crop(img, (64, 64), rng=random.Random(s)).crop_top_left for s in range(20)]
    assert all(t == 0 and 0 <= l <= 64 for t, l in rnd) and len(set(rnd)) > 1
    assert resize_crop(img, (64, 64), rng=random.Random(3)).crop_top_left == rnd[3]


def test_batches_never_mix_buckets_and_are_deterministic():
    buckets = [(512, 512), (640, 384), (384, 640)]
    items = [(f"img{i}", buckets[i % 3]) for i in range(23)] + [("odd", (768, 320))]
    batches = batches_by_bucket(items, 4, random.Random(7))
    assert sorted(p for b in batches for p in b) == sorted(items)
    for batch in batches:
        assert 1 <= len(batch) <= 4
        assert len({bucket for _, bucket in batch}) == 1
    # 8 + 8 + 7 + 1 pictures → 2 + 2 + 2 + 1 batches
    assert len(batches) == 7
    assert batches == batches_by_bucket(items, 4, random.Random(7))
    assert batches != batches_by_bucket(items, 4, random.Random(8))
    assert batches_by_bucket([], 4, random.Random(0)) == []
    with pytest.raises(ValueError):
        batches_by_bucket(items, 0, random.Random(0))
    with pytest.raises(TypeError):
        batches_by_bucket(items, 2, 42)


def test_bucket_info_shape():
    buckets = make_buckets(512, 256, 1024, 64)
    assigned = [((1000, 1000), (512, 512))] * 3 + [((700, 400), (640, 384))]
    info = bucket_info(assigned, buckets)
    assert info["buckets"] == {
        buckets.index((512, 512)): {"resolution": [512, 512], "count": 3},
        buckets.index((640, 384)): {"resolution": [640, 384], "count": 1},
    }
    assert info["mean_img_ar_error"] == pytest.approx(abs(700 / 400 - 640 / 384) / 4)


def test_sdxl_time_ids_from_geometry_match_the_decoded_crop():
    """Cached latents take SDXL's size conditioning from geometry alone; it must equal the real crop's."""
    from PIL import Image

    from lib_trainer.trainer.buckets import resize_crop, sdxl_time_ids

    for size, bucket in [((96, 64), (64, 64)), ((64, 160), (64, 128)), ((300, 200), (192, 128)), ((50, 50), (64, 64))]:
        assert sdxl_time_ids(size, bucket) == resize_crop(Image.new("RGB", size), bucket).sdxl_time_ids
