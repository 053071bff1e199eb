"""What the trainer checks before its first step, so that a run never fails at its end for a reason
it could have seen at its start: the output folder is its own (a lock), the checkpoint destination
can be written (folder, or bucket + credentials), there is room for one checkpoint, the dataset's
classes fit the model, and a resumed checkpoint was trained on this tokenizer's ids.

Rank 0 checks the shared things (each node's first rank its node-local staging disk); the verdict is
all-reduced, so every rank stops together.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from mvar_dist.config import ConfigError, RunConfig
from mvar_dist.errors import OperatorError
from mvar_dist.preflight import OutputLock, check_destination, check_free_space
from . import checkpoint as ck
from .ckpt_sync import stage_dir
from mvar_dist.runs.storage import is_remote

# One checkpoint, per parameter. Cut over the ranks: fp32 master + Adam m, v (12 B) + the bf16 module state
# (2 B), and with ema.enabled the fp32 EMA rank files (4 B). Written by rank 0: model.safetensors (2 B) and
# model_ema.safetensors (2 B).
SHARDED_BYTES_PER_PARAM, EMA_SHARDED_BYTES_PER_PARAM = 14, 4
EXPORT_BYTES_PER_PARAM, EMA_EXPORT_BYTES_PER_PARAM = 2, 2


def _agree(failed: bool, device: torch.device) -> bool:
    if not dist.is_initialized():
        return failed
    flag = torch.tensor([float(failed)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def rank0_check(rank: int, device: torch.device, check) -> None:
    """Run check() on rank 0; raise its error there and a pointer to it on the other ranks."""
    checked_on(rank == 0, device, check)


def checked_on(here: bool, device: torch.device, check) -> None:
    """Run check() on the ranks where `here`; raise its error there and a pointer to it on the others."""
    err: Optional[BaseException] = None
    if here:
        try:
            check()
        except (OperatorError, OSError) as e:
            err = e
    if _agree(err is not None, device):
        raise err if err is not None else OperatorError("another rank refused to start the run (see its error line)")


@contextlib.contextmanager
def output_lock(cfg: RunConfig, rank: int, device: torch.device) -> Iterator[None]:
    """Hold <out_dir>/.lock (rank 0) for the run and check out_dir and ckpt.dir can be written."""
    lock = OutputLock(cfg.out_dir, "out_dir")

    def check() -> None:
        lock.acquire()
        check_destination(cfg.out_dir, "out_dir")
        check_destination(cfg.ckpt.dir, "ckpt.dir")

    try:
        rank0_check(rank, device, check)
        yield
    finally:
        lock.release()


def checkpoint_bytes(num_params: int, ema: bool, ranks_here: int, world: int, with_exports: bool) -> int:
    """About what one checkpoint puts on a disk that holds the files of ranks_here of the world's ranks,
    plus rank 0's exports when with_exports."""
    sharded = SHARDED_BYTES_PER_PARAM + (EMA_SHARDED_BYTES_PER_PARAM if ema else 0)
    exports = EXPORT_BYTES_PER_PARAM + (EMA_EXPORT_BYTES_PER_PARAM if ema else 0)
    return int(num_params * (sharded * ranks_here / world + (exports if with_exports else 0)))


def check_space(cfg: RunConfig, rank: int, device: torch.device, num_params: int) -> None:
    """Room for one more checkpoint where it is assembled: ckpt.dir, one folder all ranks write into (checked
    by rank 0), or for s3:// each node's own staging folder (checked by the node's first rank, for its ranks)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not is_remote(cfg.ckpt.dir):
        need = checkpoint_bytes(num_params, cfg.ema.enabled, world, world, True)
        rank0_check(rank, device, lambda: check_free_space(cfg.ckpt.dir, need, "ckpt.dir"))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    need = checkpoint_bytes(num_params, cfg.ema.enabled, local_world, world, rank - local_rank == 0)
    checked_on(local_rank == 0, device, lambda: check_free_space(stage_dir(cfg), need, "ckpt.stage_dir"))


def check_num_classes(cfg: RunConfig, dataset_classes: int, where: str) -> None:
    """Labels >= model.num_classes would train as the guidance null class, or index past the embedding."""
    if dataset_classes > cfg.model.num_classes:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes} but the token dataset {where} has "
                                               f"{dataset_classes} classes; set model.num_classes={dataset_classes}")


def check_resume_tokenizer(cfg: RunConfig, resume_from: Optional[ck.ResumePoint], tok_hash: str) -> None:
    """A checkpoint trained on one tokenizer's ids is refused on another's unless ckpt.allow_new_tokenizer."""
    theirs = resume_from.meta.get("tokenizer_hash") if resume_from is not None else None
    if theirs and theirs != tok_hash and not cfg.ckpt.allow_new_tokenizer:
        raise ConfigError("ckpt.allow_new_tokenizer",
                          f"checkpoint {resume_from.remote or resume_from.folder} was trained with tokenizer "
                          f"{theirs[:12]}..., this "
                          f"run uses {tok_hash[:12]}... (tokenizer.checkpoint / the shards' tokenizer); resume it with "
                          f"the same tokenizer, or pass --allow-new-tokenizer (ckpt.allow_new_tokenizer=true) to "
                          f"continue on the new ids deliberately")
