"""Building a pass's batches ahead of the consumer: a read-ahead thread (num_workers=0) or persistent
worker processes (WorkerPool) that each own runs of batches (see batch_owner), so their caches stay warm."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import traceback
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .io import ShardStore

if TYPE_CHECKING:
    from .loader import LoaderSettings, _Source


def batch_owner(s: LoaderSettings, k: int, n_workers: int) -> int:
    # Runs of about one shuffle window of batches go to the same worker: a window's batches all draw
    # from the same row groups, so workers mostly decode disjoint row groups instead of all of them.
    run = max(1, s.shuffle_window // s.global_batch)
    return (k // run) % n_workers


def read_ahead(make: Callable[[int], Any], keys: Iterable[int], depth: int) -> Iterator[Any]:
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


def _worker_main(worker: int, n_workers: int, source: _Source, tasks, results, parent_pid: int) -> None:
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
            order = source.order(epoch)
            for k in range(n_batches):
                if batch_owner(source.settings, k, n_workers) != worker:
                    continue
                if tasks.poll():
                    job = tasks.recv()
                    break
                try:
                    store = store or source.open_store()
                    item = ("batch", gen, k, source.batch(store, order, start, k))
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


class WorkerPool:
    """`n` worker processes started once and fed one job per pass, so their caches stay warm across epochs.

    Batch k of a pass comes only from its owner's queue, in order; queues hold up to one run of
    batches plus `prefetch`, so a worker builds its next run while the main process consumes another's."""

    def __init__(self, n: int, source: _Source):
        # fork: workers inherit the imported pyarrow (~1 s each to import otherwise), like torch's DataLoader
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.n, self.settings, self.gen = n, source.settings, 0
        depth = self.settings.prefetch + max(1, self.settings.shuffle_window // self.settings.global_batch)
        self.procs, self.conns, self.queues = [], [], []
        for worker in range(n):
            recv, send = ctx.Pipe(duplex=False)
            results = ctx.Queue(maxsize=depth)
            p = ctx.Process(target=_worker_main, args=(worker, n, source, recv, results, os.getpid()),
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
        owner = batch_owner(self.settings, k, self.n)
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
