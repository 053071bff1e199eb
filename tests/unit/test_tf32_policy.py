"""One TF32 policy through torch's fp32_precision API (mvar_dist.precision), and MFU peaks per device."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mvar_dist.precision import set_tf32, tf32_disabled, tf32_enabled
from mvar_dist.train.metrics import device_peak_flops

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_policy():
    prev = (tf32_enabled(), torch.backends.cudnn.conv.fp32_precision)
    yield
    set_tf32(prev[0])
    torch.backends.cudnn.conv.fp32_precision = prev[1]


def test_policy_round_trip_through_the_new_api(restore_policy):
    set_tf32(True)
    assert tf32_enabled() and torch.backends.cudnn.conv.fp32_precision == "tf32"
    with tf32_disabled():
        assert not tf32_enabled() and torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert tf32_enabled()
    # torch's own inductor reads the matmul precision through the older getter when it precompiles
    # autotuning choices: the way the policy is set must keep that reader working
    assert torch.get_float32_matmul_precision() == "high"
    set_tf32(False)
    assert not tf32_enabled() and torch.get_float32_matmul_precision() == "highest"


def test_no_code_reads_or_writes_the_legacy_flags():
    # once the new API is set, touching `allow_tf32` raises: only mvar_dist/precision.py touches TF32
    offenders = []
    for root in ("mvar_dist", "ops", "data_pipeline", "benchmarks", "launchers"):
        for f in (REPO / root).rglob("*.py"):
            code = re.sub(r'""".*?"""', "", f.read_text(), flags=re.S)
            if f.name == "precision.py" and f.parent.name == "mvar_dist":
                continue  # the owner
            if "allow_tf32" in code or "float32_matmul_precision" in code or "fp32_precision" in code:
                offenders.append(str(f.relative_to(REPO)))
    assert not offenders


def test_mfu_peaks_per_device(monkeypatch, restore_policy):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops(cuda, "bf16") == 989e12
    set_tf32(True)
    assert device_peak_flops(cuda, "fp32") == 495e12  # TF32 on: the TF32 tensor-core peak
    set_tf32(False)
    assert device_peak_flops(cuda, "fp32") == 67e12   # IEEE fp32
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 PCIe")
    assert device_peak_flops(cuda, "bf16") == 756e12  # PCIe is matched before the SXM entry
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Future GPU")
    assert device_peak_flops(cuda, "bf16") == 0.0     # unknown: MFU not logged
    assert device_peak_flops(torch.device("cpu"), "bf16") == 0.0
    assert device_peak_flops(torch.device("cpu"), "bf16", override_tflops=100) == 100e12
