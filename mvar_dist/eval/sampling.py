"""Class-balanced, deterministic, resumable sampling to a PNG folder, split over ranks.

Image i has label i // num_per_class (class-major, like the reference protocol's 50 per class) and its own seed,
derived from (seed, i) alone; the sampler draws each image's noise from that seed alone. So an image does not
depend on the batch size, the batch it falls in or the rank that draws it: a rerun, a resumption, another world
size or another batch size reproduces the same PNGs (same device and software). Ranks take batches
[b*B, (b+1)*B) round robin and sample only the images of a batch whose PNGs are missing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from mvar_dist.distributed import rank_world
from mvar_dist.fsio import write_text_atomic

from .npz import save_png

PLAN_NAME = "plan.json"
# v1: one torch.Generator per image; v2: the sampler's counter-based noise keyed by image_seed(i) (same seeds,
# other ids). Recorded in plan.json so folders of another scheme are refused
SEEDING = "per-image-v2"
# (labels_B int64, seeds_B int64: one seed per image) -> (B, H, W, 3) uint8
SampleFn = Callable[[torch.Tensor, torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class SamplePlan:
    num_classes: int
    num_per_class: int
    batch_size: int     # images per sampler call: how the work is cut, never what an image looks like
    seed: int

    def __post_init__(self):
        for name in ("num_classes", "num_per_class", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SamplePlan.{name} must be > 0, got {getattr(self, name)}")

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.num_per_class

    @property
    def num_batches(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def label(self, i: int) -> int:
        return i // self.num_per_class

    def batch_range(self, b: int) -> Tuple[int, int]:
        return b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)

    def image_seed(self, i: int) -> int:
        # a hash rather than seed + i so nearby base seeds do not share images' streams
        digest = hashlib.sha256(f"mvar-eval:{self.seed}:{i}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def identity(self) -> Dict[str, object]:
        """What fixes the images (plan.json): batch_size is left out, it only cuts the work."""
        return {"num_classes": self.num_classes, "num_per_class": self.num_per_class, "seed": self.seed,
                "seeding": SEEDING}

    def rank_batches(self, rank: int, world_size: int) -> Iterator[int]:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return iter(range(rank, self.num_batches, world_size))

    @staticmethod
    def file_name(i: int) -> str:
        return f"{i:06d}.png"  # zero-padded: name order = index order = class order when packed




def _claim_plan(plan: SamplePlan, out_dir: Path) -> None:
    """Record the plan beside the images; refuse to mix images of two plans in one folder."""
    path = out_dir / PLAN_NAME
    want = plan.identity()
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            raise ValueError(f"{out_dir} holds samples of another plan {have}, this one is {want}; "
                             "use a fresh folder")
        return
    write_text_atomic(path, json.dumps(want, indent=1))


def generate_samples(sample_fn: SampleFn, plan: SamplePlan, out_dir, rank: Optional[int] = None,
                     world_size: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> Dict[str, int]:
    """This rank's share of the plan as PNGs in `out_dir`; returns {"made": images, "skipped": images}."""
    if rank is None or world_size is None:
        rank, world_size = rank_world()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_plan(plan, out_dir)
    made = skipped = 0
    for b in plan.rank_batches(rank, world_size):
        start, end = plan.batch_range(b)
        todo = [i for i in range(start, end) if not (out_dir / plan.file_name(i)).exists()]
        skipped += end - start - len(todo)
        if not todo:
            continue
        labels_B = torch.tensor([plan.label(i) for i in todo], dtype=torch.long)
        seeds_B = torch.tensor([plan.image_seed(i) for i in todo], dtype=torch.long)
        imgs = np.asarray(sample_fn(labels_B, seeds_B))
        if imgs.dtype != np.uint8 or imgs.shape[0] != len(todo) or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"sample_fn returned {imgs.dtype} {imgs.shape}, expected uint8 ({len(todo)}, H, W, 3)")
        for img, i in zip(imgs, todo):
            save_png(img, out_dir / plan.file_name(i))
        made += len(todo)
        if log:
            log(f"[sample] rank {rank}: batch {b + 1}/{plan.num_batches} ({end} images)")
    return {"made": made, "skipped": skipped}


def count_done(plan: SamplePlan, out_dir) -> int:
    out_dir = Path(out_dir)
    return sum((out_dir / plan.file_name(i)).exists() for i in range(plan.num_samples))


def to_uint8(img_B3HW: torch.Tensor) -> np.ndarray:
    """[0, 1] float images -> (B, H, W, 3) uint8, rounding to nearest as the reference packer does."""
    x = img_B3HW.detach().float().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def model_sample_fn(model, vae, cfg_scale: float, top_k: int, top_p: float,
                    more_smooth: bool = False) -> SampleFn:
    """Adapter from `MVAR.sample(vae, labels, cfg_scale, top_k, top_p, more_smooth, seeds_B)` to a SampleFn."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def fn(labels_B: torch.Tensor, seeds_B: torch.Tensor) -> np.ndarray:
        _, img = model.sample(vae, labels_B.to(device), cfg_scale=cfg_scale, top_k=top_k, top_p=top_p,
                              seeds_B=seeds_B, more_smooth=more_smooth)
        return to_uint8(img)

    return fn
