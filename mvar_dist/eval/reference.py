"""Reference batches (ADM `VIRTUAL_imagenet256_labeled.npz` layout) and Inception feature extraction.

A reference `.npz` holds `mu` (2048,) and `sigma` (2048, 2048) for FID, optionally `mu_s`/`sigma_s` (2023) for
sFID and `arr_0` (N, H, W, 3) uint8 images whose features serve precision/recall. `reference_from_folder` builds
the same layout from an image folder with our Inception, plus `inception_mode` (the net's mode, see inception.py):
statistics are only comparable within one mode, so a file is refused by a net of the other. A file without the
key is taken as "adm": ADM's released batches (computed by its TensorFlow evaluator) carry none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch

from mvar_dist.fsio import atomic_path, sha256_file

from .inception import FEATURE_DIM, SPATIAL_CHANNELS, FIDInceptionV3, check_mode
from .metrics import gaussian_stats

SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
MODE_KEY = "inception_mode"
UNMARKED_MODE = "adm"  # the mode of a file without MODE_KEY (ADM's released reference batches)
FEATURE_KEYS = ("pool", "logits", "logits_unbiased", "spatial")


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
    mode: str = UNMARKED_MODE           # the Inception mode its statistics were computed in

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


def load_reference(path, mode: Optional[str] = None) -> Reference:
    """Read and validate a reference batch; every problem is a ReferenceError naming the file and the key.

    mode: the Inception mode the caller's features come from; a file made in another mode is refused."""
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
        file_mode = str(data[MODE_KEY]) if MODE_KEY in files else UNMARKED_MODE
    if mode is not None and check_mode(mode) != file_mode:
        how = f"its '{MODE_KEY}' says {file_mode!r}" if MODE_KEY in files else \
            f"it has no '{MODE_KEY}' key, the mark of ADM's released batches ({UNMARKED_MODE!r})"
        raise ReferenceError(
            f"{p}: reference statistics were computed in Inception mode {file_mode!r} ({how}), but this "
            f"evaluation uses {mode!r}; FID across modes is off by a protocol offset. Evaluate with "
            f"--inception-mode {file_mode} or rebuild the reference with `launchers/sample.py reference "
            f"--inception-mode {mode}`")
    return Reference(str(p), sha256_file(p), mu, sigma, mu_s, sigma_s, has_images, file_mode)


@torch.no_grad()
def extract_features(net: FIDInceptionV3, batches_NHW3: Iterable[np.ndarray], device="cpu") -> Dict[str, np.ndarray]:
    """Run uint8 (B, H, W, 3) batches through the net; returns float64 `pool`, `logits`, `logits_unbiased`,
    `spatial` (N, D)."""
    out: Dict[str, list] = {k: [] for k in FEATURE_KEYS}
    for batch in batches_NHW3:
        feats = net(torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2))
        for k in out:
            out[k].append(feats[k].double().cpu().numpy())
    if not out["pool"]:
        raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in out.items()}


def extract_features_sharded(net: FIDInceptionV3, num_images: int, load: Callable[[int, int], np.ndarray],
                             batch_size: int, device="cpu") -> Optional[Dict[str, np.ndarray]]:
    """Features of images [0, num_images) computed over the ranks of the process group (one process: all).

    load(start, end) -> uint8 (end - start, H, W, 3). Batches are the fixed chunks [b*B, (b+1)*B), dealt round
    robin to ranks, so each image runs in the same batch whatever the rank count: the features equal a
    one-process run's bit for bit on the same device. Returns the features in image order on rank 0, None on
    the others (every rank must call it).
    """
    from mvar_dist.distributed import gather_to_0
    from mvar_dist.distributed import rank_world

    rank, world = rank_world()
    starts = list(range(0, num_images, batch_size))[rank::world]
    mine = {}
    if starts:
        feats = extract_features(net, (load(s, min(s + batch_size, num_images)) for s in starts), device)
        # float32 on the wire: the net's outputs are float32, so nothing is lost
        mine = {k: v.astype(np.float32) for k, v in feats.items()}
    parts = gather_to_0((starts, mine))
    if parts is None:
        return None
    chunks = sorted((s, {k: v[i:i + min(batch_size, num_images - s)] for k, v in rank_feats.items()})
                    for rank_starts, rank_feats in parts
                    for s, i in zip(rank_starts, _offsets(rank_starts, batch_size, num_images)))
    if not chunks:
        raise ValueError("no images to extract features from")
    return {k: np.concatenate([c[k] for _, c in chunks]).astype(np.float64) for k in FEATURE_KEYS}


def _offsets(starts, batch_size: int, num_images: int):
    """Row offset of each chunk within a rank's concatenated features."""
    off = 0
    for s in starts:
        yield off
        off += min(batch_size, num_images - s)


def write_reference(out_path, feats: Dict[str, np.ndarray], mode: str, images: Optional[np.ndarray] = None) -> None:
    """A reference `.npz` in the ADM layout from features extracted in `mode`, which it records (atomic write)."""
    mu, sigma = gaussian_stats(feats["pool"])
    mu_s, sigma_s = gaussian_stats(feats["spatial"])
    arrays = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s, MODE_KEY: np.array(check_mode(mode))}
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
    write_reference(out_path, feats, net.mode, kept)
    return len(paths)
