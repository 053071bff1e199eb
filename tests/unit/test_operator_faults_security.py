"""Checkpoint folders cannot run code (issue 25): DeepSpeed's state files are unpickled weights-only,
before DeepSpeed or its universal conversion reads them, and in the engine's own loads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mvar_dist.errors import OperatorError
from mvar_dist.train.safe_load import WeightsOnlyCheckpointEngine, check_state_files


class Payload:
    """Unpickling this with weights_only=False would create a file: the stand-in for arbitrary code."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def _state_folder(tmp_path: Path, evil: bool) -> Path:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    folder = tmp_path / "ds" / "state"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.x"}, folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    optim = {"optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights, "loss_scaler": LossScaler(1.0),
                                      "fp32_flat_groups": [torch.zeros(3)]}}
    if evil:
        optim["extra"] = Payload(tmp_path / "pwned")
    torch.save(optim, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


def test_real_deepspeed_state_passes(tmp_path):
    check_state_files(_state_folder(tmp_path, evil=False))


def test_pickled_payload_in_ds_state_is_refused(tmp_path):
    folder = _state_folder(tmp_path, evil=True)
    with pytest.raises(OperatorError, match="holds pickled objects that are not weights"):
        check_state_files(folder)
    assert not (tmp_path / "pwned").exists()


def test_engine_loads_are_weights_only(tmp_path):
    folder = _state_folder(tmp_path, evil=True)

    class Inner:
        name = "torch"

    eng = WeightsOnlyCheckpointEngine(Inner())
    assert eng.name == "torch"
    assert torch.equal(eng.load(str(folder / "zero_pp_rank_0_mp_rank_00_model_states.pt"))["module"]["w"], torch.ones(2))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        eng.load(str(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    assert not (tmp_path / "pwned").exists()
