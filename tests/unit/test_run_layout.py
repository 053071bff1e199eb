"""runs/layout.py: step folder names, checkpoint ids, a run's checkpoint root, finding complete checkpoints."""
from __future__ import annotations

import pytest

from mvar_dist.config import load_config, save_config
from mvar_dist.runs import layout as L


def _step(root, step, complete=True):
    d = root / L.step_name(step)
    d.mkdir(parents=True)
    (d / L.META).write_text("{}")
    if complete:
        (d / "COMPLETE").write_text("")
    return d


def test_step_names_round_trip_and_other_names_are_not_steps():
    assert L.step_name(120) == "step_00000120" and L.parse_step("step_00000120") == 120
    assert L.step_of("s3://b/run/checkpoints/step_00000007/") == 7
    for name in ("step_120", ".tmp.step_00000120", "damaged.step_00000120", "step_00000120.1"):
        assert L.parse_step(name) is None
    with pytest.raises(ValueError, match="not a step folder"):
        L.step_of("damaged.step_00000120")
    assert L.checkpoint_id("mvar-d1", 4) == "mvar-d1/step_00000004"


def test_ckpt_root_follows_the_run_config(tmp_path):
    run = tmp_path / "run"
    assert L.ckpt_root(run) == str(run / "checkpoints")  # no config.yaml: the default
    save_config(load_config("mvar_tiny", [f"out_dir={tmp_path / 'elsewhere_out'}"]), run)
    assert L.ckpt_root(run) == str(run / "checkpoints")  # the default, taken relative to the (moved) run
    save_config(load_config("mvar_tiny", [f"out_dir={run}", "ckpt.dir=s3://bucket/ckpts"]), run)
    assert L.ckpt_root(run) == "s3://bucket/ckpts"


def test_run_checkpoints_lists_complete_ones_under_a_non_default_dir(tmp_path):
    run, other = tmp_path / "runs" / "r1", tmp_path / "disk2" / "ckpts"
    save_config(load_config("mvar_tiny", [f"out_dir={run}", f"ckpt.dir={other}"]), run)
    _step(other, 8)
    _step(other, 4)
    _step(other, 12, complete=False)
    refs = L.run_checkpoints(run)
    assert [(r.id, r.step) for r in refs] == [("r1/step_00000004", 4), ("r1/step_00000008", 8)]
    assert [p.name for p in L.list_checkpoints(other)] == ["step_00000004", "step_00000008"]
    assert L.latest_checkpoint(other).name == "step_00000008"
