"""EMA of the ZeRO-3 partitions (mvar_dist/train/ema.py), one process: the schedule, the config, the
files in the marker, a rank file set that does not cover a rank. Real DeepSpeed ranks:
tests/integration/test_ema_zero3.py; the trainer (resume, export, sampling): integration/test_train_loop.py."""
from __future__ import annotations

import pytest
import torch


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

    for rank in (0, 1):
        p = tmp_path / ema_file(rank)
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes(range(200)))
    reports = [mf.rank_report(tmp_path, r, [ema_file(r)]) for r in (0, 1)]
    (tmp_path / mf.MARKER).write_text(mf.marker_text(mf.build_marker(5, reports)))
    files = mf.read_files_entry(tmp_path)
    assert mf.owner(ema_file(1), files[ema_file(1)]) == 1
    assert mf.verify_folder(tmp_path, "hash") is None
    data = bytearray((tmp_path / ema_file(1)).read_bytes())
    data[100] ^= 1  # a flipped bit, same size
    (tmp_path / ema_file(1)).write_bytes(bytes(data))
    problem = mf.verify_folder(tmp_path, "hash")
    assert problem is not None and problem.startswith("ema/rank_00001.safetensors has sha256")


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
