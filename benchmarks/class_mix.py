"""How many classes a global batch holds, with the real EpochOrder, on an ImageNet-like listing.

    python benchmarks/class_mix.py [--classes 1000 --per-class 1300 --batch 768 --window 4096]

Shards of --per-shard images either follow the class-sorted listing (datasets written before the
job dealt images, or not resharded) or the dealt order (deal_permutation, what the job and
`launchers/reshard.py` write); the loader's order (EpochOrder) is the same in both. "uniform" is the
expectation under a fresh global permutation per epoch (the official sampler).
"""
from __future__ import annotations

import argparse

import numpy as np

from mvar_dist.data.mixing import mix_stats
from mvar_dist.data.order import EpochOrder
from mvar_dist.data.shards import deal_permutation


def epoch_labels(labels_N: np.ndarray, per_shard: int, window: int, batch: int, seed: int, epoch: int):
    counts = [min(per_shard, len(labels_N) - s) for s in range(0, len(labels_N), per_shard)]
    order = EpochOrder(seed, epoch, counts, window)
    steps = len(labels_N) // batch
    shard, local = order.locate(np.arange(steps * batch))
    return labels_N[shard * per_shard + local].reshape(steps, batch)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=1300)
    p.add_argument("--batch", type=int, default=768)
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args(argv)
    listing = np.repeat(np.arange(a.classes), a.per_class)
    layouts = {"sorted shards": listing, "dealt shards": listing[deal_permutation(len(listing), 0)]}
    print(f"{a.classes} classes x {a.per_class} images, global batch {a.batch}, window {a.window}, "
          f"{a.per_shard} images/shard, {len(listing) // a.batch} steps/epoch")
    print(f"{'layout':<14} {'epoch':>5} {'median classes/batch':>21} {'uniform':>8} "
          f"{'median steps/class':>19} {'uniform':>8} {'min class ratio':>16}")
    for name, labels in layouts.items():
        for epoch in range(a.epochs):
            s = mix_stats(list(epoch_labels(labels, a.per_shard, a.window, a.batch, 0, epoch)), a.classes)
            print(f"{name:<14} {epoch:>5} {s.median_classes:>21.0f} {s.uniform_classes:>8.1f} "
                  f"{s.median_steps:>19.0f} {s.uniform_steps:>8.1f} {s.min_steps_ratio:>16.3f}")


if __name__ == "__main__":
    main()
