"""EMA of the ZeRO-3 partitions (mvar_dist/train/ema.py): the schedule, the config, the files in the
marker, and (slow, real DeepSpeed on gloo ranks) equality with a single-process reference EMA and
restoring at other world sizes. The trainer-level checks (resume, export, sampling) are in
tests/test_train_loop.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from s3_utils import free_port

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "ema_worker.py"


def test_decay_schedule_warm_up_start_and_every():
    from mvar_dist.train.ema import decay_at, is_update_step

    assert decay_at(3, 0.999, start_step=5) == 0.0  # before the start the EMA copies the weights
    assert decay_at(6, 0.999, start_step=5) == pytest.approx(2 / 11)  # k = 1: (1+k)/(10+k)
    assert decay_at(10_000, 0.999, start_step=0) == 0.999
    assert [s for s in range(1, 12) if is_update_step(s, 4, 3)] == [1, 2, 3, 4, 7, 10]


def test_config_section_and_errors():
    from mvar_dist.config import ConfigError, load_config

    cfg = load_config("mvar_tiny")
    assert cfg.ema.enabled is False  # off by default, as in the official recipes
    cfg = load_config("mvar_tiny", ["ema.enabled=true", "ema.decay=0.99", "ema.every=4"])
    assert (cfg.ema.enabled, cfg.ema.decay, cfg.ema.every) == (True, 0.99, 4)
    for bad, key in (("ema.decay=1.0", "ema.decay"), ("ema.every=0", "ema.every"), ("ema.start_step=-1",
                                                                                     "ema.start_step")):
        with pytest.raises(ConfigError, match=key):
            load_config("mvar_tiny", [bad])


def test_ema_files_are_rank_files_and_damage_is_named(tmp_path):
    from mvar_dist.runs import manifest as mf
    from mvar_dist.runs.layout import ema_file

    assert mf.file_owner(ema_file(3)) == 3
    for rank in (0, 1):
        p = tmp_path / ema_file(rank)
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes(range(200)))
    reports = [{"rank": r, "ok": True, "error": "",
                "files": mf.describe(tmp_path, [ema_file(r)])} for r in (0, 1)]
    (tmp_path / mf.MARKER).write_text(mf.marker_text(mf.build_marker(5, reports)))
    assert mf.verify_folder(tmp_path, "hash") is None
    data = bytearray((tmp_path / ema_file(1)).read_bytes())
    data[100] ^= 1  # a flipped bit, same size
    (tmp_path / ema_file(1)).write_bytes(bytes(data))
    problem = mf.verify_folder(tmp_path, "hash")
    assert problem is not None and problem.startswith("ema/rank_00001.safetensors has sha256")


def _torchrun(nproc: int, *args) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(WORKER), *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]


@pytest.mark.slow
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


def test_missing_rank_file_is_refused_by_name(tmp_path):
    """A folder whose EMA files do not cover a rank's slice is refused, not half-loaded."""
    from mvar_dist.train.ema import PartitionEMA, _Span

    ema = PartitionEMA.__new__(PartitionEMA)
    ema.rank, ema.decay, ema.start_step, ema.every = 0, 0.9, 0, 1
    ema.spans = [_Span("w", 0, 0, 0, 4, (8,))]
    ema.flats = [torch.arange(4, dtype=torch.float32)]
    ema.save(tmp_path, 1)  # covers elements 0..3 of w
    ema.spans = [_Span("w", 0, 0, 4, 4, (8,))]  # as rank 1 of 2: elements 4..7, which no file holds
    with pytest.raises(ValueError, match="do not cover this rank's part of w"):
        ema.load(tmp_path)
