"""Process groups for every multi-process part (both trainers, the sampler): setup, rank/world, all-reduce.

Launched by `deepspeed` or `torchrun`, the launcher's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* are
used as they are. As a plain `python` process the trainer still gets a one-rank group (its barriers
and all-reduces then cost nothing); the sampler, which needs no collective on one rank, does not.
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, Iterable, Optional, Tuple

import torch
import torch.distributed as dist

# Long enough for rank 0 to convert a checkpoint to the universal format while the others wait.
TIMEOUT = datetime.timedelta(minutes=30)


def init_process_group(*, single_process: bool) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device); joins (or creates) the default group, nccl on CUDA and gloo on CPU.

    single_process: also create a group when there is only one process (not launched by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if world > 1 or "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=TIMEOUT)
        elif single_process:
            os.environ.setdefault("LOCAL_RANK", "0")  # deepspeed.initialize asserts it is set
            # An in-memory store: a lone process needs no port, so two of them never collide.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if not torch.cuda.is_available():
        return rank, world, torch.device("cpu")
    local = local_device_index(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count())
    torch.cuda.set_device(local)
    return rank, world, torch.device("cuda", local)


def local_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of this process: LOCAL_RANK among the node's visible GPUs, or 0 when the
    scheduler gives each process a single GPU (`srun --gpus-per-task=1` sets CUDA_VISIBLE_DEVICES per
    task, so LOCAL_RANK 5 must use device 0)."""
    if visible == 1:
        return 0
    if not 0 <= local_rank < visible:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {visible} GPU(s): start at most "
                           f"{visible} processes per node, and set LOCAL_RANK to the rank within the node "
                           f"(under Slurm: SLURM_LOCALID, see docs/multinode.md)")
    return local_rank


def per_rank_batch(global_batch: int, world: int, error: Callable[[], Exception]) -> int:
    """Images each rank takes from one global batch. The global batch stays fixed whatever the world size
    and every rank takes an equal slice of it, so the world size must divide it; otherwise raises error()
    (built by the caller, which names the setting to change in its own terms)."""
    if global_batch % world:
        raise error()
    return global_batch // world


def rank_world() -> Tuple[int, int]:
    """(rank, world_size) of the initialised default group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    return rank_world()[1]


def all_reduce_(t: torch.Tensor, op=None) -> torch.Tensor:
    """In place over all ranks (SUM by default); a no-op without a group or with one rank."""
    if world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks in one flat buffer (a missing grad counts as zeros)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world_size() == 1 or not params:
        return
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def destroy_process_group() -> None:
    """Leave the group if one was made; without this a gloo rank sometimes aborts at interpreter exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_0(obj):
    """Rank 0's `obj` on every rank (any picklable object); the object itself without a group."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_0(obj) -> Optional[list]:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); [obj] without a group."""
    if world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
