"""TokenLoader: the deterministic, elastic, resumable streaming loader over token shards.

The global order of an epoch is a pure function of (seed, epoch) (see order.py). Global batch b of
an epoch is global positions [b*G, (b+1)*G); rank r of W takes the contiguous slice
[b*G + r*G/W, b*G + (r+1)*G/W). Loader workers (persistent processes, see _WorkerPool) take runs of
a rank's batches (about one shuffle window each, round-robin over workers); the main process reads
batch k from the worker that owns it, so neither the world size nor the number of workers changes
what the ranks see together. State = (epoch, samples consumed).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import traceback
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .io import ShardStore, ShardError, check_shards_present, read_manifest, split_counts
from .order import EpochPlan


def _open_store(s: Dict[str, Any]) -> ShardStore:
    return ShardStore(s["uri"], s["manifest"], s["storage_options"], s["cache_dir"], s["split"], s["val_fraction"],
                      s["vocab_size"], s["cache_bytes"], verify_sha256=s["verify_sha256"])


def _batch_positions(s: Dict[str, Any], start: int, k: int) -> np.ndarray:
    """Global positions of this rank's slice of the k-th batch of a pass starting at `start`."""
    per_rank = s["global_batch"] // s["world_size"]
    first = start + k * s["global_batch"] + s["rank"] * per_rank
    return np.arange(first, first + per_rank)


def _owner(s: Dict[str, Any], k: int, n_workers: int) -> int:
    # Runs of about one shuffle window of batches go to the same worker: a window's batches all draw
    # from the same row groups, so workers mostly decode disjoint row groups instead of all of them.
    run = max(1, s["window"] // s["global_batch"])
    return (k // run) % n_workers


def assemble_np(store: ShardStore, plan: EpochPlan, counts: Sequence[int],
                positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Global positions -> (labels_B int64, tokens_BL uint16) in position order."""
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
    return labels_B, tokens_BL


def assemble(store: ShardStore, plan: EpochPlan, counts: Sequence[int],
             positions: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global positions -> (labels_B int64, tokens_BL int64) in position order."""
    return _as_tensors(*assemble_np(store, plan, counts, positions))


def _as_tensors(labels_B: np.ndarray, tokens_BL: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(labels_B), torch.from_numpy(tokens_BL.astype(np.int64))


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


# -- persistent worker processes --------------------------------------------------------------------
_STOP = "stop"
_POLL_S = 0.5  # how often a blocked worker checks for a newer job and for its parent


def _picklable(e: BaseException, worker: int) -> BaseException:
    """The worker's exception, with its traceback as a note, in a form that survives the queue."""
    note = f"raised in token loader worker {worker}:\n{''.join(traceback.format_exception(e))}"
    try:
        e.add_note(note)
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # e.g. an exception class whose __init__ does not take its args back
        plain = RuntimeError(f"{type(e).__name__}: {e}")
        plain.add_note(note)
        return plain


class _Orphaned(Exception):
    pass


def _wait_for_job(tasks, parent_pid: int):
    while not tasks.poll(_POLL_S):
        if os.getppid() != parent_pid:
            raise _Orphaned
    return tasks.recv()


def _worker_main(worker: int, n_workers: int, spec: Dict[str, Any], tasks, results, parent_pid: int) -> None:
    """One worker: a ShardStore (open files, indexes, row-group cache) kept for the process's life.

    Jobs are (generation, epoch, start, n_batches); a newer job pre-empts the current one between
    batches or while blocked on a full queue, so an abandoned pass costs at most one batch."""
    results.cancel_join_thread()  # exit must never wait for the parent to drain the queue
    store: Optional[ShardStore] = None
    job = None
    try:
        while True:
            job = job or _wait_for_job(tasks, parent_pid)
            if job == _STOP:
                return
            gen, epoch, start, n_batches = job
            job = None
            plan = EpochPlan(spec["seed"], epoch, spec["counts"], spec["window"], spec["shuffle"])
            for k in range(n_batches):
                if _owner(spec, k, n_workers) != worker:
                    continue
                if tasks.poll():
                    job = tasks.recv()
                    break
                try:
                    store = store or _open_store(spec)
                    item = ("batch", gen, k, assemble_np(store, plan, spec["counts"], _batch_positions(spec, start, k)))
                except Exception as e:
                    item = ("error", gen, k, _picklable(e, worker))
                while job is None:
                    try:
                        results.put(item, timeout=_POLL_S)
                        break
                    except queue.Full:
                        if tasks.poll():
                            job = tasks.recv()
                        elif os.getppid() != parent_pid:
                            raise _Orphaned
                if job is not None or item[0] == "error":
                    break  # after an error the parent shuts the pool down; nothing more to build
    except (_Orphaned, EOFError, KeyboardInterrupt):
        pass
    finally:
        if store is not None:
            store.close()


def _shutdown(procs: List[Any], conns: List[Any], queues: List[Any]) -> None:
    """Ask each worker to stop, then make sure: no process outlives its loader."""
    for conn in conns:
        try:
            conn.send(_STOP)
        except (OSError, ValueError):
            pass  # the worker is already gone
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    for conn in conns:
        conn.close()
    for q in queues:
        q.cancel_join_thread()
        q.close()


class _WorkerPool:
    """`n` worker processes started once and fed one job per pass, so their caches stay warm across epochs.

    Batch k of a pass comes only from its owner's queue, in order; queues hold up to one run of
    batches plus `prefetch`, so a worker builds its next run while the main process consumes another's."""

    def __init__(self, n: int, spec: Dict[str, Any], prefetch: int):
        # fork: workers inherit the imported pyarrow (~1 s each to import otherwise), like torch's DataLoader
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.n, self.spec, self.gen = n, spec, 0
        depth = prefetch + max(1, spec["window"] // spec["global_batch"])
        self.procs, self.conns, self.queues = [], [], []
        for worker in range(n):
            recv, send = ctx.Pipe(duplex=False)
            results = ctx.Queue(maxsize=depth)
            p = ctx.Process(target=_worker_main, args=(worker, n, spec, recv, results, os.getpid()),
                            name=f"token-loader-worker-{worker}", daemon=True)
            self.procs.append(p)
            self.conns.append(send)
            self.queues.append(results)
            p.start()
            recv.close()
        self._finalize = weakref.finalize(self, _shutdown, self.procs, self.conns, self.queues)

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def submit(self, epoch: int, start: int, n_batches: int) -> int:
        """Start a pass; returns its generation. Any pass in flight is abandoned."""
        self.gen += 1
        for worker, conn in enumerate(self.conns):
            try:
                conn.send((self.gen, epoch, start, n_batches))
            except OSError as e:
                p = self.procs[worker]
                raise RuntimeError(f"token loader worker {worker} (pid {p.pid}) is gone (exit code {p.exitcode})") from e
        return self.gen

    def get(self, gen: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if not self._finalize.alive:
            raise RuntimeError("the TokenLoader's workers were closed while this pass was in progress")
        if gen != self.gen:
            raise RuntimeError("this pass over the TokenLoader was superseded by a newer iter(loader)")
        owner = _owner(self.spec, k, self.n)
        while True:
            try:
                kind, item_gen, item_k, payload = self.queues[owner].get(timeout=_POLL_S)
            except queue.Empty:
                p = self.procs[owner]
                if not p.is_alive():
                    raise RuntimeError(f"token loader worker {owner} (pid {p.pid}) died with exit code {p.exitcode}")
                continue
            if item_gen != gen:
                continue  # left over from an abandoned pass
            if item_k != k:
                raise RuntimeError(f"token loader worker {owner} sent batch {item_k}, expected {k}")  # a bug
            if kind == "error":
                raise payload
            return payload

    def close(self) -> None:
        self._finalize()


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
        import pyarrow.compute  # noqa: F401  imported here so forked workers inherit them
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
        self._pool: Optional[_WorkerPool] = None  # started by the first pass with num_workers > 0

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
        if self.num_workers == 0:
            plan = EpochPlan(self.seed, self.epoch, self.counts, self._spec["window"], self._spec["shuffle"])
            start = self.samples_consumed
            batches = _read_ahead(lambda k: assemble(self._store, plan, self.counts,
                                                     _batch_positions(self._spec, start, k)),
                                  range(n_batches), self.prefetch)
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
            self._pool = _WorkerPool(self.num_workers, self._spec, self.prefetch)
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
            raise ValueError(f"loader state was saved on a {self.split} split of {state['num_samples']} images, "
                             f"this dataset has {self.num_samples}: not the same data")
        epoch, consumed = int(state["epoch"]), int(state["samples_consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise ValueError(f"invalid loader state epoch={epoch}, samples_consumed={consumed}")
        if int(state.get("global_batch", self.global_batch)) != self.global_batch:
            warnings.warn(f"resuming with global_batch {self.global_batch} (saved with {state['global_batch']}): "
                          f"the sample order continues, regrouped into the new batch size")
        self.epoch, self.samples_consumed = epoch, consumed
