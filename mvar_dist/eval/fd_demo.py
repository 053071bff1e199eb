"""FD-demo for the checkpoints of a run: an offline quality number for the embedded-dataset demos.

    python -m mvar_dist fd-demo <run dir> --eval-dir <dir> [--judge classifier.safetensors] [--per-class 10]

For every complete checkpoint of the run it samples `--per-class` images per class with the run's
`eval` settings and writes one row to `<eval dir>/fd_demo.csv`: FD-demo (the Frechet distance of the
demo classifier's features of the samples vs real images, `mvar_dist.eval.demo_judge`) and the class
consistency. It needs no download. FD-demo is not FID and is never reported as FID: other networks,
other images, a 64-d feature space. Rows are keyed by checkpoint id `<run>/step_XXXXXXXX` and the
protocol hash, so a re-run only evaluates new checkpoints.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List

from mvar_dist.config.numbers import cli_number

from mvar_dist.eval.results import KeyedCsvTable, best_per_checkpoint

TABLE_NAME = "fd_demo.csv"
COLUMNS = ["checkpoint_id", "protocol_hash", "fd_demo", "class_consistency", "num_samples", "judge"]
DEFAULT_JUDGE = "outputs/demo/judge/classifier.safetensors"  # where `make demo` leaves its judge


class FdDemoTable(KeyedCsvTable):
    def __init__(self, eval_dir):
        super().__init__(Path(eval_dir) / TABLE_NAME, COLUMNS, kind="FD-demo results")


def read_fd_demo(eval_dir: Path) -> Dict[str, Dict[str, str]]:
    """checkpoint id -> its FD-demo row (the most samples wins when several protocols exist)."""
    table = FdDemoTable(eval_dir)
    return best_per_checkpoint(table.rows()) if table.path.is_file() else {}


def protocol_hash(judge_sha: str, per_class: int, seed: int, sampling: Dict) -> str:
    blob = json.dumps({"judge": judge_sha, "per_class": per_class, "seed": seed, "sampling": sampling},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_run(run_dir: Path, eval_dir: Path, judge_path: Path, per_class: int = 10, seed: int = 0,
                 log=print) -> List[Dict[str, object]]:
    """FD-demo rows for the run's complete checkpoints that the table lacks; returns the new rows."""
    from mvar_dist.config import load_config
    from mvar_dist.eval.demo_judge import judge_checkpoint, load_or_train
    from mvar_dist.fsio import sha256_file
    from mvar_dist.runs.layout import checkpoint_id, ckpt_root, list_checkpoints, step_of

    run_dir = Path(run_dir)
    judge, _ = load_or_train(Path(judge_path), progress=log)
    judge_sha = sha256_file(judge_path)[:16]
    table = FdDemoTable(eval_dir)
    new = []
    for ckpt in list_checkpoints(Path(ckpt_root(run_dir))):
        ev = load_config(ckpt / "config.yaml").eval
        sampling = {"cfg_scale": ev.cfg_scale, "top_k": ev.top_k, "top_p": ev.top_p}
        key = (checkpoint_id(run_dir.name, step_of(ckpt)), protocol_hash(judge_sha, per_class, seed, sampling))
        if table.has(*key):
            continue
        verdict = judge_checkpoint(ckpt, judge, per_class=per_class, seed=seed)
        row = {"checkpoint_id": key[0], "protocol_hash": key[1], "fd_demo": f"{verdict['fd_demo']:.6g}",
               "class_consistency": f"{verdict['consistency']:.4f}", "num_samples": verdict["num_samples"],
               "judge": judge_sha}
        table.upsert(row)
        log(f"[fd-demo] {key[0]}: FD-demo {verdict['fd_demo']:.3f}, class consistency {verdict['consistency']:.0%}")
        new.append(row)
    return new


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a training run folder (its config.yaml names ckpt.dir; default checkpoints/)")
    p.add_argument("--eval-dir", required=True, help=f"folder of the {TABLE_NAME} table")
    p.add_argument("--judge", default=DEFAULT_JUDGE,
                   help=f"demo classifier file; trained and saved there when absent (default {DEFAULT_JUDGE})")
    p.add_argument("--per-class", type=cli_number(int, lo=0, lo_open=True), default=10, help="samples per class (default 10)")
    p.add_argument("--seed", type=int, default=0)


def main(a: argparse.Namespace) -> int:
    from mvar_dist.runs.layout import ckpt_root

    run_dir = Path(a.run_dir)
    root = ckpt_root(run_dir)
    if "://" in root:
        print(f"error: {run_dir}'s ckpt.dir {root} is not local; fd-demo reads local checkpoints", file=sys.stderr)
        return 2
    if not Path(root).is_dir():
        print(f"error: {run_dir} has no checkpoint folder ({root})", file=sys.stderr)
        return 2
    if a.per_class <= 0:
        print("error: --per-class must be positive", file=sys.stderr)
        return 2
    evaluate_run(run_dir, Path(a.eval_dir), Path(a.judge), a.per_class, a.seed)
    return 0
