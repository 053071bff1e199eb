"""30-step drift of each precision mode from exact fp32, through the real launcher (1 rank, CPU).

    python benchmarks/precision_drift.py [--config mvar_tiny --steps 30 --out outputs/bench/drift]

Each mode trains the same run (same seed, data, recipe) as optim.precision=fp32; the table shows the
largest and the last per-step relative difference of the loss and of the gradient norm. The lr is
raised (optim.tblr=0.05) so that 30 steps move the weights: with the tiny recipe's lr the drift is
only the forward rounding. Token shards are made by tests/test_train_loop.py's helper (the embedded
dataset through the run's random tokenizer).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODES = ("fp32", "bf16", "bf16-autocast", "fp16")


def run(mode: str, config: str, steps: int, shards: Path, out: Path) -> np.ndarray:
    if not (out / "metrics.jsonl").is_file():
        cmd = [sys.executable, str(REPO / "launchers/train.py"), "--config", config, f"optim.max_steps={steps}",
               "optim.tblr=0.05", "ckpt.every_steps=100000", f"optim.precision={mode}", f"data.shards={shards}",
               f"out_dir={out}"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return np.array([[r["loss"], r["grad_norm"]] for r in recs])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mvar_tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="outputs/bench/drift")
    a = p.parse_args(argv)
    out = Path(a.out) / a.config
    shards = out / "tok" / "shards"
    if not shards.is_dir():
        sys.path.insert(0, str(REPO / "tests"))
        from test_train_loop import _make_token_shards

        (out / "tok").mkdir(parents=True, exist_ok=True)
        _make_token_shards(out / "tok")
    traj = {m: run(m, a.config, a.steps, shards, out / m) for m in MODES}
    ref = traj["fp32"]
    print(f"{a.config}, {a.steps} steps, 1 rank, CPU; relative difference from fp32")
    print(f"{'mode':<15}{'loss max':>11}{'loss last':>11}{'gnorm max':>11}{'gnorm last':>11}")
    for m in MODES[1:]:
        rel = np.abs(traj[m] - ref) / np.abs(ref)
        print(f"{m:<15}{rel[:, 0].max():>11.2e}{rel[-1, 0]:>11.2e}{rel[:, 1].max():>11.2e}{rel[-1, 1]:>11.2e}")


if __name__ == "__main__":
    main()
