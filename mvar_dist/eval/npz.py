"""Sample folders <-> `.npz` batches in the standard layout: `arr_0`, uint8, (N, H, W, 3), PNG-sorted order.

The packer streams one image at a time into the zip member, so 50,000 images at 256 px (9.8 GB) never sit in
memory at once; the result is a plain `np.savez` file (`np.load(path)["arr_0"]`). Written atomically.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

from mvar_dist.fsio import atomic_path


def list_pngs(folder) -> List[Path]:
    """PNG files in the folder (not recursive), sorted by name so the packing order is reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sample folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def load_png(path) -> np.ndarray:
    """(H, W, 3) uint8; grey or RGBA files are converted, as the ADM evaluator expects RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def save_png(arr_HW3: np.ndarray, path) -> None:
    """Write a PNG atomically (temp + rename) so an interrupted run never leaves a half image behind."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr_HW3, dtype=np.uint8)).save(tmp, format="PNG")


def pack_folder(folder, out_path, expected: Optional[int] = None) -> int:
    """Pack every PNG of `folder` into `out_path` as `arr_0`; returns N. `expected` asserts the count."""
    pngs = list_pngs(folder)
    if expected is not None and len(pngs) != expected:
        raise ValueError(f"{folder}: found {len(pngs)} PNG files, expected exactly {expected}")
    if not pngs:
        raise ValueError(f"{folder}: no PNG files to pack")
    first = load_png(pngs[0])
    shape = (len(pngs),) + first.shape
    with atomic_path(out_path, mkdir=True) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for i, p in enumerate(pngs):
                    img = first if i == 0 else load_png(p)
                    if img.shape != first.shape:
                        raise ValueError(f"{p}: shape {img.shape} differs from {pngs[0].name} {first.shape}")
                    f.write(img.tobytes())
    return len(pngs)


def load_images(npz_path, key: str = "arr_0") -> np.ndarray:
    """The (N, H, W, 3) uint8 image batch of an `.npz`, with a clear error for anything else."""
    with np.load(npz_path) as data:
        if key not in data.files:
            raise ValueError(f"{npz_path}: no '{key}' array (has {data.files})")
        arr = data[key]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{npz_path}: '{key}' must be uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    return arr
