"""The `launchers/pretokenize.py` command line (kept here so the launcher file stays a thin shim)."""
from __future__ import annotations

import argparse
import os
import sys

from mvar_dist.config.numbers import cli_number

USAGE = """Pre-tokenise images into multi-scale token shards with a Ray Data job.

Local:   python launchers/pretokenize.py --config demo --source outputs/demo_data --dest outputs/demo/shards
Cluster: ray job submit --address http://HEAD:8265 -- python launchers/pretokenize.py --config mvar_d16 \\
             --source s3://bucket/imagenet/train --dest s3://bucket/tokens/d16 --num-actors 8 --num-gpus 1
Verify:  python launchers/pretokenize.py --verify --dest outputs/demo/shards
Trailing key=value arguments are config overrides (e.g. tokenizer.checkpoint=vae_ch160v4096z32.pth)."""


def parse(argv):
    p = argparse.ArgumentParser(prog="launchers/pretokenize.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mvar_d16", help="preset name or YAML (tokenizer + data sections are used)")
    p.add_argument("--source", help="ImageFolder dir, dir of .tar shards, or s3:// prefix (default data.image_root)")
    p.add_argument("--dest", help="local dir or s3:// prefix for the shards (default data.shards)")
    p.add_argument("--variants", type=cli_number(int, lo=0, lo_open=True), help="crop/flip variants per image (default data.variants)")
    p.add_argument("--seed", type=int, help="variant seed (default the config's seed)")
    p.add_argument("--hflip", action="store_true", default=None, help="allow horizontal flips in variants >= 1")
    p.add_argument("--order-seed", type=int, default=0,
                   help="seed of the permutation that deals images to shards (class-mixed shards)")
    p.add_argument("--images-per-shard", type=cli_number(int, lo=0, lo_open=True), default=1000)
    p.add_argument("--row-group-size", type=cli_number(int, lo=0, lo_open=True), default=1024)
    p.add_argument("--batch-size", type=cli_number(int, lo=0, lo_open=True), default=32, help="crops per encoder call")
    p.add_argument("--num-actors", type=cli_number(int, lo=0, lo_open=True), default=1, help="encoder actors (one tokenizer each)")
    p.add_argument("--actor-cpus", type=cli_number(float, lo=0, lo_open=True), default=0.5, help="CPUs per encoder actor (fractional is fine)")
    p.add_argument("--read-cpus", type=cli_number(float, lo=0, lo_open=True), default=0.5, help="CPUs per decode task")
    p.add_argument("--num-gpus", type=cli_number(float, lo=-1), default=-1.0,
                   help="GPUs per encoder actor (0 = CPU; default -1 = one actor per GPU when the cluster has GPUs)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on GPU (faster; ids may differ on near-ties)")
    p.add_argument("--min-side", type=cli_number(int, lo=0, lo_open=True), default=32, help="reject images whose shorter side is below this")
    p.add_argument("--non-rgb", choices=("convert", "reject"), default="convert",
                   help="grayscale/CMYK/RGBA inputs: convert to RGB like the official loader, or reject")
    p.add_argument("--limit", type=cli_number(int, lo=0), default=0, help="only the first N images (0 = all)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL / AWS config)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset made with other inputs/settings")
    p.add_argument("--no-check-sha", action="store_true", help="on resume, trust finished shards by size only")
    p.add_argument("--verify", action="store_true", help="only check every shard's checksum and row count")
    p.add_argument("--progress-every", type=cli_number(float, lo=0, lo_open=True), default=10.0, help="seconds between progress lines")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local runtime)")
    p.add_argument("--num-cpus", type=cli_number(int, lo=0), default=0, help="CPUs of the local runtime (0 = all)")
    p.add_argument("--ray-temp-dir", help="temp dir of the local runtime")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def main(argv=None, hooks=None) -> int:
    """hooks: an optional JobHooks for the job (tests/helpers/pretokenize_killed_after.py).

    Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(lambda av: _main(av, hooks), argv)


def _main(argv, hooks) -> int:
    a = parse(argv)
    from mvar_dist.data_pipeline import JobHooks, TokenizeOptions, VariantSpec, tokenize, verify

    if a.verify:
        from mvar_dist.config import load_config

        dest = a.dest or load_config(a.config, a.overrides).data.shards
        problems = verify(dest, a.s3_endpoint)
        for line in problems:
            print(f"[verify] {line}")
        print(f"[verify] {dest}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
        return 0 if not problems else 1

    from mvar_dist.config import load_config

    cfg = load_config(a.config, a.overrides)
    spec = VariantSpec(count=a.variants or cfg.data.variants, seed=cfg.seed if a.seed is None else a.seed,
                       hflip=cfg.data.hflip if a.hflip is None else a.hflip, resolution=cfg.tokenizer.resolution,
                       min_side=a.min_side, non_rgb=a.non_rgb)
    opts = TokenizeOptions(
        source=a.source or cfg.data.image_root, dest=a.dest or cfg.data.shards, variants=spec,
        images_per_shard=a.images_per_shard, row_group_size=a.row_group_size, batch_size=a.batch_size,
        num_actors=a.num_actors, actor_cpus=a.actor_cpus, read_cpus=a.read_cpus, num_gpus=a.num_gpus, tf32=a.tf32,
        s3_endpoint=a.s3_endpoint, overwrite=a.overwrite, check_sha=not a.no_check_sha,
        progress_every=a.progress_every, limit=a.limit, order_seed=a.order_seed)
    if not opts.source or not opts.dest:
        print("error: give --source and --dest (or data.image_root / data.shards in the config)", file=sys.stderr)
        return 2

    import ray

    address = a.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=a.num_cpus or os.cpu_count(), include_dashboard=False,
                 _temp_dir=a.ray_temp_dir, log_to_driver=False)
    try:
        tokenize(cfg.tokenizer, opts, log=lambda s: print(s, flush=True), hooks=hooks or JobHooks())
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    return 0

