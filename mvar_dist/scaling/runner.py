"""Execute a sweep: local runs one after another (subprocesses), or one Ray job per run.

A run is complete when its `summary.json` exists (the trainer writes it last, atomically); complete
runs are skipped, so re-running a half-finished sweep runs only what is missing (and an interrupted
run resumes from its newest checkpoint through the trainer's `ckpt.resume=auto`). Each run folder
gets `sweep_run.json` (its spec and fingerprint) before training starts; a complete run whose
fingerprint no longer matches the sweep file is reported instead of silently reused.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from mvar_dist.fsio import write_json_atomic

from .sweep import RunSpec, Sweep, planned_steps, validate_runs

REPO = Path(__file__).resolve().parents[2]
SPEC_NAME = "sweep_run.json"


def is_complete(run_dir) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def stored_fingerprint(run_dir) -> Optional[str]:
    p = Path(run_dir) / SPEC_NAME
    return json.loads(p.read_text()).get("fingerprint") if p.is_file() else None


def _fill(argv: Sequence[str], values: Dict[str, str]) -> List[str]:
    try:
        return [a.format(**values) for a in argv]
    except KeyError as exc:
        raise ValueError(f"unknown placeholder {exc} in command {list(argv)} (known: {sorted(values)})") from None


def placeholders(sweep: Sweep, spec: RunSpec, python: str) -> Dict[str, str]:
    return {"python": python, "run_dir": spec.run_dir, "run_id": spec.run_id, "config": spec.preset,
            "out_root": sweep.out_root, "eval_dir": str(Path(sweep.out_root) / "eval"), "repo": str(REPO)}


def train_argv(sweep: Sweep, spec: RunSpec, python: str = sys.executable,
               command: Optional[Sequence[str]] = None) -> List[str]:
    """`<train command> --config <preset> <overrides...>` with placeholders filled in."""
    cmd = _fill(command or sweep.train_command, placeholders(sweep, spec, python))
    return cmd + ["--config", spec.preset, *spec.overrides]


# ------------------------------------------------------------------------------------------- plan
@dataclass
class PlanRow:
    spec: RunSpec
    params: int
    params_non_embedding: int
    steps: int
    images: int
    flops: float
    gpu_hours: float
    status: str          # "complete", "changed" (complete, other fingerprint), "partial" or "todo"


def plan(sweep: Sweep) -> List[PlanRow]:
    """Every run with its size and cost; validates each run's config (errors name run and key)."""
    from .params import count_params, flops_per_image

    rows = []
    for spec, cfg in validate_runs(sweep):
        p = count_params(cfg)
        steps = planned_steps(cfg, sweep.dataset_images)
        images = steps * cfg.optim.global_batch
        flops = flops_per_image(cfg, train=True) * images
        gpu_h = flops / (sweep.hardware.peak_tflops * 1e12 * sweep.hardware.mfu) / 3600.0
        rows.append(PlanRow(spec, p.total, p.non_embedding, steps, images, flops, gpu_h, run_status(spec)))
    return rows


def run_status(spec: RunSpec) -> str:
    if is_complete(spec.run_dir):
        fp = stored_fingerprint(spec.run_dir)
        return "changed" if fp is not None and fp != spec.fingerprint else "complete"
    return "partial" if (Path(spec.run_dir) / "metrics.jsonl").is_file() else "todo"


def format_plan(sweep: Sweep, rows: List[PlanRow]) -> str:
    hdr = f"{'run':<28} {'status':<9} {'params':>9} {'non-emb':>9} {'steps':>9} {'images':>11} {'FLOPs':>10} {sweep.hardware.name + '-h':>10}"
    lines = [f"sweep {sweep.name}: {len(rows)} runs -> {sweep.out_root}", hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(f"{r.spec.run_id:<28} {r.status:<9} {_si(r.params):>9} {_si(r.params_non_embedding):>9} "
                     f"{r.steps:>9} {r.images:>11} {r.flops:>10.3e} {r.gpu_hours:>10.1f}")
    todo = [r for r in rows if r.status not in ("complete", "changed")]
    lines.append(f"total: {sum(r.flops for r in rows):.3e} FLOPs, {sum(r.gpu_hours for r in rows):.1f} "
                 f"{sweep.hardware.name}-hours at {sweep.hardware.mfu:.0%} MFU of {sweep.hardware.peak_tflops:g} "
                 f"TFLOP/s; still to run: {len(todo)} runs, {sum(r.gpu_hours for r in todo):.1f} GPU-hours")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


# ------------------------------------------------------------------------------------- local runs
@dataclass
class RunReport:
    ran: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, int] = field(default_factory=dict)   # run id -> exit code
    changed: List[str] = field(default_factory=list)       # complete with another fingerprint (not rerun)
    submitted: Dict[str, str] = field(default_factory=dict)  # run id -> Ray submission id

    @property
    def ok(self) -> bool:
        return not self.failed and not self.changed


class LocalRunner:
    """Runs each incomplete run's training (then evaluation) as a subprocess, one after another.

    `train_command` / `eval_command` override the sweep file's commands (argv lists with
    {python}, {run_dir}, {run_id}, {config}, {out_root}, {eval_dir}, {repo} placeholders); the
    training argv gets `--config <preset> <overrides...>` appended. Output goes to the run folder's
    `train.log` / `eval.log`.
    """

    def __init__(self, sweep: Sweep, python: str = sys.executable, cwd: Optional[Path] = None,
                 train_command: Optional[Sequence[str]] = None, eval_command: Optional[Sequence[str]] = None,
                 env: Optional[Dict[str, str]] = None, log: Callable[[str], None] = print,
                 stop_on_error: bool = False):
        # Run folders are relative to the caller's cwd; the subprocess must see the same paths.
        self.sweep, self.python, self.cwd, self.log = sweep, python, Path(cwd or os.getcwd()), log
        self.train_command = train_command
        self.eval_command = eval_command if eval_command is not None else sweep.eval_command
        self.env = {**os.environ, **(env or {})}
        self.stop_on_error = stop_on_error

    def run(self, specs: Optional[Sequence[RunSpec]] = None) -> RunReport:
        specs = list(specs) if specs is not None else [s for s, _ in validate_runs(self.sweep)]
        report = RunReport()
        for spec in specs:
            status = run_status(spec)
            if status == "complete":
                report.skipped.append(spec.run_id)
                self.log(f"[sweep] {spec.run_id}: complete, skipped")
                continue
            if status == "changed":
                report.changed.append(spec.run_id)
                self.log(f"[sweep] {spec.run_id}: finished with another config (fingerprint "
                         f"{stored_fingerprint(spec.run_dir)} != {spec.fingerprint}); delete {spec.run_dir} "
                         f"to rerun it or give the budget a new name")
                continue
            rc = self._run_one(spec)
            if rc == 0:
                report.ran.append(spec.run_id)
            else:
                report.failed[spec.run_id] = rc
                if self.stop_on_error:
                    break
        return report

    def _run_one(self, spec: RunSpec) -> int:
        run_dir = Path(spec.run_dir)
        if not run_dir.is_absolute() and self.cwd.resolve() != Path.cwd().resolve():
            raise ValueError(f"run folder {run_dir} is relative but the runner's cwd {self.cwd} is not the current "
                             f"directory; give the sweep an absolute out_root")
        write_json_atomic(run_dir / SPEC_NAME, spec.to_dict(), mkdir=True)
        argv = train_argv(self.sweep, spec, self.python, self.train_command)
        self.log(f"[sweep] {spec.run_id}: training ({'resuming' if run_status(spec) == 'partial' else 'new'}) "
                 f"-> {run_dir / 'train.log'}")
        t0 = time.time()
        rc = self._call(argv, run_dir / "train.log")
        if rc != 0:
            self.log(f"[sweep] {spec.run_id}: training failed (exit {rc}); see {run_dir / 'train.log'}")
            return rc
        if not is_complete(run_dir):
            self.log(f"[sweep] {spec.run_id}: training exited 0 but wrote no summary.json (stopped early?)")
            return -1
        self.log(f"[sweep] {spec.run_id}: trained in {time.time() - t0:.1f}s")
        if self.eval_command:
            argv = _fill(self.eval_command, placeholders(self.sweep, spec, self.python))
            rc = self._call(argv, run_dir / "eval.log")
            if rc != 0:
                self.log(f"[sweep] {spec.run_id}: evaluation failed (exit {rc}); see {run_dir / 'eval.log'}")
                return rc
        return 0

    def _call(self, argv: List[str], log_path: Path) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            return subprocess.call(argv, cwd=self.cwd, env=self.env, stdout=f, stderr=subprocess.STDOUT)
