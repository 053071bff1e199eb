"""Tiny ImageFolders of smooth sinusoid stripes for tokenizer tests (deterministic from the seed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_stripe_images(root: Path, per_class: int, height: int, width: int, broken_class: int = 0) -> Path:
    """2 classes (horizontal / vertical stripes) x per_class PNGs, plus one corrupt file in broken_class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / float(height)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f, ph = rng.uniform(1, 3, 3), rng.uniform(0, 6, 3)
            arr = np.stack([np.sin(2 * np.pi * f[k] * (xx if c else yy) + ph[k]) for k in range(3)], -1)
            Image.fromarray(((arr + 1) * 127.5).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    (root / f"c{broken_class}" / "broken.png").write_bytes(b"not an image")
    return root
