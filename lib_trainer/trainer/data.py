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
        if cfg.enable_bucket:
            self.buckets = bucketing.make_buckets(
                cfg.resolution_wh, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps
            )
        else:
            self.buckets = bucketing.no_bucket(cfg.resolution_wh)
        self.bucket_of: dict[Path, tuple[int, int]] = {}
        for entry in scan.entries:
            self.bucket_of[entry.path] = (
                bucketing.assign_bucket(entry.size, self.buckets) if cfg.enable_bucket else self.buckets[0]
            )

    def bucket_for(self, entry: ImageEntry) -> tuple[int, int]:
        """The bucket of a training picture, or the one a picture outside the plan (held out) would get."""
        if entry.path in self.bucket_of:
            return self.bucket_of[entry.path]
        return bucketing.assign_bucket(entry.size, self.buckets) if self.cfg.enable_bucket else self.buckets[0]

    def batches(self, epoch: int) -> list[Batch]:
        rng = random.Random(derive_seed(self.seed, "order", epoch))
        pairs = [(Sample(e, self.bucket_of[e.path]), self.bucket_of[e.path]) for e in self.items]
        return [
            Batch([s for s, _ in group], group[0][1])
            for group in bucketing.batches_by_bucket(pairs, self.cfg.train_batch_size, rng)
        ]

    def bucket_info(self) -> dict:
        return bucketing.bucket_info([(e.size, self.bucket_of[e.path]) for e in self.items], self.buckets)


def pixels(entry: ImageEntry, bucket: tuple[int, int], flip: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(3, H, W) tensor in [-1, 1] and SDXL's time ids for this crop."""
    crop = bucketing.resize_crop(open_rgb(entry.path), bucket)
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
    """Latents of each (picture, bucket, flip), in memory and optionally on disk next to the pictures."""

    def __init__(self, vae_id: str, to_disk: bool):
        self.vae_id = vae_id
        self.to_disk = to_disk
        self.memory: dict[tuple[Path, tuple[int, int], bool], torch.Tensor] = {}

    def _disk_path(self, entry: ImageEntry, bucket: tuple[int, int], flip: bool) -> Path:
        name = f"{entry.path.name}_{bucket[0]}x{bucket[1]}{'_flip' if flip else ''}.safetensors"
        return entry.path.parent / ".train_tools_latents" / name

    def _source_stamp(self, entry: ImageEntry) -> str:
        st = entry.path.stat()
        return f"{self.vae_id}:{st.st_size}:{int(st.st_mtime)}"

    def get(self, entry: ImageEntry, bucket, flip) -> Optional[torch.Tensor]:
        key = (entry.path, tuple(bucket), flip)
        if key in self.memory:
            return self.memory[key]
        if self.to_disk:
            path = self._disk_path(entry, bucket, flip)
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

    def put(self, entry: ImageEntry, bucket, flip, latent: torch.Tensor) -> None:
        latent = latent.detach().to("cpu", torch.float32).contiguous()
        self.memory[(entry.path, tuple(bucket), flip)] = latent
        if self.to_disk:
            from safetensors.torch import save_file

            path = self._disk_path(entry, bucket, flip)
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the processes of a multi-GPU run share it
            save_file({"latent": latent}, str(tmp), {"source": self._source_stamp(entry)})
            tmp.replace(path)
