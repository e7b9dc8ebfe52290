"""Pictures → training batches: bucket plan, per-epoch order, pixel tensors and the latent cache.

Every random choice (order, flips, caption shuffles) is drawn from generators seeded by (seed, epoch, batch),
so a resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import buckets as bucketing
from .captions import process_caption
from .folders import DatasetScan, ImageEntry, epoch_items, open_rgb
from .schema import TrainConfig


def derive_seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Sample:
    entry: ImageEntry
    bucket: tuple[int, int]
    resized: Optional[tuple[int, int]] = None  # bucket_no_upscale: the size scaled to before the crop


@dataclass
class Batch:
    samples: list[Sample]
    bucket: tuple[int, int]


class BatchPlan:
    """Which pictures go into which batch, epoch by epoch."""

    def __init__(self, cfg: TrainConfig, scan: DatasetScan, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.items = epoch_items(scan)
        self.no_upscale = cfg.enable_bucket and cfg.bucket_no_upscale
        if self.no_upscale:
            self.buckets = []  # every picture brings its own (sd-scripts makes no predefined buckets either)
        elif cfg.enable_bucket:
            self.buckets = bucketing.make_buckets(
                cfg.resolution_wh, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps
            )
        else:
            self.buckets = bucketing.no_bucket(cfg.resolution_wh)
        self.bucket_of: dict[Path, tuple[int, int]] = {}
        self.resized_of: dict[Path, Optional[tuple[int, int]]] = {}
        for entry in scan.entries:
            self.bucket_of[entry.path], self.resized_of[entry.path] = self._place(entry)

    def _place(self, entry: ImageEntry) -> tuple[tuple[int, int], Optional[tuple[int, int]]]:
        if self.no_upscale:
            return bucketing.no_upscale_size(entry.size, self.cfg.resolution_wh, self.cfg.bucket_reso_steps)
        if self.cfg.enable_bucket:
            return bucketing.assign_bucket(entry.size, self.buckets), None
        return self.buckets[0], None

    def bucket_for(self, entry: ImageEntry) -> tuple[int, int]:
        """The bucket of a training picture, or the one a picture outside the plan (held out) would get."""
        if entry.path in self.bucket_of:
            return self.bucket_of[entry.path]
        return self._place(entry)[0]

    def resized_for(self, entry: ImageEntry) -> Optional[tuple[int, int]]:
        """bucket_no_upscale's size for the picture before its crop (None: scaled to cover its bucket)."""
        if entry.path in self.resized_of:
            return self.resized_of[entry.path]
        return self._place(entry)[1]

    def batches(self, epoch: int) -> list[Batch]:
        rng = random.Random(derive_seed(self.seed, "order", epoch))
        pairs = [(Sample(e, self.bucket_of[e.path], self.resized_of[e.path]), self.bucket_of[e.path])
                 for e in self.items]
        return [
            Batch([s for s, _ in group], group[0][1])
            for group in bucketing.batches_by_bucket(pairs, self.cfg.train_batch_size, rng)
        ]

    def bucket_info(self) -> dict:
        return bucketing.bucket_info([(e.size, self.bucket_of[e.path]) for e in self.items],
                                     None if self.no_upscale else self.buckets)


def pixels(entry: ImageEntry, bucket: tuple[int, int], flip: bool,
           resized: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(3, H, W) tensor in [-1, 1] and SDXL's time ids for this crop (``resized``: see Sample)."""
    crop = bucketing.resize_crop(open_rgb(entry.path), bucket, resized=resized)
    image = crop.image.transpose(0) if flip else crop.image  # 0 = FLIP_LEFT_RIGHT on every Pillow version
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), crop.sdxl_time_ids


def caption_for(cfg: TrainConfig, entry: ImageEntry, rng: random.Random) -> str:
    return process_caption(
        entry.caption, shuffle=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens,
        caption_dropout_rate=cfg.caption_dropout_rate, tag_dropout_rate=cfg.caption_tag_dropout_rate, rng=rng,
    )


def captions_are_static(cfg: TrainConfig) -> bool:
    return not cfg.shuffle_caption and cfg.caption_dropout_rate == 0 and cfg.caption_tag_dropout_rate == 0


class LatentCache:
    """Latents of each (picture, bucket, flip, bucket_no_upscale's size), in memory and optionally on disk next to
    the pictures."""

    def __init__(self, vae_id: str, to_disk: bool):
        self.vae_id = vae_id
        self.to_disk = to_disk
        self.memory: dict[tuple[Path, tuple[int, int], bool], torch.Tensor] = {}

    def _disk_path(self, entry: ImageEntry, bucket: tuple[int, int], flip: bool,
                   resized: Optional[tuple[int, int]]) -> Path:
        scaled = f"_from{resized[0]}x{resized[1]}" if resized else ""
        name = f"{entry.path.name}_{bucket[0]}x{bucket[1]}{scaled}{'_flip' if flip else ''}.safetensors"
        return entry.path.parent / ".train_tools_latents" / name

    def _source_stamp(self, entry: ImageEntry) -> str:
        st = entry.path.stat()
        return f"{self.vae_id}:{st.st_size}:{int(st.st_mtime)}"

    def get(self, entry: ImageEntry, bucket, flip, resized=None) -> Optional[torch.Tensor]:
        key = (entry.path, tuple(bucket), flip, resized)
        if key in self.memory:
            return self.memory[key]
        if self.to_disk:
            path = self._disk_path(entry, bucket, flip, resized)
            if path.is_file():
                from safetensors import safe_open

                try:
                    with safe_open(str(path), framework="pt") as fh:
                        if (fh.metadata() or {}).get("source") == self._source_stamp(entry):
                            latent = fh.get_tensor("latent")
                            self.memory[key] = latent
                            return latent
                except Exception:
                    pass  # an unreadable cache file is simply recomputed
        return None

    def put(self, entry: ImageEntry, bucket, flip, latent: torch.Tensor, resized=None) -> None:
        latent = latent.detach().to("cpu", torch.float32).contiguous()
        self.memory[(entry.path, tuple(bucket), flip, resized)] = latent
        if self.to_disk:
            from safetensors.torch import save_file

            path = self._disk_path(entry, bucket, flip, resized)
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the processes of a multi-GPU run share it
            save_file({"latent": latent}, str(tmp), {"source": self._source_stamp(entry)})
            tmp.replace(path)
