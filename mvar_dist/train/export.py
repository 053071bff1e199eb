"""Consolidated model-only export (official key names) from a ZeRO-3-partitioned module."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Optional

import torch

from mvar_dist.fsio import atomic_path
from mvar_dist.runs.layout import WEIGHT_FILES

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def gather_official_state_dict(module: torch.nn.Module, rank: int, dtype: str) -> Optional[Dict[str, torch.Tensor]]:
    """Collective: every rank must call it. Rank 0 gets the full official state dict, others None.

    The values are the module's working weights (fp32 in fp32 runs, bf16 in bf16 runs) cast to
    `dtype`; the fp32 master copy stays in the DeepSpeed state of the same checkpoint.
    """
    import deepspeed

    if dtype not in _DTYPES:
        raise ValueError(f"ckpt.export_dtype must be one of {sorted(_DTYPES)} or 'none', got {dtype!r}")
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        if rank != 0:
            return None
        sd = module.official_state_dict()
        return {k: (v.to(_DTYPES[dtype]) if v.is_floating_point() else v).contiguous().clone()
                for k, v in sd.items()}


def save_model_file(sd: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)


def export_weights(engine, ema, rank: int, folder: Path, dtype: str, metadata: Dict[str, str]) -> List[str]:
    """Collective: model.safetensors and, when `ema` (train/ema.py) is given, model_ema.safetensors.

    Rank 0 writes both; returns its write errors (OSError text) so they reach the checkpoint's report."""
    from .engine import reset_zero3_trace

    errors = []
    for kind in ("raw", "ema") if ema is not None else ("raw",):
        with ema.swapped_in() if kind == "ema" else contextlib.nullcontext():
            sd = gather_official_state_dict(engine.module, rank, dtype)
        if rank == 0:
            try:
                save_model_file(sd, Path(folder) / WEIGHT_FILES[kind], {**metadata, "weights": kind})
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")
    reset_zero3_trace(engine)
    return errors
