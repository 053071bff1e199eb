"""Evaluation throughput on the available device: sampling img/s (sampler + decode) and Inception img/s.

    python benchmarks/eval.py                         # tiny M-VAR preset on CPU (random weights)
    python benchmarks/eval.py --config demo --batch 16 --inception-batch 32
    python benchmarks/eval.py --config mvar_d16 --batch 64 --device cuda --skip-sampling  # full size on a GPU

Random weights everywhere: the timing of the sampler and of the Inception forward does not depend on them.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_sampling(config: str, batch: int, iters: int, device: str):
    from mvar_dist.config import load_config
    from mvar_dist.eval.sampling import model_sample_fn
    from mvar_dist.model import MVAR
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config(config)
    model = MVAR.from_config(cfg).to(device).eval()
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).to(device).eval()
    fn = model_sample_fn(model, vae, cfg_scale=cfg.eval.cfg_scale, top_k=cfg.eval.top_k, top_p=cfg.eval.top_p)
    labels = torch.arange(batch) % cfg.model.num_classes
    fn(labels, torch.arange(batch))  # warm-up; per-image seeds
    _sync(device)
    t = time.perf_counter()
    for i in range(iters):
        fn(labels, torch.arange(batch) + (i + 1) * batch)
    _sync(device)
    return batch * iters / (time.perf_counter() - t), cfg.tokenizer.resolution


def bench_inception(batch: int, iters: int, size: int, device: str) -> float:
    from mvar_dist.eval.inception import FIDInceptionV3, random_state_dict

    net = FIDInceptionV3()
    net.load_checked(random_state_dict(0))
    net = net.to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        net(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            net(x)
        _sync(device)
    return batch * iters / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mvar_tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inception-batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = leave as is)")
    p.add_argument("--skip-sampling", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    size = 256
    if not a.skip_sampling:
        ips, size = bench_sampling(a.config, a.batch, a.iters, a.device)
        rows.append((f"sampling {a.config} (cfg, top-k/p, decode)", f"{size}px", a.batch, ips))
    ips = bench_inception(a.inception_batch, a.iters, size, a.device)
    rows.append(("FID-InceptionV3 features (pool+logits+spatial)", f"{size}px->299", a.inception_batch, ips))
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"\ndevice: {dev}, torch {torch.__version__}\n")
    print("| stage | input | batch | img/s |\n|---|---|---|---|")
    for name, inp, b, v in rows:
        print(f"| {name} | {inp} | {b} | {v:.2f} |")


if __name__ == "__main__":
    main()
