"""Reference batches (ADM `VIRTUAL_imagenet256_labeled.npz` layout) and Inception feature extraction.

A reference `.npz` holds `mu` (2048,) and `sigma` (2048, 2048) for FID, optionally `mu_s`/`sigma_s` (2023) for
sFID and `arr_0` (N, H, W, 3) uint8 images whose features serve precision/recall. `reference_from_folder` builds
the same layout from an image folder with our Inception.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from mvar_dist.fsio import atomic_path, sha256_file

from .inception import FEATURE_DIM, SPATIAL_CHANNELS, FIDInceptionV3
from .metrics import gaussian_stats

SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17


class ReferenceError(ValueError):
    """The reference batch file is missing or does not hold usable statistics."""


@dataclass
class Reference:
    path: str
    sha256: str
    mu: np.ndarray                      # (2048,) float64
    sigma: np.ndarray                   # (2048, 2048) float64
    mu_s: Optional[np.ndarray] = None   # sFID statistics, when the file has them
    sigma_s: Optional[np.ndarray] = None
    has_images: bool = False            # arr_0 present: precision/recall possible

    def images(self) -> np.ndarray:
        with np.load(self.path) as data:
            return data["arr_0"]


def _check_stats(path, data, mu_key, sigma_key, dim) -> tuple:
    mu, sigma = np.asarray(data[mu_key], np.float64), np.asarray(data[sigma_key], np.float64)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ReferenceError(f"{path}: '{mu_key}' {mu.shape} / '{sigma_key}' {sigma.shape} should be ({dim},) / "
                             f"({dim}, {dim}) for the FID InceptionV3")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceError(f"{path}: '{mu_key}'/'{sigma_key}' contain NaN or inf")
    return mu, sigma


def load_reference(path) -> Reference:
    """Read and validate a reference batch; every problem is a ReferenceError naming the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise ReferenceError(f"reference batch not found: {p} (e.g. ADM's VIRTUAL_imagenet256_labeled.npz, "
                             "or build one with `launchers/sample.py reference-stats`)")
    try:
        data = np.load(p)
        files = set(data.files)
    except Exception as e:
        raise ReferenceError(f"{p}: not a readable .npz ({type(e).__name__}: {e})") from e
    with data:
        if not {"mu", "sigma"} <= files:
            raise ReferenceError(f"{p}: needs 'mu' and 'sigma' arrays for FID, has {sorted(files)}")
        mu, sigma = _check_stats(p, data, "mu", "sigma", FEATURE_DIM)
        mu_s = sigma_s = None
        if {"mu_s", "sigma_s"} <= files:
            mu_s, sigma_s = _check_stats(p, data, "mu_s", "sigma_s", SPATIAL_DIM)
        has_images = "arr_0" in files
    return Reference(str(p), sha256_file(p), mu, sigma, mu_s, sigma_s, has_images)


@torch.no_grad()
def extract_features(net: FIDInceptionV3, batches_NHW3: Iterable[np.ndarray], device="cpu") -> Dict[str, np.ndarray]:
    """Run uint8 (B, H, W, 3) batches through the net; returns float64 `pool`, `logits`, `spatial` (N, D)."""
    out: Dict[str, list] = {"pool": [], "logits": [], "spatial": []}
    for batch in batches_NHW3:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
        feats = net(x)
        for k in out:
            out[k].append(feats[k].double().cpu().numpy())
    if not out["pool"]:
        raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in out.items()}


def iter_batches(images_NHW3: np.ndarray, batch_size: int):
    for i in range(0, len(images_NHW3), batch_size):
        yield images_NHW3[i:i + batch_size]


def write_reference(out_path, feats: Dict[str, np.ndarray], images: Optional[np.ndarray] = None) -> None:
    """A reference `.npz` in the ADM layout from extracted features (atomic write)."""
    mu, sigma = gaussian_stats(feats["pool"])
    mu_s, sigma_s = gaussian_stats(feats["spatial"])
    arrays = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    if images is not None:
        arrays["arr_0"] = images
    with atomic_path(out_path, mkdir=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def reference_from_folder(net: FIDInceptionV3, folder, out_path, batch_size: int = 50, keep_images: int = 10000,
                          device="cpu") -> int:
    """Reference statistics of every PNG/JPEG under `folder` (recursive), resized to nothing: the net resizes.

    All images must share one size (as a sample folder or a preprocessed reference set does). The first
    `keep_images` are stored as `arr_0` for precision/recall. Returns the number of images.
    """
    from .npz import load_png

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(paths) < 2:
        raise ReferenceError(f"{folder}: need at least 2 images for reference statistics, found {len(paths)}")

    def batches():
        for i in range(0, len(paths), batch_size):
            yield np.stack([load_png(p) for p in paths[i:i + batch_size]])

    feats = extract_features(net, batches(), device)
    kept = np.stack([load_png(p) for p in paths[:keep_images]]) if keep_images else None
    write_reference(out_path, feats, kept)
    return len(paths)
