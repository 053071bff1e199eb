"""Memory planner calibration: predicted vs measured memory of one training step (forward + backward).

CPU (default): fp32, world size 1, no optimizer. Measured with `mvar_dist.plan.measure` (a dispatch-mode
tracker of every tensor storage allocated inside the step: exact, deterministic). Parameters and
gradients exist before the measured step (it is the second one) and are counted exactly; the table
compares the step's activation peak and the total (params + grads + activation peak) with the
planner's `predict_step_bytes` (op back-end "reference": the torch CPU paths).

CUDA (`--device cuda`, when a GPU is there): the same step in the chosen dtype, measured with
torch.cuda.max_memory_allocated() minus the memory allocated before the step, compared with the
planner's "kernel" back-end (flash/flex attention, mamba-ssm scan when installed).

    python benchmarks/memory_plan.py                          # tiny presets + two larger held-out shapes
    python benchmarks/memory_plan.py --device cuda --dtype bf16 --configs mvar_d12 var_d12 --batch 8
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from mvar_dist.config import load_config
from mvar_dist.plan.memory import predict_step_bytes
from mvar_dist.plan.measure import measure_step
from mvar_dist.plan.shapes import build_meta_model, shapes_of

# Held-out shapes (not used to choose any term): wider/deeper tiny models, more scales.
HELD_OUT = {
    "mvar_wide": ("mvar_tiny", ["model.width=128", "model.num_heads=4", "model.depth=3",
                                "tokenizer.patch_nums=[1,2,3,4,6,8]", "tokenizer.resolution=128"]),
    "var_wide": ("var_tiny", ["model.width=128", "model.num_heads=4", "model.depth=3",
                              "tokenizer.patch_nums=[1,2,3,4,6,8]", "tokenizer.resolution=128"]),
}


def _cfg(name):
    base, overrides = HELD_OUT.get(name, (name, []))
    cfg = load_config(base, overrides)
    return dataclasses.replace(cfg, name=name)


def measure_cuda(cfg, micro_batch: int, act_checkpoint: bool, dtype: torch.dtype) -> dict:
    from mvar_dist.model import MVAR
    from mvar_dist.plan.measure import _loss

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, act_checkpoint=act_checkpoint))
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = MVAR.from_config(cfg).to(dev, dtype).train()
    tok = cfg.tokenizer
    L = sum(p * p for p in tok.patch_nums)
    labels = torch.randint(0, cfg.model.num_classes, (micro_batch,), device=dev)
    teacher = torch.randn(micro_batch, L - tok.patch_nums[0] ** 2, tok.z_channels, device=dev, dtype=dtype)
    target = torch.randint(0, tok.vocab_size, (micro_batch, L), device=dev)
    for measured in (False, True):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        logits = model(labels, teacher)
        _loss(logits, target).backward()
        del logits
        torch.cuda.synchronize()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": params, "grads": params, "peak": torch.cuda.max_memory_allocated() - base}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=["mvar_tiny", "var_tiny", "mvar_wide", "var_wide"])
    ap.add_argument("--batch", type=int, nargs="*", default=[4, 16])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    a = ap.parse_args(argv)
    if a.device == "cpu" and a.dtype != "fp32":
        ap.error("the CPU calibration runs in fp32")
    impl = "reference" if a.device == "cpu" else "kernel"
    print(f"device {a.device}, {a.dtype}, planner back-end {impl!r}; MiB; error = predicted / measured - 1")
    head = (f"{'config':<11}{'ckpt':>5}{'B':>4}{'act meas':>10}{'act pred':>10}{'err':>8}"
            f"{'total meas':>12}{'total pred':>12}{'err':>8}")
    print(head)
    print("-" * len(head))
    mib = 1024 ** 2
    worst = 0.0
    for name in a.configs:
        cfg = _cfg(name)
        shapes = shapes_of(build_meta_model(cfg))
        for ck in (False, True):
            for B in a.batch:
                if a.device == "cpu":
                    m = measure_step(cfg, B, ck)
                else:
                    m = measure_cuda(cfg, B, ck, {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype])
                p = predict_step_bytes(shapes, B, ck, a.dtype, impl)
                act_err = p["peak"] / m["peak"] - 1
                tm, tp = m["params"] + m["grads"] + m["peak"], p["params"] + p["grads"] + p["peak"]
                worst = max(worst, abs(act_err))
                print(f"{name:<11}{'on' if ck else 'off':>5}{B:>4}{m['peak'] / mib:>10.2f}{p['peak'] / mib:>10.2f}"
                      f"{100 * act_err:>+7.1f}%{tm / mib:>12.2f}{tp / mib:>12.2f}{100 * (tp / tm - 1):>+7.1f}%")
    print(f"worst activation-peak error: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
