"""The tokenizer trainer's image stream: the tokenisation job's inputs (ImageFolder dir, tar shards,
s3://; `data_pipeline.sources`), its decoder with rejection reasons (`data_pipeline.augment.decode`),
and VAR's train transform redrawn every step: shorter side to round(1.125 R) with LANCZOS, a random
R x R crop, an optional horizontal flip, then [0, 1] -> [-1, 1].

The stream is indexed by a global position p = step * global_batch + j: epoch e = p // N reads the
images in a permutation seeded by (seed, e), and the crop/flip of position p come from a generator
seeded by (seed, p). A step's images are therefore the same at any world size and after a resume,
and decoding can run in any number of workers. Unreadable images are skipped and counted (the
batch shrinks; the trainer weights each rank by its image count).
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mvar_dist.distributed import per_rank_batch
from mvar_dist.data_pipeline.augment import Rejected, VariantSpec, decode, resize_shorter, to_model_input
from mvar_dist.data_pipeline.sources import list_inputs, read_bytes


class ImageStream(torch.utils.data.Dataset):
    def __init__(self, root: str, resolution: int, hflip: bool = False, min_side: int = 32, seed: int = 0,
                 s3_endpoint: str = ""):
        if not root:
            raise FileNotFoundError("no training images given: set data.root=<ImageFolder dir, tar shards or s3:// prefix>")
        if "://" not in root and not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root} (data.root must be an ImageFolder dir, "
                                    f"a folder of .tar shards, or an s3:// prefix)")
        self.listing = list_inputs(root, s3_endpoint or None)
        self.refs = self.listing.refs
        self.resolution, self.hflip, self.seed = int(resolution), bool(hflip), int(seed)
        self.spec = VariantSpec(count=1, seed=seed, hflip=hflip, resolution=resolution, min_side=min_side)
        self.s3_endpoint = s3_endpoint or None
        self._perm: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._fs_cache: Dict[str, object] = {}

    @property
    def num_images(self) -> int:
        return len(self.refs)

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.refs)))
        return self._perm[1]

    def ref_at(self, pos: int):
        epoch, i = divmod(int(pos), len(self.refs))
        return self.refs[int(self._order(epoch)[i])]

    def transform(self, img, pos: int) -> torch.Tensor:
        """PIL RGB -> (3, R, R) float in [-1, 1]: VAR's train transform with (seed, pos) randomness."""
        arr_HW3 = np.asarray(resize_shorter(img, self.spec.mid_reso), dtype=np.uint8)
        r = self.resolution
        rng = np.random.default_rng([self.seed, 1, int(pos)])
        top = int(rng.integers(0, arr_HW3.shape[0] - r + 1))
        left = int(rng.integers(0, arr_HW3.shape[1] - r + 1))
        crop_RR3 = arr_HW3[top:top + r, left:left + r]
        if self.hflip and rng.random() < 0.5:
            crop_RR3 = crop_RR3[:, ::-1]
        return to_model_input(crop_RR3[None])[0]

    def __getitem__(self, pos: int):
        ref = self.ref_at(pos)
        try:
            data = read_bytes(ref, self._fs_cache, self.s3_endpoint)
        except Exception as e:  # noqa: BLE001 - an unreadable file is a reject, like the job's
            return None, f"{ref.image_id}: unreadable file: {type(e).__name__}: {e}"
        try:
            return self.transform(decode(data, self.spec), pos), ""
        except Rejected as e:
            return None, f"{ref.image_id}: {e}"


class StepBatches(torch.utils.data.Sampler):
    """For each step from `start_step`: this rank's slice of the step's global positions."""

    def __init__(self, start_step: int, global_batch: int, rank: int, world: int, stop_step: int):
        self.b = per_rank_batch(int(global_batch), world, lambda: ValueError(
            f"optim.global_batch={global_batch} must be divisible by the world size {world}"))
        self.start, self.stop = int(start_step), int(stop_step)
        self.G, self.rank = int(global_batch), int(rank)

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start, self.stop):
            base = step * self.G + self.rank * self.b
            yield list(range(base, base + self.b))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate(items) -> Tuple[torch.Tensor, List[str]]:
    """(images (n, 3, R, R) of the readable items, reasons of the rejected ones)."""
    good = [x for x, _ in items if x is not None]
    bad = [why for x, why in items if x is None]
    imgs = torch.stack(good) if good else torch.zeros(0)
    return imgs, bad


def make_loader(stream: ImageStream, start_step: int, stop_step: int, global_batch: int, rank: int, world: int,
                num_workers: int = 2, prefetch: int = 2) -> torch.utils.data.DataLoader:
    sampler = StepBatches(start_step, global_batch, rank, world, stop_step)
    extra = {"prefetch_factor": prefetch, "persistent_workers": False} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(stream, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, **extra)
