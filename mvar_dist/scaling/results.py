"""The sweep's results table: one row per (run, checkpoint), rebuilt from the runs' own outputs.

Inputs per run folder (the trainer's layout): `metrics.jsonl` (one record per log step),
`summary.json` (written when the run finished), its complete checkpoints (under its ckpt.dir,
runs/layout.py); and the
evaluation tables `<out_root>/eval/eval_results.csv` (FID, IS) and `<out_root>/eval/fd_demo.csv`
(FD-demo, the embedded-dataset demos' offline distance; never FID), keyed by checkpoint id
`<run>/step_XXXXXXXX`.
Nothing in a row depends on when or how often the table is built, so a rebuild is byte-identical.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from mvar_dist.fsio import write_text_atomic
from mvar_dist.runs.layout import checkpoint_id, run_checkpoints

from .params import count_params, flops_per_image

TABLE_NAME = "results.csv"
EVAL_DIR = "eval"
BASE_COLUMNS = ["sweep", "run_id", "arch", "depth", "width", "budget", "seed", "checkpoint", "step", "is_final",
                "status", "params_total", "params_non_embedding", "flops_per_image", "images_seen", "tokens_seen",
                "train_flops", "loss", "L_mean", "L_tail", "err_mean", "err_tail"]
TAIL_COLUMNS = ["fid", "inception_score", "eval_protocol", "fd_demo", "class_consistency", "wall_time"]


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """Records of a jsonl file; a torn last line (a run killed mid-write) is ignored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def metrics_by_step(run_dir: Path) -> Dict[int, Dict[str, Any]]:
    """Last record per step (a resumed run may repeat steps after its checkpoint)."""
    return {int(r["step"]): r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "step" in r}


def complete_checkpoint_steps(run_dir: Path) -> List[int]:
    """Steps of the run's complete checkpoints, wherever its ckpt.dir is (local or s3://)."""
    return [c.step for c in run_checkpoints(run_dir)]


def read_summary(run_dir: Path) -> Optional[Dict[str, Any]]:
    p = Path(run_dir) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def read_eval(out_root: Path) -> Dict[str, Dict[str, str]]:
    """checkpoint id -> the evaluation row with the most samples (ties: smallest protocol hash)."""
    from mvar_dist.eval.results import best_per_checkpoint

    p = Path(out_root) / EVAL_DIR / "eval_results.csv"
    if not p.is_file():
        return {}
    with open(p, newline="") as f:
        return best_per_checkpoint(r for r in csv.DictReader(f) if r.get("fid") or r.get("inception_score"))


def _err(acc) -> Optional[float]:
    # The trainer logs accuracy in percent (VAR's Accm/Acct convention); the table stores error fractions.
    return None if acc is None else 1.0 - float(acc) / 100.0


def _at_or_before(records: Dict[int, Dict[str, Any]], step: int) -> Dict[str, Any]:
    prior = [s for s in records if s <= step]
    return records[max(prior)] if prior else {}


def run_rows(sweep, spec, evals: Dict[str, Dict[str, str]],
             fd_rows: Optional[Dict[str, Dict[str, str]]] = None) -> List[Dict[str, Any]]:
    run_dir = Path(spec.run_dir)
    if not run_dir.is_dir():
        return []
    records = metrics_by_step(run_dir)
    summary = read_summary(run_dir)
    steps = set(complete_checkpoint_steps(run_dir))
    final_step = int(summary["steps"]) if summary and summary.get("status") == "finished" else None
    if final_step is not None:
        steps.add(final_step)
    if not steps:
        return []
    cfg = spec.config()
    params = count_params(cfg)
    fpi = float(summary["flops_per_image"]) if summary and summary.get("flops_per_image") else flops_per_image(cfg)
    rows = []
    for step in sorted(steps):
        rec = records.get(step) or _at_or_before(records, step)
        ckpt_id = checkpoint_id(run_dir.name, step)
        ev, fd = evals.get(ckpt_id, {}), (fd_rows or {}).get(ckpt_id, {})
        images = int(rec.get("images_seen", step * cfg.optim.global_batch))
        row = {"sweep": sweep.name, "run_id": spec.run_id, "arch": spec.arch, "depth": spec.depth,
               "width": cfg.model.width, "budget": spec.budget, "seed": spec.seed, "checkpoint": ckpt_id,
               "step": step, "is_final": step == final_step, "status": "finished" if summary else "partial",
               "params_total": params.total, "params_non_embedding": params.non_embedding, "flops_per_image": fpi,
               "images_seen": images,
               "tokens_seen": int(rec.get("tokens_seen", images * sum(p * p for p in cfg.tokenizer.patch_nums))),
               "train_flops": float(rec.get("train_flops", fpi * images)),
               "loss": rec.get("loss"), "L_mean": rec.get("L_mean"), "L_tail": rec.get("L_tail"),
               "err_mean": _err(rec.get("acc_mean")), "err_tail": _err(rec.get("acc_tail")),
               "fid": _num(ev.get("fid")), "inception_score": _num(ev.get("inception_score")),
               "eval_protocol": ev.get("protocol_hash", ""), "fd_demo": _num(fd.get("fd_demo")),
               "class_consistency": _num(fd.get("class_consistency")), "wall_time": rec.get("wall_time")}
        for k, v in rec.items():
            if k.startswith("loss_scale_"):
                row[k] = v
        rows.append(row)
    return rows


def _num(v) -> Optional[float]:
    return float(v) if v not in (None, "") else None


def build_table(sweep) -> List[Dict[str, Any]]:
    """Rows for every run of the sweep that has a complete checkpoint or a summary, in sweep order."""
    from mvar_dist.eval.fd_demo import read_fd_demo

    evals = read_eval(Path(sweep.out_root))
    fd_rows = read_fd_demo(Path(sweep.out_root) / EVAL_DIR)
    rows = []
    for spec in sweep.runs():
        rows += run_rows(sweep, spec, evals, fd_rows)
    return rows


def table_columns(rows: List[Dict[str, Any]]) -> List[str]:
    scales = sorted({k for r in rows for k in r if k.startswith("loss_scale_")}, key=lambda k: int(k.rsplit("_", 1)[1]))
    return BASE_COLUMNS + scales + TAIL_COLUMNS


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form: stable across rebuilds
    return str(v)


def table_csv(rows: List[Dict[str, Any]]) -> str:
    cols = table_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def write_table(sweep, path: Optional[Path] = None) -> Path:
    """Rebuild `<out_root>/results.csv` from the runs' outputs (atomic replace)."""
    path = Path(path or Path(sweep.out_root) / TABLE_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, table_csv(build_table(sweep)))
    return path


def read_table(path) -> List[Dict[str, Any]]:
    """The CSV back as typed rows (numbers as float/int, booleans as bool, empty as None)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append({k: _parse(v) for k, v in row.items()})
    return out


def _parse(v: str):
    if v == "":
        return None
    if v in ("true", "false"):
        return v == "true"
    for tp in (int, float):
        try:
            return tp(v)
        except ValueError:
            pass
    return v


def load_curves(sweep) -> Dict[str, Dict[str, Any]]:
    """run id -> {arch, train_flops[], L_mean[]} from metrics.jsonl, for loss-vs-compute plots."""
    out = {}
    for spec in sweep.runs():
        recs = metrics_by_step(Path(spec.run_dir))
        pts = [(r["train_flops"], r["L_mean"]) for _, r in sorted(recs.items())
               if r.get("train_flops") and r.get("L_mean") is not None]
        if pts:
            out[spec.run_id] = {"arch": spec.arch, "depth": spec.depth, "train_flops": [p[0] for p in pts],
                                "L_mean": [p[1] for p in pts]}
    return out
