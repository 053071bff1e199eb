"""Tokenizer encoding throughput and low-precision token agreement.

    python benchmarks/tokenizer.py                      # full-size (ch 160, V 4096) at 256 px, CPU (+ GPU if present)
    python benchmarks/tokenizer.py --checkpoint vae_ch160v4096z32.pth --batch 64 --iters 5
    python benchmarks/tokenizer.py --small              # fixture-sized model (ch 32, V 1024): quick look

Prints two tables: images/s of `img_to_ids` per (device, precision), and for each low-precision
mode the fraction of ids equal to the fp32 ids, per scale. Random weights give random-looking
latents; agreement numbers are only meaningful with the real checkpoint (--checkpoint), where
nearby codes are genuinely close. Never part of the test pass/fail.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from typing import Dict, List, Tuple

import torch

from mvar_dist.ops.codebook import describe, nearest_code_chunked, nearest_code_reference
from mvar_dist.precision import set_tf32, tf32_enabled
from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.vqvae.weights import probe_image


def build(args) -> MultiScaleVQVAE:
    hp = dict(vocab_size=1024, ch=32) if args.small else dict(vocab_size=4096, ch=160)
    if args.checkpoint:
        return MultiScaleVQVAE.from_official(args.checkpoint, **hp)
    return MultiScaleVQVAE.random(seed=0, **hp)


@contextlib.contextmanager
def precision(device: str, mode: str):
    """fp32: TF32 off; tf32: TF32 matmul/conv (CUDA only); bf16: autocast bf16 for the encoder."""
    prev = tf32_enabled()
    set_tf32(mode == "tf32")
    try:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=(mode == "bf16")):
            yield
    finally:
        set_tf32(prev)


def run(vae: MultiScaleVQVAE, imgs: torch.Tensor, device: str, mode: str, iters: int, chunk: int
        ) -> Tuple[float, List[torch.Tensor]]:
    imgs = imgs.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode(), precision(device, mode):
        if device == "cuda":
            ids = vae.img_to_ids(imgs, chunk_size=chunk)  # warm-up (kernel selection, allocator)
            sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            ids = vae.img_to_ids(imgs, chunk_size=chunk)
        sync()
    dt = time.perf_counter() - t0
    return imgs.shape[0] * iters / dt, [t.cpu() for t in ids]


def codebook_table(device: str, vocab: int) -> List[Tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    z, e = torch.randn(64 * 680, 32, generator=g).to(device), torch.randn(vocab, 32, generator=g).to(device)
    rows = []
    for name, fn in (("reference", nearest_code_reference), ("chunked 64 MiB", lambda a, b: nearest_code_chunked(a, b, 64 << 20))):
        fn(z, e)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(z, e)
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append((name, z.shape[0] / (time.perf_counter() - t0)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="", help="official vae_ch160v4096z32.pth (default: random weights)")
    ap.add_argument("--small", action="store_true", help="ch 32 / V 1024 instead of the full-size tokenizer")
    ap.add_argument("--batch", type=int, default=0, help="images per call (default 2 on CPU, 64 on GPU)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=32, help="img_to_ids chunk_size")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--modes", default="fp32,bf16,tf32",
                    help="precisions to run (fp32 always first; tf32 only on CUDA; CPU bf16 is very slow "
                         "without native bf16 units)")
    args = ap.parse_args()

    vae = build(args)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    print(f"tokenizer: {vae.extra_repr()}  params {sum(p.numel() for p in vae.parameters()):,}  "
          f"weights {'checkpoint' if args.checkpoint else 'random(seed 0)'}  torch threads {torch.get_num_threads()}")
    speed: List[Tuple[str, str, int, float]] = []
    agree: Dict[Tuple[str, str], List[float]] = {}
    for device in devices:
        vae.to(device)
        B = args.batch or (2 if device == "cpu" else 64)
        imgs = torch.cat([probe_image(vae.resolution, seed=i) for i in range(B)])
        wanted = [m for m in args.modes.split(",") if m and m != "fp32"]
        modes = ["fp32"] + [m for m in wanted if m != "tf32" or device == "cuda"]
        ref_ids = None
        for mode in modes:
            ips, ids = run(vae, imgs, device, mode, args.iters, args.chunk)
            speed.append((device, mode, B, ips))
            if mode == "fp32":
                ref_ids = ids
            else:
                agree[(device, mode)] = [float((a == b).float().mean()) for a, b in zip(ids, ref_ids)]
        print(f"nearest-code dispatch on {device}: {describe(torch.device(device))}")
        for name, rows_s in codebook_table(device, vae.vocab_size):
            print(f"  nearest-code {name:<16} {rows_s:>14,.0f} rows/s  (V={vae.vocab_size}, C=32)")

    print("\nencode (img_to_ids), 256 px" if vae.resolution == 256 else f"\nencode (img_to_ids), {vae.resolution} px")
    print(f"{'device':<8}{'precision':<11}{'batch':>6}{'images/s':>12}")
    for device, mode, B, ips in speed:
        print(f"{device:<8}{mode:<11}{B:>6}{ips:>12.2f}")
    print("\ntoken agreement with fp32 (fraction of equal ids), scales coarse -> fine")
    print(f"{'device':<8}{'precision':<11}" + "".join(f"{'pn' + str(p):>8}" for p in vae.patch_nums) + f"{'all':>8}")
    for (device, mode), fr in agree.items():
        total = sum(f * p * p for f, p in zip(fr, vae.patch_nums)) / sum(p * p for p in vae.patch_nums)
        print(f"{device:<8}{mode:<11}" + "".join(f"{f:>8.4f}" for f in fr) + f"{total:>8.4f}")


if __name__ == "__main__":
    main()
