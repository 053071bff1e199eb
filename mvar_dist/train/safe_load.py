"""DeepSpeed state files are read as weights only.

DeepSpeed reads `ds/state/*.pt` (and its universal-format conversion reads them again) with
`torch.load(weights_only=False)`, so a crafted file in a checkpoint folder, local or on S3, would run
code on every node that resumes from it. Before DeepSpeed or the conversion touches a folder, every
`.pt` file in it is unpickled with weights_only=True (memory-mapped: only the pickle is read), allowing
just the classes its ZeRO-3 optimizer state holds (`allowed_globals`); and the engine's own loads are
routed through the same restricted loader (`install`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from mvar_dist.errors import OperatorError


def allowed_globals() -> List[type]:
    """The non-tensor classes a ZeRO-3 state file holds (found by loading real ones; docs/checkpoints.md).

    OfficialLossScaler is ours: precision "fp16" puts it in the optimizer's scaler slot, which ZeRO-3 saves.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from .amp import OfficialLossScaler

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, OfficialLossScaler]


def load_weights_only(path, map_location=None, mmap: bool = False):
    with torch.serialization.safe_globals(allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def check_state_files(folder: Path) -> None:
    """Refuse a folder any of whose .pt files holds more than weights (and the classes of allowed_globals)."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*.pt")):
        try:
            load_weights_only(path, map_location="cpu", mmap=True)
        except Exception as e:  # noqa: BLE001  UnpicklingError, or whatever a crafted pickle provokes
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OperatorError(f"checkpoint file {path} holds pickled objects that are not weights ({reason}); "
                                f"refusing to load it (it could run code). Resume from a checkpoint this trainer "
                                f"wrote, or start over with ckpt.resume=none") from e


class WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with `load` restricted to weights; everything else is the wrapped one's."""

    def __init__(self, inner):
        self._inner = inner

    def load(self, path, map_location=None):
        return load_weights_only(path, map_location=map_location)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def install(engine) -> None:
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine.checkpoint_engine)
