"""TokenLoader throughput on CPU: samples/s from local and S3 (moto on 127.0.0.1) token shards.

    .venv/bin/python benchmarks/loader.py [--images 4000] [--variants 2] [--global-batch 64] [--epochs 1]
                                          [--shuffle-window 1024] [--step-ms 0] [--no-s3]

Writes a synthetic dataset with the 256 px patch_nums (L = 680 tokens per row), then times whole epochs
for several (world size, rank, workers, storage) settings. For world size W only rank 0 is timed:
that is one rank's throughput (it reads the row groups its slice touches). Prints a table: samples/s
over all epochs (worker start-up and cold caches included) and over the epochs after the first (warm).
--step-ms N makes the consumer hold the GIL for N ms per batch, like the Python side of a training
step: the case where the in-process read-ahead thread competes with the trainer and workers do not.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def time_epochs(uri, args, world_size=1, workers=0, **kw):
    from mvar_dist.data import LoaderSettings, TokenLoader

    loader = TokenLoader(LoaderSettings(uri, args.global_batch, rank=0, world_size=world_size, num_workers=workers,
                                        vocab_size=4096, shuffle_window=args.shuffle_window, **kw))
    samples, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        if epoch == 1:
            warm_samples, t_warm = samples, time.perf_counter()
        for labels_B, _tokens_BL in loader:
            samples += len(labels_B)
            busy_until = time.perf_counter() + args.step_ms / 1e3
            while time.perf_counter() < busy_until:  # pure Python: holds the GIL, like a trainer step
                pass
    t_end = time.perf_counter()
    loader.close()
    warm = (samples - warm_samples) / (t_end - t_warm) if args.epochs > 1 else float("nan")
    return samples / (t_end - t0), warm


def start_moto():
    from moto.server import ThreadedMotoServer

    from s3_utils import TEST_ENV, free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(TEST_ENV)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--images-per-shard", type=int, default=500)
    ap.add_argument("--rows-per-group", type=int, default=256)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--shuffle-window", type=int, default=1024)
    ap.add_argument("--step-ms", type=float, default=0.0)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from shard_factory import write_token_shards

    layout = dict(num_images=args.images, variants=args.variants, patch_nums=PATCH_NUMS, vocab_size=4096,
                  images_per_shard=args.images_per_shard, rows_per_group=args.rows_per_group)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "tokens")
        write_token_shards(local, **layout)
        size_mb = sum(os.path.getsize(os.path.join(local, f)) for f in os.listdir(local)) / 2 ** 20
        for ws, workers in [(1, 0), (1, 1), (1, 2), (4, 0), (4, 2)]:
            rows.append(("local", ws, workers, *time_epochs(local, args, ws, workers)))
        if not args.no_s3:
            server = start_moto()
            try:
                s3 = "s3://bench/tokens"
                write_token_shards(s3, **layout)
                for ws, workers in [(1, 0), (1, 1), (1, 2)]:
                    rows.append(("s3", ws, workers, *time_epochs(s3, args, ws, workers)))
                cache = os.path.join(tmp, "cache")
                rows.append(("s3 + cache (cold)", 1, 0, *time_epochs(s3, args, 1, 0, cache_dir=cache)))
                rows.append(("s3 + cache (warm)", 1, 0, *time_epochs(s3, args, 1, 0, cache_dir=cache)))
            finally:
                server.stop()
    print(f"\n{args.images} images x {args.variants} variants, L=680, {size_mb:.1f} MiB of shards, "
          f"global batch {args.global_batch}, shuffle window {args.shuffle_window}, {args.epochs} epoch(s), "
          f"consumer step {args.step_ms} ms, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print(f"| {'storage':<18} | world size | workers | rank-0 samples/s | warm epochs samples/s |")
    print(f"|{'-' * 20}|------------|---------|------------------|-----------------------|")
    for storage, ws, workers, rate, warm in rows:
        print(f"| {storage:<18} | {ws:>10} | {workers:>7} | {rate:>16,.0f} | {warm:>21,.0f} |")


if __name__ == "__main__":
    main()
