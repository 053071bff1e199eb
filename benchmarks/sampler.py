"""Incremental vs recompute sampler speed for M-VAR at d16 width (C=1024, 16 heads, Mamba2 headdim 64)
and a few depths: the ratio the stateful sampler buys, measurable on a CPU.

    python benchmarks/sampler.py                         # CPU: depths 1 and 2, batch 2, VQVAE ch 32
    python benchmarks/sampler.py --device cuda --depths 16 --batch 32 --vae-ch 160 --dtype bf16

Both samplers draw the same ids (tests/test_sampler.py); cfg 1.5, top-k 900, top-p 0.96, decode included.
"""
from __future__ import annotations

import argparse
import time

import torch

from mvar_dist.config import ModelConfig
from mvar_dist.config.schema import DEFAULT_PATCH_NUMS
from mvar_dist.model import MVAR
from mvar_dist.vqvae import MultiScaleVQVAE


def seconds(model, vae, labels, incremental, dtype, device) -> float:
    def once():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model.sample(vae, labels, cfg_scale=1.5, top_k=900, top_p=0.96, seed=0, incremental=incremental)
        if device.type == "cuda":
            torch.cuda.synchronize()
    once()  # warm-up
    t0 = time.perf_counter()
    once()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--depths", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--width", type=int, default=1024, help="d16 width")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--vae-ch", type=int, default=32, help="VQVAE base channels (160 = the official tokenizer)")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    vae = MultiScaleVQVAE.random(seed=0, vocab_size=4096, ch=args.vae_ch, patch_nums=DEFAULT_PATCH_NUMS).to(device)
    labels = torch.arange(args.batch, device=device) % 1000
    print(f"M-VAR width {args.width}, batch {args.batch}, {args.dtype}, {device}")
    print("| depth | incremental img/s | recompute img/s | speed-up |\n|---:|---:|---:|---:|")
    for depth in args.depths:
        cfg = ModelConfig(arch="mvar", depth=depth, width=args.width, num_heads=args.width // 64, drop_path_rate=0.0)
        model = MVAR(cfg, DEFAULT_PATCH_NUMS, 4096, 32)
        model.init_weights()
        model = model.to(device).eval()
        inc = seconds(model, vae, labels, True, dtype, device)
        rec = seconds(model, vae, labels, False, dtype, device)
        print(f"| {depth} | {args.batch / inc:.3f} | {args.batch / rec:.3f} | {rec / inc:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
