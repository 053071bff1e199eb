"""TokenLoader: the deterministic, elastic, resumable streaming loader over token shards.

The global order of an epoch is a pure function of (seed, epoch) (see order.py). Global batch b of
an epoch is global positions [b*G, (b+1)*G); rank r of W takes the contiguous slice
[b*G + r*G/W, b*G + (r+1)*G/W). Loader workers take runs of a rank's batches (about one shuffle
window each, round-robin over workers), tag each batch with its index and the main process puts
them back in order, so neither the world size nor the number of workers changes what the ranks see
together. State = (epoch, samples consumed).
"""
from __future__ import annotations

import queue
import threading
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .io import ShardStore, ShardError, check_shards_present, read_manifest, split_counts
from .order import EpochPlan


class _BatchStream(torch.utils.data.IterableDataset):
    """(k, labels, tokens) for this rank's batches k = 0..n_batches-1 of an epoch that fall to this
    worker; batch 0 starts at global position `start`."""

    def __init__(self, spec: Dict[str, Any], store: Optional[ShardStore] = None):
        super().__init__()
        self.spec = spec
        self.store = store  # only handed in for in-process use; workers open their own files

    def __iter__(self) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        s = self.spec
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        store = self.store or ShardStore(s["uri"], s["manifest"], s["storage_options"], s["cache_dir"], s["split"],
                                         s["val_fraction"], s["vocab_size"], s["cache_bytes"],
                                         verify_sha256=s["verify_sha256"])
        plan = EpochPlan(s["seed"], s["epoch"], s["counts"], s["window"], s["shuffle"])
        per_rank = s["global_batch"] // s["world_size"]

        def make(k: int):
            first = s["start"] + k * s["global_batch"] + s["rank"] * per_rank
            return (k, *assemble(store, plan, s["counts"], np.arange(first, first + per_rank)))

        # Runs of about one shuffle window of batches go to the same worker, so workers mostly read
        # disjoint row groups instead of each reading everything.
        run = max(1, s["window"] // s["global_batch"])
        mine = (k for k in range(s["n_batches"]) if (k // run) % n_workers == worker)
        try:
            yield from _read_ahead(make, mine, s["prefetch"])
        finally:
            if store is not self.store:
                store.close()


def assemble(store: ShardStore, plan: EpochPlan, counts: Sequence[int],
             positions: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global positions -> (labels_B int64, tokens_BL int64) in position order."""
    shards, local = plan.locate(positions)
    labels_B = np.empty(len(positions), dtype=np.int64)
    tokens_BL = np.empty((len(positions), store.seq_len), dtype=np.uint16)
    for shard in np.unique(shards):
        sel = shards == shard
        index = store.index(int(shard))
        if index.num_images != counts[shard]:
            name = store.manifest.shards[shard].name
            raise ShardError(f"token shard {name} holds {index.num_images} images of split {store.split!r}, the "
                             f"manifest implies {counts[shard]}: every image's variants must sit in one shard")
        rows = index.chosen_rows(plan.seed, plan.epoch, local[sel])
        labels_B[sel], tokens_BL[sel] = store.gather(int(shard), rows)
    return torch.from_numpy(labels_B), torch.from_numpy(tokens_BL.astype(np.int64))


def _in_order(tagged: Iterable[Tuple[int, torch.Tensor, torch.Tensor]]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Reorder (k, labels, tokens) from the workers into k = 0, 1, 2, ...

    torch hands out worker items round-robin; a worker's run of batches arrives interleaved with the
    others', so at most (workers - 1) runs wait here."""
    waiting: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    want = 0
    for k, labels_B, tokens_BL in tagged:
        waiting[k] = (labels_B, tokens_BL)
        while want in waiting:
            yield waiting.pop(want)
            want += 1
    if waiting:
        raise RuntimeError(f"loader workers skipped batch {want}")  # would be a bug in the run assignment


def _read_ahead(make: Callable[[int], Any], keys: Iterable[int], depth: int) -> Iterator[Any]:
    """Build items on a background thread, at most `depth` ahead of the consumer (bounded memory)."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for k in keys:
                if not put(("item", make(k))):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(("error", e))

    thread = threading.Thread(target=run, name="token-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class TokenLoader:
    """Iterates (labels_B int64, tokens_BL int64): this rank's slice of each global batch.

    One pass of `for batch in loader` yields the rest of the current epoch (len(loader) batches from
    a fresh epoch; the last partial global batch is dropped); the loader then moves to the next epoch
    by itself, so no set_epoch() is needed. State is updated as each batch is handed out.
    """

    def __init__(self, shards_uri: str, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 patch_nums: Optional[Sequence[int]] = None, tokenizer_hash: Optional[str] = None,
                 vocab_size: Optional[int] = None, num_workers: int = 0, shuffle_window: int = 4096,
                 cache_dir: Optional[str] = None, split: str = "train", val_fraction: float = 0.0,
                 storage_options: Optional[Dict[str, Any]] = None, shuffle: bool = True, prefetch: int = 2,
                 cache_bytes: int = 256 << 20, verify_sha256: bool = True):
        if global_batch <= 0:
            raise ValueError(f"global_batch must be > 0, got {global_batch}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch % world_size:
            raise ValueError(f"global_batch {global_batch} is not divisible by world_size {world_size}: "
                             f"each rank takes an equal slice of every global batch")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if split == "val" and val_fraction <= 0.0:
            raise ValueError("split='val' needs val_fraction > 0 (the held-out fraction of images)")
        if num_workers < 0 or shuffle_window < 1 or prefetch < 1:
            raise ValueError(f"need num_workers >= 0, shuffle_window >= 1, prefetch >= 1; got {num_workers}, "
                             f"{shuffle_window}, {prefetch}")
        import pyarrow.compute  # noqa: F401  imported here so forked workers inherit them (~1 s each otherwise)
        import pyarrow.parquet  # noqa: F401

        self.uri = shards_uri.rstrip("/")
        self.global_batch, self.rank, self.world_size, self.seed = global_batch, rank, world_size, seed
        self.num_workers, self.prefetch, self.split = num_workers, prefetch, split
        self.manifest = read_manifest(self.uri, storage_options)
        self.manifest.check_compatible(patch_nums if patch_nums is not None else self.manifest.patch_nums,
                                       tokenizer_hash, vocab_size)
        self._store = ShardStore(self.uri, self.manifest, storage_options, cache_dir, split, val_fraction,
                                 vocab_size, cache_bytes, verify_sha256=verify_sha256)
        check_shards_present(self._store.fs, self._store.root, self.manifest, self.uri)
        self.counts = list(split_counts(self._store, self.manifest.variants.get("count")))
        self.num_samples = int(sum(self.counts))
        if self.num_samples < global_batch:
            raise ValueError(f"the {split} split of {self.uri} has {self.num_samples} images, fewer than one "
                             f"global batch of {global_batch}")
        self._spec = dict(uri=self.uri, manifest=self.manifest, storage_options=storage_options,
                          cache_dir=cache_dir, split=split, val_fraction=val_fraction, vocab_size=vocab_size,
                          cache_bytes=cache_bytes, seed=seed, counts=self.counts, window=shuffle_window,
                          shuffle=shuffle, global_batch=global_batch, rank=rank, world_size=world_size,
                          prefetch=prefetch, verify_sha256=verify_sha256)
        self.epoch, self.samples_consumed = 0, 0

    @classmethod
    def from_config(cls, cfg, rank: int = 0, world_size: int = 1, split: str = "train",
                    tokenizer_hash: Optional[str] = None, global_batch: Optional[int] = None) -> "TokenLoader":
        """From a resolved RunConfig (data.*, optim.global_batch, tokenizer.patch_nums/vocab_size, seed)."""
        d = cfg.data
        return cls(d.shards, global_batch or cfg.optim.global_batch, rank, world_size, cfg.seed,
                   patch_nums=cfg.tokenizer.patch_nums, tokenizer_hash=tokenizer_hash,
                   vocab_size=cfg.tokenizer.vocab_size, num_workers=d.num_workers, shuffle_window=d.shuffle_window,
                   cache_dir=d.cache_dir or None, split=split, val_fraction=d.val_fraction)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    def _roll_over_if_done(self) -> None:
        if self.samples_consumed + self.global_batch > self.num_samples:
            self.epoch, self.samples_consumed = self.epoch + 1, 0

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._roll_over_if_done()
        n_batches = (self.num_samples - self.samples_consumed) // self.global_batch
        spec = dict(self._spec, epoch=self.epoch, start=self.samples_consumed, n_batches=n_batches)
        if self.num_workers == 0:
            batches = iter(_BatchStream(spec, self._store))
        else:
            batches = iter(torch.utils.data.DataLoader(_BatchStream(spec), batch_size=None,
                                                       num_workers=self.num_workers, prefetch_factor=self.prefetch))
        try:
            for labels_B, tokens_BL in _in_order(batches):
                self.samples_consumed += self.global_batch
                self._roll_over_if_done()
                yield labels_B, tokens_BL
        finally:
            close = getattr(batches, "close", None) or getattr(batches, "_shutdown_workers", None)
            if close is not None:
                close()

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "samples_consumed": self.samples_consumed, "seed": self.seed,
                "global_batch": self.global_batch, "num_samples": self.num_samples}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume in O(1). Any world size / worker count works; the global order continues unchanged."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}: "
                             f"the data order would not continue")
        if "num_samples" in state and int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"loader state was saved on a {self.split} split of {state['num_samples']} images, "
                             f"this dataset has {self.num_samples}: not the same data")
        epoch, consumed = int(state["epoch"]), int(state["samples_consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise ValueError(f"invalid loader state epoch={epoch}, samples_consumed={consumed}")
        if int(state.get("global_batch", self.global_batch)) != self.global_batch:
            warnings.warn(f"resuming with global_batch {self.global_batch} (saved with {state['global_batch']}): "
                          f"the sample order continues, regrouped into the new batch size")
        self.epoch, self.samples_consumed = epoch, consumed
