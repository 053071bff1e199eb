"""How class-mixed the batches of an epoch are, against a uniform draw (a fresh global permutation
per epoch, what the official sampler does). Used by the data-order tests and benchmarks/class_mix.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MixStats:
    median_classes: float           # median distinct classes per global batch
    uniform_classes: float          # expectation of the same under a uniform draw
    min_steps_ratio: float          # min over classes of (steps the class appears in) / uniform expectation
    median_steps: float             # median over classes of the steps per epoch it appears in
    uniform_steps: float            # uniform expectation of the same (median over classes)


def absent_probability(class_sizes: np.ndarray, num_images: int, batch: int) -> np.ndarray:
    """P(a batch of `batch` images drawn without replacement holds none of a class of each size)."""
    k = np.arange(batch, dtype=np.float64)
    sizes = np.asarray(class_sizes, dtype=np.float64)[:, None]
    return np.prod(np.clip(num_images - sizes - k, 0, None) / (num_images - k), axis=1)


def mix_stats(batch_labels: Sequence[np.ndarray], num_classes: int) -> MixStats:
    """Stats of one epoch given the labels of each of its (full) global batches."""
    batch = len(batch_labels[0])
    labels = np.concatenate(batch_labels)
    sizes = np.bincount(labels, minlength=num_classes)
    present = np.zeros((len(batch_labels), num_classes), dtype=bool)
    for b, lab in enumerate(batch_labels):
        present[b, lab] = True
    steps = present.sum(axis=0)
    expect = len(batch_labels) * (1.0 - absent_probability(sizes, len(labels), batch))
    seen = sizes > 0
    return MixStats(float(np.median(present.sum(axis=1))), float(expect.sum() / len(batch_labels)),
                    float((steps[seen] / expect[seen]).min()), float(np.median(steps[seen])),
                    float(np.median(expect[seen])))
