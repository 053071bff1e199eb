"""Scaling-law sweeps: plan, run (locally or as Ray jobs), then table + fits + plots.

    python launchers/scaling_sweep.py plan var_mvar_scaling          # dry run: sizes, FLOPs, GPU-hours
    python launchers/scaling_sweep.py run cpu_demo                   # train missing runs, then analyse
    python launchers/scaling_sweep.py run cpu_demo --dry-run         # = plan
    python launchers/scaling_sweep.py run my_sweep.yaml --ray http://127.0.0.1:8265 --wait
    python launchers/scaling_sweep.py analyze cpu_demo               # results.csv, fits.json, plots/

A sweep is a YAML path or the name of a shipped one (configs/sweeps/<name>.yaml; `sweeps/<name>` works
too), from any working directory. Complete runs (summary.json present) are skipped.
Outputs: <out_root>/runs/<run_id>/, <out_root>/results.csv, <out_root>/fits.json, <out_root>/plots/.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mvar_dist.config.numbers import cli_number


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run", "analyze"):
        s = sub.add_parser(name)
        s.add_argument("sweep", help="sweep YAML path, or a shipped sweep name (e.g. cpu_demo)")
        s.add_argument("--out-root", default=None, help="override the sweep file's out_root")
        if name == "run":
            s.add_argument("--dry-run", action="store_true", help="print the plan and exit")
            s.add_argument("--train-cmd", default=None, help="training command (argv, shell-quoted; no shell is used)")
            s.add_argument("--eval-cmd", default=None, help="evaluation command run after each training")
            s.add_argument("--ray", default=None, metavar="ADDRESS", help="submit each run as a Ray job to ADDRESS")
            s.add_argument("--wait", action="store_true", help="with --ray: wait for the submitted jobs")
            s.add_argument("--stop-on-error", action="store_true")
            s.add_argument("--no-analyze", action="store_true", help="skip table/fits/plots afterwards")
        if name in ("run", "analyze"):
            s.add_argument("--n-boot", type=cli_number(int, lo=0, lo_open=True), default=500, help="bootstrap resamples for the power-law fits")
            s.add_argument("--entropy", type=cli_number(float, lo=0), default=None, help="token entropy (nats) for reducible loss")
    return p.parse_args(argv)


def analyze(sweep, n_boot: int, entropy) -> int:
    from mvar_dist.scaling.analyze import write_fits
    from mvar_dist.scaling.plots import plot_all
    from mvar_dist.scaling.results import load_curves, read_table, write_table

    table = write_table(sweep)
    rows = read_table(table)
    print(f"[sweep] results table: {table} ({len(rows)} rows)")
    fits = write_fits(table, Path(sweep.out_root) / "fits.json", entropy=entropy if entropy is not None else sweep.entropy,
                      n_boot=n_boot)
    for name, fit in sorted(fits.items()):
        if name == "skipped":
            continue
        d = fit.to_dict()
        desc = (f"alpha={d['alpha']:.4f} beta={d['beta'] if d['beta'] is None else format(d['beta'], '.4g')} "
                f"r={d['pearson_r']:.4f}" if "alpha" in d else
                f"E={d['E']:.4f} A={d['A']:.4g} a={d['a']:.3f} B={d['B']:.4g} b={d['b']:.3f}")
        print(f"[sweep] fit {name}: {desc}")
    for name, why in sorted(fits["skipped"].items()):
        print(f"[sweep] fit {name} skipped: {why}")
    print(f"[sweep] fits: {Path(sweep.out_root) / 'fits.json'}")
    paths = plot_all(rows, load_curves(sweep), fits, Path(sweep.out_root) / "plots")
    print(f"[sweep] plots: {', '.join(str(p) for p in paths if p.suffix == '.png')} (+ PDF)")
    return 0


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    args = parse(argv)
    from mvar_dist.config import ConfigError
    from mvar_dist.scaling.runner import LocalRunner, format_plan, plan
    from mvar_dist.scaling.sweep import SweepError, load_sweep

    try:
        sweep = load_sweep(args.sweep, out_root=args.out_root)
        if args.cmd == "plan" or (args.cmd == "run" and args.dry_run):
            print(format_plan(sweep, plan(sweep)))
            return 0
        if args.cmd == "analyze":
            return analyze(sweep, args.n_boot, args.entropy)
        train_cmd = shlex.split(args.train_cmd) if args.train_cmd else None
        eval_cmd = shlex.split(args.eval_cmd) if args.eval_cmd else None
        if args.ray:
            from mvar_dist.scaling.ray_jobs import RayRunner

            report = RayRunner(sweep, args.ray, train_command=train_cmd).run(wait=args.wait)
        else:
            report = LocalRunner(sweep, train_command=train_cmd, eval_command=eval_cmd,
                                 stop_on_error=args.stop_on_error).run()
    except (SweepError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[sweep] ran {len(report.ran)}, skipped {len(report.skipped)} complete, failed {len(report.failed)}"
          + (f", submitted {len(report.submitted)}" if report.submitted else "")
          + (f", changed {len(report.changed)}" if report.changed else ""))
    if not args.no_analyze and not (args.ray and not args.wait):
        analyze(sweep, args.n_boot, args.entropy)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
