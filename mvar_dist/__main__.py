"""`python -m mvar_dist <command>`: doctor, config, presets, demo-data, plan, fd-demo."""
from __future__ import annotations

import argparse
import sys

from mvar_dist.config.numbers import cli_number


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from .errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m mvar_dist", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="report Python/torch/CUDA, optional accelerations and op code paths")
    c = sub.add_parser("config", help="print a resolved config (preset or YAML + dotted overrides)")
    c.add_argument("config", nargs="?", default=None, help="preset name or YAML path")
    c.add_argument("overrides", nargs="*", help="dotted overrides such as model.depth=16")
    sub.add_parser("presets", help="list the shipped presets")
    d = sub.add_parser("demo-data", help="write the embedded 10-class procedural ImageFolder")
    d.add_argument("root")
    d.add_argument("--per-class", type=cli_number(int, lo=0, lo_open=True), default=20)
    d.add_argument("--size", type=cli_number(int, lo=0, lo_open=True), default=256)
    d.add_argument("--seed", type=int, default=0)
    from .plan.cli import add_arguments as add_plan_arguments

    add_plan_arguments(sub.add_parser("plan", help="per-rank GPU memory, largest micro batch and step time "
                                                   "of a config on N GPUs (ZeRO-3)"))
    from .eval.fd_demo import add_arguments as add_fd_demo_arguments

    add_fd_demo_arguments(sub.add_parser("fd-demo", help="FD-demo and class consistency of a run's checkpoints "
                                                         "(embedded-dataset demos; not FID)"))
    a = p.parse_args(argv)

    if a.cmd == "fd-demo":
        from .eval.fd_demo import main as fd_demo

        return fd_demo(a)
    if a.cmd == "plan":
        from .plan.cli import main as plan

        return plan(a)
    if a.cmd == "doctor":
        from .doctor import main as doctor

        doctor()
    elif a.cmd == "presets":
        from .config import list_presets

        print("\n".join(list_presets()))
    elif a.cmd == "config":
        import yaml

        from .config import ConfigError, load_config, to_dict

        try:
            cfg = load_config(a.config, a.overrides)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    elif a.cmd == "demo-data":
        from .demo_data import main as demo_data

        demo_data([a.root, "--per-class", str(a.per_class), "--size", str(a.size), "--seed", str(a.seed)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
