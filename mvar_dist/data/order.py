"""The global sample order: a pure function of (seed, epoch) and the per-shard sample counts.

Nothing here depends on the world size, the rank or the number of loader workers; those only pick
which positions of the global order a process materialises. An epoch's order is built in three steps:

1. the shards are permuted (a function of seed and epoch);
2. their samples are laid end to end in that order (a shard's samples in file order), forming the
   *stream*; the stream is cut into windows of `window` consecutive samples;
3. each window is permuted on its own (a function of seed, epoch and window index).

Global position p of the epoch is therefore resolvable in O(1) (plus one window permutation, cached),
which is what makes resuming from (epoch, samples consumed) free of any replay.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence, Tuple

import numpy as np

# Salts keep the different random streams independent of each other.
_SHARD_TAG = 1
_WINDOW_TAG = 2
_VARIANT_SALT = "variant"
_SPLIT_SALT = "mvar-dist-val-split-v1"


def stable_hash64(*parts) -> int:
    """64-bit hash that is identical in every process and Python run (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def variant_choice(seed: int, epoch: int, image_id: str, n_variants: int) -> int:
    """Index (into the image's sorted variant ids) of the variant used in this epoch."""
    return stable_hash64(_VARIANT_SALT, seed, epoch, image_id) % n_variants


def variant_choices(seed: int, epoch: int, image_ids: Sequence[str], n_variants: Sequence[int]) -> np.ndarray:
    """variant_choice over many images, identical values. The hash state of the shared prefix is built
    once and copied: hashing was about half of a warm batch's cost in the loader."""
    prefix = hashlib.blake2b("\x1f".join(str(p) for p in (_VARIANT_SALT, seed, epoch, "")).encode(), digest_size=8)
    out = np.empty(len(image_ids), dtype=np.int64)
    for i, (image_id, n) in enumerate(zip(image_ids, n_variants)):
        h = prefix.copy()
        h.update(str(image_id).encode())
        out[i] = int.from_bytes(h.digest(), "little") % int(n)
    return out


def is_val_image(image_id: str, val_fraction: float) -> bool:
    """Held-out split by image id only: independent of the seed, so every run agrees on it."""
    if val_fraction <= 0.0:
        return False
    return stable_hash64(_SPLIT_SALT, image_id) < val_fraction * 2.0 ** 64


def _rng(seed: int, epoch: int, tag: int, index: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, tag, index])))


class EpochOrder:
    """Maps global positions of one epoch to (shard index, sample index within the shard's split)."""

    def __init__(self, seed: int, epoch: int, shard_counts: Sequence[int], window: int, shuffle: bool = True):
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        counts = np.asarray(shard_counts, dtype=np.int64)
        self.num_samples = int(counts.sum())
        self.window = max(1, int(window))
        n = len(counts)
        self.shard_order = _rng(seed, epoch, _SHARD_TAG).permutation(n) if shuffle else np.arange(n)
        # stream_start[i] = first stream position of the i-th shard in this epoch's order
        self._stream_start = np.concatenate([[0], np.cumsum(counts[self.shard_order])])
        self._perms: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def _window_perm(self, w: int) -> np.ndarray:
        perm = self._perms.get(w)
        if perm is None:
            size = min(self.window, self.num_samples - w * self.window)
            perm = _rng(self.seed, self.epoch, _WINDOW_TAG, w).permutation(size)
            self._perms[w] = perm
            if len(self._perms) > 4:  # a batch touches at most a couple of windows
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(w)
        return perm

    def stream_positions(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise IndexError(f"positions must lie in [0, {self.num_samples})")
        if not self.shuffle:
            return positions
        out = np.empty_like(positions)
        windows = positions // self.window
        for w in np.unique(windows):
            sel = windows == w
            out[sel] = w * self.window + self._window_perm(int(w))[positions[sel] - w * self.window]
        return out

    def locate(self, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Global positions -> (shard index in manifest order, sample index within that shard)."""
        stream = self.stream_positions(positions)
        slot = np.searchsorted(self._stream_start, stream, side="right") - 1
        return self.shard_order[slot], stream - self._stream_start[slot]
