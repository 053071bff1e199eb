"""SSD scan timings per sequence length: sequential recurrence, chunked torch reference, and each fast
path that can run here (mamba-ssm, our Triton kernels), forward and forward+backward.

    python benchmarks/ssd.py                         # CPU-sized defaults
    python benchmarks/ssd.py --batch 32 --heads 32 --lengths 256,680,1024 --dtype bf16   # d16 on a GPU

Prints one table; times are medians in milliseconds (peak memory on CUDA)."""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mvar_dist.ops.ssd import _mamba_fn, _triton_available, describe, ssd_chunked, ssd_sequential

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make(b, l, h, p, n, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, Bm, Cm = r(b, l, h, p), r(b, l, n), r(b, l, n)
    dt = torch.nn.functional.softplus(r(b, l, h) - 2.0)
    A, D, s0 = -torch.exp(r(h)), r(h), r(b, h, p, n)
    lo = [t.to(device, dtype) for t in (x, dt, A, Bm, Cm, D)]
    return lo + [s0.to(device)]


def timed(fn, iters, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(out), peak


def impls(device, chunk):
    out = {"chunked-ref": lambda *a, **k: ssd_chunked(*a, chunk_size=chunk, **k)}
    if device.type == "cuda" and _mamba_fn() is not None:
        fn = _mamba_fn()

        def mamba(x, dt, A, B, C, D, s0, return_final_states=True):
            return fn(x, dt, A.float(), B.unsqueeze(2), C.unsqueeze(2), chunk, D=D, initial_states=s0,
                      return_final_states=return_final_states)

        out["mamba-ssm"] = mamba
    if (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") and _triton_available():
        from mvar_dist.ops.triton_ssd import ssd_triton

        out["triton (ours)"] = lambda *a, **k: ssd_triton(*a, chunk_size=chunk, **k)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--dstate", type=int, default=64)
    ap.add_argument("--lengths", default="64,256,680")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--sequential-max-len", type=int, default=64,
                    help="time the token-by-token recurrence only up to this length (it is slow)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    print(describe())
    print(f"device={device} dtype={args.dtype} B={args.batch} H={args.heads} P={args.headdim} "
          f"N={args.dstate} chunk={args.chunk} torch={torch.__version__} threads={torch.get_num_threads()}")
    hdr = f"{'L':>6} {'impl':<16} {'fwd ms':>10} {'fwd+bwd ms':>11} {'peak MiB':>9} {'max rel err':>12}"
    print(hdr)
    print("-" * len(hdr))
    for l in (int(v) for v in args.lengths.split(",")):
        ins = make(args.batch, l, args.heads, args.headdim, args.dstate, dtype, device)
        ref_y = ssd_chunked(*[t.float() for t in ins[:6]], ins[6], chunk_size=args.chunk)
        rows = dict(impls(device, args.chunk))
        if l <= args.sequential_max_len:
            rows = {"sequential": ssd_sequential, **rows}
        for name, fn in rows.items():
            y = fn(*ins, return_final_states=True)[0]
            err = ((y.float() - ref_y).abs().max() / ref_y.abs().max()).item()
            fwd, _ = timed(lambda: fn(*ins, return_final_states=True), args.iters, device)
            leaves = [t.detach().requires_grad_() for t in ins]

            def fwd_bwd():
                yy, ss = fn(*leaves, return_final_states=True)
                (yy.float().square().mean() + ss.float().square().mean()).backward()

            both, peak = timed(fwd_bwd, args.iters, device)
            print(f"{l:>6} {name:<16} {fwd:>10.2f} {both:>11.2f} {peak:>9.0f} {err:>12.2e}")


if __name__ == "__main__":
    main()
