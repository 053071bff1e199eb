"""Incremental vs recompute sampler speed for M-VAR at d16 width (C=1024, 16 heads, Mamba2 headdim 64)
and a few depths: the ratio the stateful sampler buys, measurable on a CPU.

    python benchmarks/sampler.py                         # CPU: depths 1 and 2, batch 2, VQVAE ch 32
    python benchmarks/sampler.py --device cuda --depths 16 --batch 32 --vae-ch 160 --dtype bf16
    python benchmarks/sampler.py --draw-only             # only the per-scale draw: batched vs per-row baseline

Both samplers draw the same ids (tests/unit/test_sampler.py); cfg 1.5, top-k 900, top-p 0.96, decode included.
The draw table times one scale's id draw (filter + draw, B rows of l=256 tokens, V=4096, per-image seeds): the
batched counter-based draw against the per-row baseline it replaced (one torch.Generator and one
torch.multinomial per row), and the Gumbel noise of more_smooth (per-row exponential_ vs one hash).
"""
from __future__ import annotations

import argparse
import time

import torch

from mvar_dist.config import ModelConfig
from mvar_dist.config.schema import DEFAULT_PATCH_NUMS
from mvar_dist.model import MVAR
from mvar_dist.model.noise import STREAM_GUMBEL, Noise
from mvar_dist.model.sampler import sample_ids, top_k_top_p_filter_
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


def _ms(fn, device, reps: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[reps // 2]


def draw_table(batch: int, device, l: int = 256, V: int = 4096) -> None:
    logits_BlV = torch.randn(batch, l, V, device=device, generator=torch.Generator(device).manual_seed(0)) * 3
    seeds_B = torch.arange(batch) + 1000
    noise = Noise.per_image(seeds_B, device)

    def per_row_ids(top_k=900, top_p=0.96):  # the replaced scheme, as a same-run baseline
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds_B.tolist()]
        probs_BlV = top_k_top_p_filter_(logits_BlV.clone(), top_k, top_p).softmax(dim=-1)
        return torch.stack([torch.multinomial(p, 1, generator=g).view(l) for p, g in zip(probs_BlV, gens)])

    def per_row_gumbel():
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds_B.tolist()]
        return torch.stack([torch.empty(l, V, device=device).exponential_(generator=g) for g in gens])

    rows = [("id draw (top-k 900, top-p 0.96)", _ms(per_row_ids, device),
             _ms(lambda: sample_ids(logits_BlV.clone(), 900, 0.96, noise, 9), device)),
            ("id draw, filters off (softmax + draw)", _ms(lambda: per_row_ids(0, 0.0), device),
             _ms(lambda: sample_ids(logits_BlV.clone(), 0, 0.0, noise, 9), device)),
            ("Gumbel noise", _ms(per_row_gumbel, device), _ms(lambda: noise.uniform_vocab(9, STREAM_GUMBEL, l, V), device))]
    print(f"one scale, B={batch}, l={l}, V={V}, {device}\n| step | per-row ms | batched ms |\n|---|---:|---:|")
    for name, old, new in rows:
        print(f"| {name} | {old:.1f} | {new:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--depths", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--width", type=int, default=1024, help="d16 width")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--vae-ch", type=int, default=32, help="VQVAE base channels (160 = the official tokenizer)")
    ap.add_argument("--draw-only", action="store_true", help="only the draw table")
    ap.add_argument("--draw-batch", type=int, default=32, help="rows of the draw table")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
    draw_table(args.draw_batch, device)
    if args.draw_only:
        return
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
