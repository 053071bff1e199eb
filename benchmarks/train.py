"""Training throughput: img/s, MFU and peak memory per preset, ZeRO-3 with and without activation
checkpointing. Runs the real launcher (DeepSpeed engine, loader, tokenizer) on random token shards
and reads its metrics.jsonl; prints one table. Not part of the test suite.

    python benchmarks/train.py                                   # CPU: mvar_tiny, var_tiny, 1 process
    python benchmarks/train.py --presets mvar_d16 var_d16 mvar_d24 --nproc 1 --global_batch 32 --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_random_shards(root: Path, cfg, num_rows: int) -> Path:
    """Random ids in a valid shard set stamped with the run tokenizer's hash (throughput only)."""
    from mvar_dist.data.shards import MANIFEST_NAME, Manifest, ShardInfo, sha256_bytes
    from mvar_dist.data_pipeline.writer import shard_bytes
    from mvar_dist.vqvae import MultiScaleVQVAE

    tok = cfg.tokenizer
    vae = MultiScaleVQVAE.from_config(tok, seed=0)
    L = sum(p * p for p in tok.patch_nums)
    rng = np.random.default_rng(0)
    data = shard_bytes([f"img{i:06d}" for i in range(num_rows)], rng.integers(0, cfg.model.num_classes, num_rows),
                       np.zeros(num_rows), rng.integers(0, tok.vocab_size, (num_rows, L)))
    root.mkdir(parents=True, exist_ok=True)
    (root / "shard-00000.parquet").write_bytes(data)
    m = Manifest(tokenizer={"hash": vae.weights_hash(), "random_weights": True, "vocab_size": tok.vocab_size},
                 patch_nums=list(tok.patch_nums), resolution=tok.resolution,
                 variants={"count": 1, "seed": 0, "hflip": False, "scheme": "random"},
                 num_classes=cfg.model.num_classes,
                 shards=[ShardInfo("shard-00000.parquet", num_rows, sha256_bytes(data), len(data))], num_images=num_rows)
    (root / MANIFEST_NAME).write_text(m.to_json())
    return root


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(preset: str, act_ckpt: bool, args, work: Path) -> dict:
    from mvar_dist.config import load_config

    overrides = [f"optim.global_batch={args.global_batch}", f"optim.precision={args.precision}",
                 f"optim.max_steps={args.steps}", f"model.act_checkpoint={str(act_ckpt).lower()}",
                 "ckpt.every_steps=1000000", "ckpt.export_dtype=none", "log.log_every=1", "log.progress_bar=false",
                 "ckpt.resume=none", "data.num_workers=0"]
    if args.micro_batch:
        overrides.append(f"optim.micro_batch={args.micro_batch}")
    cfg = load_config(preset, overrides)
    shards = work / f"shards_{preset}"
    if not (shards / "manifest.json").is_file():
        write_random_shards(shards, cfg, args.global_batch * (args.steps + 1))
    out = work / f"run_{preset}_{int(act_ckpt)}"
    launch = [sys.executable, str(REPO / "launchers" / "train.py")]
    if args.nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                  "--master_addr", "127.0.0.1", "--master_port", str(_port()), str(REPO / "launchers" / "train.py")]
    cmd = [*launch, "--config", preset, *overrides, f"data.shards={shards}", f"out_dir={out}"]
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"), PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"preset": preset, "act_ckpt": act_ckpt, "error": (p.stderr or p.stdout).strip().splitlines()[-1][:120]}
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steady = recs[min(args.warmup, len(recs) - 1):]
    summary = json.loads((out / "summary.json").read_text())
    return {"preset": preset, "act_ckpt": act_ckpt, "params_M": summary["num_params"] / 1e6,
            "img_s": statistics.median(r["images_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") == steady[0].get("mfu") else None,
            "peak_mem_gb": max(r["peak_mem_gb"] for r in steady),
            "data_ms": 1000 * statistics.median(r["data_time"] for r in steady),
            "step_ms": 1000 * statistics.median(r["step_time"] for r in steady)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["mvar_tiny", "var_tiny"])
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--global_batch", type=int, default=8)
    ap.add_argument("--micro_batch", type=int, default=0)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="steps excluded from the medians")
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_train_"))
    rows = [run_one(p, ac, args, work) for p in args.presets for ac in (False, True)]
    print(f"\nZeRO-3 training throughput: {args.nproc} rank(s), global batch {args.global_batch}, {args.precision}, "
          f"median of steps {args.warmup + 1}..{args.steps}")
    print(f"{'preset':<12}{'act_ckpt':>9}{'params M':>10}{'img/s':>9}{'MFU':>8}{'peak GB':>9}{'step ms':>9}{'data ms':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<12}{str(r['act_ckpt']):>9}  error: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['preset']:<12}{str(r['act_ckpt']):>9}{r['params_M']:>10.2f}{r['img_s']:>9.1f}{mfu:>8}"
              f"{r['peak_mem_gb']:>9.2f}{r['step_ms']:>9.0f}{r['data_ms']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
