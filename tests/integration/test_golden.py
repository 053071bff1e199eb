"""Golden trajectories: 30 steps of mvar_tiny and var_tiny through the launcher (1 rank, fp32, fixed
seeds, the tiny recipe's batch of 8) must reproduce the committed per-step loss, grad norm and lr.

A change to the recipe (loss, schedule, label dropout, optimizer groups, clipping) or to the data
order moves these numbers; the perturbation test shows that a small change to the lr schedule or
to the label-dropout rate does fail the comparison. After an intended change, rewrite the goldens:

    MVAR_WRITE_GOLDENS=1 pytest tests/integration/test_golden.py -k matches
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_train_loop import run_train, shards  # noqa: F401  (fixture)

ASSETS = Path(__file__).resolve().parent / "assets" / "losses"
STEPS = 30
# fp32 on one rank is deterministic on a given machine; the slack covers other BLAS builds/CPUs.
RTOL = {"loss": 2e-6, "grad_norm": 2e-5, "lr": 1e-12}

pytestmark = pytest.mark.slow


def trajectory(config: str, shards: Path, out: Path, *extra: str) -> np.ndarray:
    """(steps, 3) array of loss, grad norm, lr from the run's metrics.jsonl."""
    p = run_train(1, ["--config", config, f"optim.max_steps={STEPS}", "optim.precision=fp32", "seed=0",
                      "ckpt.every_steps=1000", f"data.shards={shards}", f"out_dir={out}", *extra], timeout=500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    return np.array([[r["loss"], r["grad_norm"], r["lr"]] for r in recs])


def read_golden(config: str) -> np.ndarray:
    rows = [line.split() for line in (ASSETS / f"{config}.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert [int(r[0]) for r in rows] == list(range(1, STEPS + 1))
    return np.array([[float(x) for x in r[1:]] for r in rows])


def mismatch(got: np.ndarray, want: np.ndarray) -> list:
    return [f"{name}: max rel diff {np.max(np.abs(got[:, i] - want[:, i]) / np.abs(want[:, i])):.3g}"
            for i, name in enumerate(RTOL) if not np.allclose(got[:, i], want[:, i], rtol=RTOL[name], atol=0)]


@pytest.mark.parametrize("config", ["mvar_tiny", "var_tiny"])
def test_trajectory_matches_the_golden(config, shards, tmp_path):
    got = trajectory(config, shards, tmp_path / "run")
    if os.environ.get("MVAR_WRITE_GOLDENS") == "1":
        ASSETS.mkdir(parents=True, exist_ok=True)
        lines = [f"# {config}: {STEPS} steps, 1 rank, fp32, seed 0 (tests/integration/test_golden.py). step loss grad_norm lr"]
        lines += [f"{k + 1} {loss!r} {gn!r} {lr!r}" for k, (loss, gn, lr) in enumerate(got.tolist())]
        (ASSETS / f"{config}.txt").write_text("\n".join(lines) + "\n")
    assert mismatch(got, read_golden(config)) == []


@pytest.mark.parametrize("perturbation", ["optim.wpe=0.11", "model.cond_drop_rate=0.12"])
def test_a_small_recipe_change_fails_the_golden(perturbation, shards, tmp_path):
    got = trajectory("var_tiny", shards, tmp_path / "run", perturbation)
    assert mismatch(got, read_golden("var_tiny")) != []
