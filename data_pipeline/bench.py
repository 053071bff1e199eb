"""`benchmarks/pretokenize.py`: end-to-end job throughput, encoder throughput, ImageNet-1k estimates.

Prints tables; never part of the test pass/fail. The GPU encoder table needs only torch + this repo
(no Ray), so it runs on a bare GPU box.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

IMAGENET_TRAIN = 1_281_167


def _table(title, header, rows) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def bench_job(config: str, per_class: int, variants: int, actors: int, work: Path) -> dict:
    """The whole Ray job (list, decode, crop, encode, write) on the embedded dataset."""
    import ray

    from mvar_dist.config import load_config
    from mvar_dist.demo_data import write_dataset

    from .augment import VariantSpec
    from .job import TokenizeOptions, tokenize

    cfg = load_config(config)
    res = cfg.tokenizer.resolution
    src = write_dataset(work / f"img{res}", images_per_class=per_class, size=res * 2, seed=0)
    dest = work / f"tok-{config}-k{variants}-a{actors}"
    opts = TokenizeOptions(source=str(src), dest=str(dest), images_per_shard=max(1, per_class * 5),
                           variants=VariantSpec(count=variants, resolution=res), num_actors=actors,
                           progress_every=1e9, overwrite=True)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(work / "ray"))
    t0 = time.perf_counter()
    tokenize(cfg.tokenizer, opts, log=lambda s: None)
    wall = time.perf_counter() - t0
    m = json.loads((dest / "manifest.json").read_text())
    nbytes = sum(s["bytes"] for s in m["shards"])
    return {"config": config, "res": res, "images": m["num_images"], "K": variants, "actors": actors, "wall": wall,
            "img_s": m["num_images"] / wall, "crops_s": m["num_images"] * variants / wall,
            "bytes_per_row": nbytes / max(1, m["num_images"] * variants), "seq_len": sum(p * p for p in m["patch_nums"])}


def bench_encoder(device: str, batch_sizes, iters: int, tf32: bool) -> list:
    """img_to_ids alone with the full-size tokenizer (ch 160, V 4096, 256 px, random weights)."""
    import torch

    from mvar_dist.precision import set_tf32
    from mvar_dist.vqvae import MultiScaleVQVAE

    set_tf32(tf32)
    vae = MultiScaleVQVAE.random(seed=0).to(device).eval()
    out = []
    for bs in batch_sizes:
        x = torch.rand(bs, 3, 256, 256, device=device) * 2 - 1
        with torch.inference_mode():
            vae.img_to_ids(x)   # warm-up (cuDNN autotune, allocator)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                vae.img_to_ids(x)
            if device == "cuda":
                torch.cuda.synchronize()
        out.append({"device": device, "batch": bs, "tf32": tf32, "img_s": bs * iters / (time.perf_counter() - t0)})
    return out


def estimate_rows(crops_per_s_per_worker: float, bytes_per_row: float, seq_len: int, variants=(1, 4, 10),
                  workers=(1, 8, 32)) -> list:
    rows = []
    for k in variants:
        n = IMAGENET_TRAIN * k
        for w in workers:
            hours = n / (crops_per_s_per_worker * w) / 3600
            rows.append([k, f"{n / 1e6:.1f} M", w, f"{hours:.1f} h", f"{n * bytes_per_row / 1e9:.1f} GB",
                         f"{n * seq_len * 2 / 1e9:.1f} GB"])
    return rows


def run_benchmark(argv=None) -> int:
    p = argparse.ArgumentParser(description="Tokenisation throughput and ImageNet-1k estimates.")
    p.add_argument("--configs", default="mvar_tiny,demo,mvar_d16", help="presets for the end-to-end job")
    p.add_argument("--per-class", type=int, default=4, help="embedded images per class (10 classes)")
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--actors", default="1,2", help="encoder actor counts to try")
    p.add_argument("--gpu-batches", default="32,64,128")
    p.add_argument("--gpu-iters", type=int, default=10)
    p.add_argument("--skip-job", action="store_true", help="only the encoder table (e.g. on a bare GPU box)")
    a = p.parse_args(argv)
    import torch

    results = []
    if not a.skip_job:
        with tempfile.TemporaryDirectory(prefix="tokbench") as tmp:
            for config in a.configs.split(","):
                for actors in map(int, a.actors.split(",")):
                    results.append(bench_job(config, a.per_class, a.variants, actors, Path(tmp)))
            import ray

            ray.shutdown()
        load = os.getloadavg()[0]
        _table(f"End to end (Ray job, CPU, {os.cpu_count()} cores, load avg {load:.1f}, embedded dataset, "
               f"K={a.variants}; wall includes Ray actor start-up)",
               ["config", "px", "images", "actors", "wall s", "images/s", "crops/s", "bytes/row (zstd)"],
               [[r["config"], r["res"], r["images"], r["actors"], f"{r['wall']:.1f}", f"{r['img_s']:.2f}",
                 f"{r['crops_s']:.2f}", f"{r['bytes_per_row']:.0f}"] for r in results])
    enc = bench_encoder("cpu", [8], 2, False)
    if torch.cuda.is_available():
        for tf32 in (False, True):
            enc += bench_encoder("cuda", [int(b) for b in a.gpu_batches.split(",")], a.gpu_iters, tf32)
    _table("Encoder only (img_to_ids, full tokenizer ch160 V4096, 256 px, fp32)", ["device", "batch", "tf32", "images/s"],
           [[e["device"], e["batch"], e["tf32"], f"{e['img_s']:.1f}"] for e in enc])
    full = [r for r in results if r["seq_len"] == 680]
    bytes_row = max(r["bytes_per_row"] for r in full) if full else 680 * 2 * 1.0
    gpu = [e for e in enc if e["device"] == "cuda" and not e["tf32"]]
    speed, what = (max(e["img_s"] for e in gpu), "GPU encoder (fp32)") if gpu else (
        enc[0]["img_s"], "CPU encoder (whole box)")
    _table(f"ImageNet-1k ({IMAGENET_TRAIN:,} images) estimate from the {what} at {speed:.1f} crops/s per worker; "
           f"storage at {bytes_row:.0f} bytes/row measured on 256 px shards",
           ["K", "rows", "workers", "encode time", "shards (zstd)", "uncompressed"],
           estimate_rows(speed, bytes_row, 680))
    return 0
