"""TokenLoader: the deterministic, elastic, resumable streaming loader over token shards.

The global order of an epoch is a pure function of (seed, epoch) (see order.py). Global batch b of
an epoch is global positions [b*G, (b+1)*G); rank r of W takes the contiguous slice
[b*G + r*G/W, b*G + (r+1)*G/W). Loader workers (persistent processes, see prefetch.py) take runs of
a rank's batches (about one shuffle window each, round-robin over workers); the main process reads
batch k from the worker that owns it, so neither the world size nor the number of workers changes
what the ranks see together. State = (epoch, samples consumed).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mvar_dist.distributed import per_rank_batch

from .io import ShardStore, ShardError, check_shards_present, read_manifest, split_counts, warn_if_sorted
from .order import EpochOrder
from .prefetch import WorkerPool, read_ahead


@dataclass(frozen=True)
class LoaderSettings:
    """Everything a TokenLoader is configured with; validated on construction."""

    shards_uri: str                     # local dir or s3:// prefix holding manifest.json + shards
    global_batch: int                   # images per global batch, split evenly over the ranks
    rank: int = 0
    world_size: int = 1
    seed: int = 0                       # with the epoch, fixes the global order
    patch_nums: Optional[Tuple[int, ...]] = None  # checked against the manifest (None: the manifest's)
    tokenizer_hash: Optional[str] = None          # checked against the manifest when given
    vocab_size: Optional[int] = None              # token ids must be below it when given
    num_workers: int = 0                # loader worker processes (0: a read-ahead thread)
    shuffle_window: int = 4096          # images shuffled together (see order.py)
    cache_dir: Optional[str] = None     # local copy of remote shards
    split: str = "train"                # "train" or "val" (the held-out fraction)
    val_fraction: float = 0.0
    storage_options: Optional[Dict[str, Any]] = None  # fsspec options for s3://
    shuffle: bool = True
    prefetch: int = 2                   # batches built ahead of the consumer
    cache_bytes: int = 256 << 20        # decoded row-group cache per process
    verify_sha256: bool = True          # hash each shard once before reading it

    def __post_init__(self) -> None:
        if self.global_batch <= 0:
            raise ValueError(f"global_batch must be > 0, got {self.global_batch}")
        if self.world_size <= 0 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        per_rank_batch(self.global_batch, self.world_size, lambda: ValueError(
            f"global_batch {self.global_batch} is not divisible by world_size {self.world_size}: "
            f"each rank takes an equal slice of every global batch"))
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {self.split!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.split == "val" and self.val_fraction <= 0.0:
            raise ValueError("split='val' needs val_fraction > 0 (the held-out fraction of images)")
        if self.num_workers < 0 or self.shuffle_window < 1 or self.prefetch < 1:
            raise ValueError(f"need num_workers >= 0, shuffle_window >= 1, prefetch >= 1; got {self.num_workers}, "
                             f"{self.shuffle_window}, {self.prefetch}")
        if self.patch_nums is not None:
            object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
        object.__setattr__(self, "shards_uri", self.shards_uri.rstrip("/"))

    @classmethod
    def from_config(cls, cfg, rank: int = 0, world_size: int = 1, split: str = "train",
                    tokenizer_hash: Optional[str] = None, global_batch: Optional[int] = None) -> "LoaderSettings":
        """From a resolved RunConfig (data.*, optim.global_batch, tokenizer.patch_nums/vocab_size, seed)."""
        d = cfg.data
        return cls(d.shards, global_batch or cfg.optim.global_batch, rank, world_size, cfg.seed,
                   patch_nums=cfg.tokenizer.patch_nums, tokenizer_hash=tokenizer_hash,
                   vocab_size=cfg.tokenizer.vocab_size, num_workers=d.num_workers, shuffle_window=d.shuffle_window,
                   cache_dir=d.cache_dir or None, split=split, val_fraction=d.val_fraction)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size


def _open_store(s: LoaderSettings, manifest) -> ShardStore:
    return ShardStore(s.shards_uri, manifest, s.storage_options, s.cache_dir, s.split, s.val_fraction,
                      s.vocab_size, s.cache_bytes, verify_sha256=s.verify_sha256)


def _batch_positions(s: LoaderSettings, start: int, k: int) -> np.ndarray:
    """Global positions of this rank's slice of the k-th batch of a pass starting at `start`."""
    first = start + k * s.global_batch + s.rank * s.local_batch
    return np.arange(first, first + s.local_batch)


def assemble_np(store: ShardStore, order: EpochOrder, counts: Sequence[int],
                positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Global positions -> (labels_B int64, tokens_BL uint16) in position order."""
    shards, local = order.locate(positions)
    labels_B = np.empty(len(positions), dtype=np.int64)
    tokens_BL = np.empty((len(positions), store.seq_len), dtype=np.uint16)
    for shard in np.unique(shards):
        sel = shards == shard
        index = store.index(int(shard))
        if index.num_images != counts[shard]:
            name = store.manifest.shards[shard].name
            raise ShardError(f"token shard {name} holds {index.num_images} images of split {store.split!r}, the "
                             f"manifest implies {counts[shard]}: every image's variants must sit in one shard")
        rows = index.chosen_rows(order.seed, order.epoch, local[sel])
        labels_B[sel], tokens_BL[sel] = store.gather(int(shard), rows)
    return labels_B, tokens_BL


@dataclass(frozen=True)
class _Source:
    """What building a batch needs, sent once to each worker: the settings, the manifest and the
    split's image count per shard."""

    settings: LoaderSettings
    manifest: Any
    counts: Tuple[int, ...]

    def open_store(self) -> ShardStore:
        return _open_store(self.settings, self.manifest)

    def order(self, epoch: int) -> EpochOrder:
        return EpochOrder(self.settings.seed, epoch, self.counts, self.settings.shuffle_window, self.settings.shuffle)

    def batch(self, store: ShardStore, order: EpochOrder, start: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return assemble_np(store, order, self.counts, _batch_positions(self.settings, start, k))


def _as_tensors(labels_B: np.ndarray, tokens_BL: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(labels_B), torch.from_numpy(tokens_BL.astype(np.int64))


class TokenLoader:
    """Iterates (labels_B int64, tokens_BL int64): this rank's slice of each global batch.

    One pass of `for batch in loader` yields the rest of the current epoch (len(loader) batches from
    a fresh epoch; the last partial global batch is dropped); the loader then moves to the next epoch
    by itself, so no set_epoch() is needed. State is updated as each batch is handed out.
    """

    def __init__(self, settings: LoaderSettings):
        import pyarrow.compute  # noqa: F401  imported here so forked workers inherit them
        import pyarrow.parquet  # noqa: F401

        self.settings = s = settings
        self.manifest = read_manifest(s.shards_uri, s.storage_options)
        warn_if_sorted(self.manifest, s.shards_uri)
        self.manifest.check_compatible(s.patch_nums if s.patch_nums is not None else self.manifest.patch_nums,
                                       s.tokenizer_hash, s.vocab_size)
        self._store = _open_store(s, self.manifest)
        check_shards_present(self._store.fs, self._store.root, self.manifest, s.shards_uri)
        self.counts = list(split_counts(self._store, self.manifest.variants.get("count")))
        self.num_samples = int(sum(self.counts))
        if self.num_samples < s.global_batch:
            raise ValueError(f"the {s.split} split of {s.shards_uri} has {self.num_samples} images, fewer than one "
                             f"global batch of {s.global_batch}")
        self._source = _Source(s, self.manifest, tuple(self.counts))
        self.epoch, self.samples_consumed = 0, 0
        self._pool: Optional[WorkerPool] = None  # started by the first pass with num_workers > 0

    @property
    def global_batch(self) -> int:
        return self.settings.global_batch

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def local_batch(self) -> int:
        return self.settings.local_batch

    def _roll_over_if_done(self) -> None:
        if self.samples_consumed + self.global_batch > self.num_samples:
            self.epoch, self.samples_consumed = self.epoch + 1, 0

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._roll_over_if_done()
        n_batches = (self.num_samples - self.samples_consumed) // self.global_batch
        if self.settings.num_workers == 0:
            order, start = self._source.order(self.epoch), self.samples_consumed
            batches = read_ahead(lambda k: _as_tensors(*self._source.batch(self._store, order, start, k)),
                                 range(n_batches), self.settings.prefetch)
        else:
            batches = self._from_workers(n_batches)
        try:
            for labels_B, tokens_BL in batches:
                self.samples_consumed += self.global_batch
                self._roll_over_if_done()
                yield labels_B, tokens_BL
        finally:
            batches.close()  # stops the read-ahead thread now, not whenever the generator is collected

    def _from_workers(self, n_batches: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self._pool is None:
            self._pool = WorkerPool(self.settings.num_workers, self._source)
        pool = self._pool
        try:
            gen = pool.submit(self.epoch, self.samples_consumed, n_batches)
        except RuntimeError:
            self.close()
            raise
        for k in range(n_batches):
            try:
                labels_B, tokens_BL = pool.get(gen, k)
            except Exception:
                if pool is self._pool and pool.gen == gen:
                    self.close()  # an error ends the workers; the next pass starts fresh ones
                raise
            yield _as_tensors(labels_B, tokens_BL)

    @property
    def worker_pids(self) -> List[int]:
        """Process ids of the live worker processes (empty before the first pass and after close())."""
        return [] if self._pool is None else self._pool.pids

    def close(self) -> None:
        """Stop the worker processes (also done when the loader is garbage-collected or the interpreter
        exits). The loader stays usable: a later pass starts new workers."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> "TokenLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "samples_consumed": self.samples_consumed, "seed": self.seed,
                "global_batch": self.global_batch, "num_samples": self.num_samples}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume in O(1). Any world size / worker count works; the global order continues unchanged."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}: "
                             f"the data order would not continue")
        if "num_samples" in state and int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"loader state was saved on a {self.settings.split} split of {state['num_samples']} "
                             f"images, this dataset has {self.num_samples}: not the same data")
        epoch, consumed = int(state["epoch"]), int(state["samples_consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise ValueError(f"invalid loader state epoch={epoch}, samples_consumed={consumed}")
        if int(state.get("global_batch", self.global_batch)) != self.global_batch:
            warnings.warn(f"resuming with global_batch {self.global_batch} (saved with {state['global_batch']}): "
                          f"the sample order continues, regrouped into the new batch size")
        self.epoch, self.samples_consumed = epoch, consumed
