"""EMA of the ZeRO-3 partitions on real DeepSpeed gloo ranks (tests/helpers/ema_worker.py): 2 ranks equal
a single-process fp32 reference EMA of the same parameter trajectory, and their files restore the same EMA
on 1 and on 3 ranks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from s3_utils import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "helpers" / "ema_worker.py"
pytestmark = pytest.mark.slow


def _torchrun(nproc: int, *args) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(WORKER), *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]


def test_two_ranks_equal_reference_and_restore_on_one_and_three_ranks(tmp_path):
    _torchrun(2, "train", tmp_path, 7)
    saved = torch.load(tmp_path / "ema_full.pt", weights_only=True)
    for name, ref in saved["ref"].items():  # the same lerp on full tensors: bit-identical in practice
        torch.testing.assert_close(saved["ema"][name], ref, rtol=1e-7, atol=0.0)
    assert sorted(p.name for p in (tmp_path / "ema").iterdir()) == ["rank_00000.safetensors",
                                                                   "rank_00001.safetensors"]
    for world in (1, 3):
        out = tmp_path / f"loaded_{world}.pt"
        _torchrun(world, "load", tmp_path, out)
        got = torch.load(out, weights_only=True)
        assert got.keys() == saved["ema"].keys()
        for name, want in saved["ema"].items():
            assert torch.equal(got[name], want), (world, name)
