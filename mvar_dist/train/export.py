"""Consolidated model-only export (official key names) from a ZeRO-3-partitioned module."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from mvar_dist.fsio import atomic_path

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
