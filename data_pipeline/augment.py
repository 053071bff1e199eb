"""Decoding with rejection reasons, and the K crop/flip variants of VAR's train transform.

VAR trains with Resize(round(1.125 R), LANCZOS) on the shorter side, then RandomCrop(R), every step.
Pre-tokenising freezes that randomness, so each image is stored as K variants:
  * variant 0: the centre crop, never flipped (VAR's eval transform);
  * variant v >= 1: a random crop whose offsets (and, with hflip, a coin flip) come from a generator
    seeded by (seed, sha256(image_id), v), so any worker reproduces any variant on its own.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

SCHEME = "var-crop-1.125-lanczos"


@dataclass(frozen=True)
class VariantSpec:
    count: int = 4            # K variants per image
    seed: int = 0             # base seed of the random crops
    hflip: bool = False       # allow horizontal flips in variants >= 1
    resolution: int = 256     # crop side R (the tokenizer's resolution)
    min_side: int = 32        # images whose shorter side is below this are rejected
    non_rgb: str = "convert"  # "convert" (as the official loader's .convert('RGB')) or "reject"

    @property
    def mid_reso(self) -> int:
        return round(1.125 * self.resolution)

    def to_manifest(self) -> dict:
        return {"count": self.count, "seed": self.seed, "hflip": self.hflip, "scheme": SCHEME,
                "mid_reso": self.mid_reso, "min_side": self.min_side, "non_rgb": self.non_rgb}

    def validate(self) -> None:
        if self.count < 1:
            raise ValueError(f"variants must be >= 1, got {self.count}")
        if self.non_rgb not in ("convert", "reject"):
            raise ValueError(f"non_rgb must be 'convert' or 'reject', got {self.non_rgb!r}")


class Rejected(Exception):
    """An input that cannot become a training example; the message is the reason."""


_RGB_LIKE = {"RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F", "1"}


def decode(data: bytes, spec: VariantSpec):
    """bytes -> PIL RGB image, or raise Rejected with a reason. Never raises anything else."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise Rejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # forces the full decode: truncated files fail here, not later
    except UnidentifiedImageError:
        raise Rejected("not a readable image (unidentified format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected(f"too many pixels (decompression-bomb guard): {e}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt data
        raise Rejected(f"corrupt image: {type(e).__name__}: {e}") from None
    if min(img.size) < spec.min_side:
        raise Rejected(f"too small: {img.size[0]}x{img.size[1]} (shorter side < min_side {spec.min_side})")
    if img.mode != "RGB":
        if spec.non_rgb == "reject":
            raise Rejected(f"non-RGB image (mode {img.mode})")
        if img.mode not in _RGB_LIKE:
            raise Rejected(f"unsupported image mode {img.mode}")
        try:
            img = img.convert("RGB")
        except Exception as e:
            raise Rejected(f"cannot convert mode {img.mode} to RGB: {e}") from None
    return img


def resize_shorter(img, side: int):
    """Shorter side to `side` with LANCZOS, the longer side truncated as torchvision's Resize(int) does."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        nw, nh = side, int(side * h / w)
    else:
        nw, nh = int(side * w / h), side
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.LANCZOS)


def _image_seed(image_id: str) -> int:
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "little")


def crop_params(image_id: str, variant: int, hw: Tuple[int, int], spec: VariantSpec) -> Tuple[int, int, bool]:
    """(top, left, flip) of one variant; a pure function of (seed, image_id, variant)."""
    h, w = hw
    r = spec.resolution
    if variant == 0:
        return int(round((h - r) / 2.0)), int(round((w - r) / 2.0)), False
    rng = np.random.default_rng([spec.seed, _image_seed(image_id), variant])
    top = int(rng.integers(0, h - r + 1))
    left = int(rng.integers(0, w - r + 1))
    flip = bool(spec.hflip and rng.random() < 0.5)
    return top, left, flip


def make_variants(image_id: str, img, spec: VariantSpec) -> np.ndarray:
    """PIL RGB image -> (K, R, R, 3) uint8 crops."""
    arr_HW3 = np.asarray(resize_shorter(img, spec.mid_reso), dtype=np.uint8)
    r = spec.resolution
    out_KRR3 = np.empty((spec.count, r, r, 3), dtype=np.uint8)
    for v in range(spec.count):
        top, left, flip = crop_params(image_id, v, arr_HW3.shape[:2], spec)
        crop = arr_HW3[top:top + r, left:left + r]
        out_KRR3[v] = crop[:, ::-1] if flip else crop
    return out_KRR3


def to_model_input(crops_NRR3: np.ndarray):
    """uint8 (N, R, R, 3) -> float32 (N, 3, R, R) in [-1, 1] (ToTensor then x*2-1, as VAR does)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops_NRR3)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.mul_(2.0).sub_(1.0)


def decode_variants(image_id: str, data: Optional[bytes], spec: VariantSpec) -> Tuple[Optional[np.ndarray], str]:
    """(crops, "") or (None, reason)."""
    try:
        if data is None:
            raise Rejected("unreadable file")
        return make_variants(image_id, decode(data, spec), spec), ""
    except Rejected as e:
        return None, str(e)

