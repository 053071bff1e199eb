"""What the trainer checks before its first step, so that a run never fails at its end for a reason
it could have seen at its start: the output folder is its own (a lock), the checkpoint destination
can be written (folder, or bucket + credentials), there is room for one checkpoint, the dataset's
classes fit the model, and a resumed checkpoint was trained on this tokenizer's ids.

Rank 0 checks the shared things; the verdict is all-reduced, so every rank stops together.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from mvar_dist.config import ConfigError, RunConfig
from mvar_dist.errors import OperatorError
from mvar_dist.preflight import OutputLock, check_destination, check_free_space
from . import checkpoint as ck
from .ckpt_sync import stage_dir
from mvar_dist.runs.storage import is_remote

# ZeRO-3 bf16 checkpoint: fp32 master + Adam m, v (12 B) + the bf16 module state (2 B) + model.safetensors (2 B).
CHECKPOINT_BYTES_PER_PARAM = 16
# With ema.enabled: the fp32 EMA rank files (4 B) + model_ema.safetensors (2 B).
EMA_BYTES_PER_PARAM = 6


def _agree(failed: bool, device: torch.device) -> bool:
    if not dist.is_initialized():
        return failed
    flag = torch.tensor([float(failed)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def rank0_check(rank: int, device: torch.device, check) -> None:
    """Run check() on rank 0; raise its error there and a pointer to it on the other ranks."""
    err: Optional[BaseException] = None
    if rank == 0:
        try:
            check()
        except (OperatorError, OSError) as e:
            err = e
    if _agree(err is not None, device):
        raise err if err is not None else OperatorError("rank 0 refused to start the run (see its error line)")


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


def check_space(cfg: RunConfig, rank: int, device: torch.device, num_params: int) -> None:
    """Room for one more checkpoint where it is assembled (ckpt.dir, or the staging folder for s3://)."""
    where = stage_dir(cfg) if is_remote(cfg.ckpt.dir) else cfg.ckpt.dir
    what = "ckpt.stage_dir" if is_remote(cfg.ckpt.dir) else "ckpt.dir"
    per_param = CHECKPOINT_BYTES_PER_PARAM + (EMA_BYTES_PER_PARAM if cfg.ema.enabled else 0)
    rank0_check(rank, device, lambda: check_free_space(where, per_param * num_params, what))


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
