"""The embedded default dataset: 10 procedural image classes, no download needed.

Every image is a pure function of (seed, class, index), so the same seed gives the same bytes.
The classes differ in shape, texture and colour layout so a small model can learn them:

    0 disc        1 square        2 triangle       3 horizontal stripes   4 vertical stripes
    5 checkerboard 6 rings        7 diagonal gradient 8 dot grid          9 cross

Foreground/background colours, positions, sizes, periods and a little noise vary per image.
Written as an ImageFolder (`<root>/<split>/<class_name>/<index>.png`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from mvar_dist.fsio import atomic_path

CLASS_NAMES: List[str] = ["disc", "square", "triangle", "hstripes", "vstripes",
                          "checker", "rings", "gradient", "dots", "cross"]
NUM_CLASSES = len(CLASS_NAMES)


def _rng(seed: int, cls: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, cls, index])


def make_image(cls: int, index: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """One RGB image (size, size, 3) uint8 of class `cls`; deterministic in (seed, cls, index)."""
    if not 0 <= cls < NUM_CLASSES:
        raise ValueError(f"class must be in [0, {NUM_CLASSES}), got {cls}")
    r = _rng(seed, cls, index)
    fg, bg = r.uniform(0.55, 1.0, 3), r.uniform(0.0, 0.45, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # in [0, 1)
    cx, cy = r.uniform(0.35, 0.65, 2)
    rad = r.uniform(0.18, 0.32)
    period = r.uniform(0.08, 0.2)
    if cls == 0:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2
    elif cls == 1:
        mask = (np.abs(xx - cx) < rad) & (np.abs(yy - cy) < rad)
    elif cls == 2:
        mask = (yy > cy - rad) & (yy < cy + rad) & (np.abs(xx - cx) < (yy - (cy - rad)) / 2)
    elif cls == 3:
        mask = np.floor((yy + r.uniform()) / period) % 2 == 0
    elif cls == 4:
        mask = np.floor((xx + r.uniform()) / period) % 2 == 0
    elif cls == 5:
        mask = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0
    elif cls == 6:
        mask = np.floor(np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (period / 1.5)) % 2 == 0
    elif cls == 7:
        t = np.clip(((xx - cx) + (yy - cy)) * r.uniform(0.8, 1.4) + 0.5, 0, 1)[..., None]
        img = bg * (1 - t) + fg * t
        mask = None
    elif cls == 8:
        gx, gy = (xx / period) % 1 - 0.5, (yy / period) % 1 - 0.5
        mask = gx ** 2 + gy ** 2 < 0.09
    else:
        w = rad / 3
        mask = ((np.abs(xx - cx) < w) | (np.abs(yy - cy) < w)) & (np.abs(xx - cx) < rad * 1.5) & (
            np.abs(yy - cy) < rad * 1.5)
    if mask is not None:
        img = np.where(mask[..., None], fg, bg)
    img = img + r.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def split_seed(seed: int, split: str) -> int:
    """The image seed of a split: the split takes part in it so train and val images differ."""
    return seed * 1000 + (0 if split == "train" else 1)


def write_dataset(root: os.PathLike, images_per_class: int = 20, size: int = 256, seed: int = 0,
                  split: str = "train", fmt: str = "png") -> Path:
    """Write the ImageFolder; returns `<root>/<split>`. Existing identical files are kept."""
    if images_per_class <= 0:
        raise ValueError("images_per_class must be > 0")
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    out = Path(root) / split
    for cls, name in enumerate(CLASS_NAMES):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            path = d / f"{i:05d}.{fmt}"
            if path.exists():
                continue
            with atomic_path(path) as tmp:  # a partial file never carries the final name
                Image.fromarray(make_image(cls, i, size, split_seed(seed, split))).save(tmp, format="PNG" if fmt == "png" else "JPEG",
                                                                            **({"quality": 95} if fmt == "jpg" else {}))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the embedded 10-class procedural dataset as an ImageFolder.")
    p.add_argument("root", help="output folder")
    p.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    a = p.parse_args(argv)
    out = write_dataset(a.root, a.per_class, a.size, a.seed, a.split)
    print(f"wrote {a.per_class * NUM_CLASSES} images ({NUM_CLASSES} classes, {a.size}px) to {out}")


if __name__ == "__main__":
    main()
