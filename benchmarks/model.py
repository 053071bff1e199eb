"""Model benchmarks, printed as tables (never part of the test pass/fail).

1. Training: forward+backward images/s, achieved TFLOP/s (model FLOPs, see mvar_dist/model/flops.py)
   and peak memory, per architecture and depth.
2. Sampling: images/s for M-VAR (incremental stateful sampler and the official-style recompute) vs
   VAR (KV cache), cfg 1.5, top-k 900, top-p 0.96, VQVAE decode included.

    python benchmarks/model.py                                # CPU-sized defaults
    python benchmarks/model.py --device cuda --depths 16 20 24 --batch 32 --sample-batch 32 --vae-ch 160 --dtype bf16
"""
from __future__ import annotations

import argparse
import time

import torch

from mvar_dist.config import ModelConfig
from mvar_dist.config.schema import DEFAULT_PATCH_NUMS
from mvar_dist.model import MVAR
from mvar_dist.ops.attention import describe as attention_paths
from mvar_dist.ops.ssd import describe as ssd_path
from mvar_dist.vqvae import MultiScaleVQVAE


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> str:
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def build(arch: str, depth: int, args, device) -> MVAR:
    cfg = ModelConfig(arch=arch, depth=depth, width=args.width_per_depth * depth, num_heads=depth,
                      num_classes=1000, drop_path_rate=0.0, act_checkpoint=args.act_checkpoint)
    model = MVAR(cfg, args.patch_nums, args.vocab, 32)
    model.init_weights()
    return model.to(device)


def bench_train(model: MVAR, args, device, dtype) -> tuple:
    B = args.batch
    labels = torch.randint(0, 1000, (B,), device=device)
    x = torch.randn(B, model.L - model.first_l, 32, device=device)
    tgt = torch.randint(0, model.vocab_size, (B, model.L), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(labels, x).flatten(0, 1), tgt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.iters
    img_s = B / dt
    return img_s, img_s * model.flops_per_image(train=True) / 1e12, _peak(device)


def bench_sample(model: MVAR, vae, args, device, dtype, incremental: bool) -> float:
    labels = torch.arange(args.sample_batch, device=device) % 1000
    kw = dict(cfg_scale=1.5, top_k=900, top_p=0.96, seed=0, incremental=incremental)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model.sample(vae, labels, **kw)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.sample_iters):
            model.sample(vae, labels, **kw)
        _sync(device)
    return args.sample_batch * args.sample_iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--archs", nargs="+", default=["mvar", "var"])
    ap.add_argument("--depths", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--width-per-depth", type=int, default=64, help="width = this x depth (64 = official)")
    ap.add_argument("--patch-nums", dest="patch_nums", type=lambda s: tuple(int(p) for p in s.split(",")),
                    default=DEFAULT_PATCH_NUMS)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--act-checkpoint", action="store_true")
    ap.add_argument("--sample-batch", type=int, default=4)
    ap.add_argument("--sample-iters", type=int, default=1)
    ap.add_argument("--vae-ch", type=int, default=32, help="VQVAE base channels (160 = the official tokenizer)")
    ap.add_argument("--skip-sample", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    print(f"device {device}, {args.dtype}, patch_nums {args.patch_nums}, {ssd_path()}, {attention_paths(device, dtype)}")

    print("\n## training (forward + backward + AdamW step)")
    print(f"| arch | depth | params | batch | img/s | model TFLOP/s | peak mem |\n|---|---|---|---|---|---|---|")
    for depth in args.depths:
        for arch in args.archs:
            model = build(arch, depth, args, device)
            img_s, tflops, peak = bench_train(model, args, device, dtype)
            print(f"| {arch} | {depth} | {model.num_params() / 1e6:.1f}M | {args.batch} | {img_s:.2f} | "
                  f"{tflops:.3f} | {peak} |", flush=True)
            del model

    if args.skip_sample:
        return
    vae = MultiScaleVQVAE.random(seed=0, vocab_size=args.vocab, ch=args.vae_ch, patch_nums=args.patch_nums).to(device)
    print(f"\n## sampling (cfg 1.5, top-k 900, top-p 0.96, batch {args.sample_batch}, decode included, VQVAE ch {args.vae_ch})")
    print("| arch | depth | sampler | img/s |\n|---|---|---|---|")
    for depth in args.depths:
        for arch in args.archs:
            model = build(arch, depth, args, device).eval()
            modes = [("incremental", True)] + ([("recompute (official M-VAR)", False)] if model.spec.has_mamba else [])
            for name, inc in modes:
                print(f"| {arch} | {depth} | {name} | {bench_sample(model, vae, args, device, dtype, inc):.2f} |",
                      flush=True)
            del model


if __name__ == "__main__":
    main()
