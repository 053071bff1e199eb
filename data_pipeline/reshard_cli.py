"""The `launchers/reshard.py` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="launchers/reshard.py",
                                description="Rewrite a token dataset into class-mixed shards (no re-encoding).")
    p.add_argument("--source", required=True, help="finished dataset (local dir or s3:// prefix); left untouched")
    p.add_argument("--dest", required=True, help="new dataset (local dir or s3:// prefix)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation that deals images to shards")
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--row-group-size", type=int, default=1024)
    p.add_argument("--work-dir", help="local scratch, about the dataset's size (default: the system temp dir)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL / AWS config)")
    p.add_argument("--overwrite", action="store_true", help="replace another finished dataset at --dest")
    a = p.parse_args(argv)
    from .reshard import ReshardOptions, reshard

    opts = ReshardOptions(source=a.source, dest=a.dest, seed=a.seed, images_per_shard=a.images_per_shard,
                          row_group_size=a.row_group_size, work_dir=a.work_dir, s3_endpoint=a.s3_endpoint,
                          overwrite=a.overwrite)
    try:
        reshard(opts, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
