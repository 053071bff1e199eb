"""`python -m mvar_dist plan`: will a config fit on N GPUs of M GiB, at what micro batch and speed."""
from __future__ import annotations

import argparse
import json
import sys

from mvar_dist.config.numbers import cli_number

from .memory import MemoryPlan, PlanError, PlanSettings, make_plan
from .shapes import build_meta_model, shapes_of, tokenizer_param_count


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="preset name or YAML path (e.g. mvar_d30)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides such as optim.global_batch=512")
    p.add_argument("--gpus", type=cli_number(int, lo=0, lo_open=True), required=True, help="number of GPUs (ZeRO-3 world size)")
    p.add_argument("--gpu-mem-gib", type=cli_number(float, lo=0, lo_open=True), required=True, help="memory per GPU in GiB (e.g. 80)")
    p.add_argument("--micro-batch", type=cli_number(int, lo=0), default=0,
                   help="images per GPU per forward; default: the config's, else the largest that fits")
    p.add_argument("--act-checkpoint", choices=("auto", "on", "off"), default="auto",
                   help="activation checkpointing; auto = off if the micro batch fits without it")
    p.add_argument("--mfu", type=cli_number(float, lo=0, hi=1, lo_open=True), default=0.4, help="model FLOPs utilisation for the step time")
    p.add_argument("--peak-tflops", type=cli_number(float, lo=0, lo_open=True), default=312.0,
                   help="dense bf16 peak per GPU in TFLOP/s (A100 312, H100/H200 989)")
    p.add_argument("--headroom", type=cli_number(float, lo=0, hi=1, hi_open=True), default=0.10,
                   help="fraction of GPU memory kept free for allocator fragmentation")
    p.add_argument("--reserve-gib", type=cli_number(float, lo=0), default=1.5, help="CUDA context + NCCL + workspace, GiB")
    p.add_argument("--ops", choices=("kernel", "reference"), default="kernel",
                   help="whose saved tensors to count: GPU kernels (flash attention, mamba-ssm) or the torch "
                        "reference ops (no mamba-ssm installed / CPU)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _train_flops(model) -> float:
    from mvar_dist.model import flops

    fn = getattr(flops, "train_flops", None)
    if fn is None:
        return float(model.flops_per_image(train=True))
    try:  # train_flops(model_cfg, patch_nums, vocab_size, z_channels)
        return float(fn(model.cfg, model.patch_nums, model.vocab_size, model.z_channels))
    except TypeError:  # the older signature, train_flops(model)
        return float(fn(model))


def plan_from_args(a: argparse.Namespace) -> MemoryPlan:
    from mvar_dist.config import load_config

    cfg = load_config(a.config, a.overrides)
    model = build_meta_model(cfg)
    settings = PlanSettings(gpus=a.gpus, gpu_mem_gib=a.gpu_mem_gib, micro_batch=a.micro_batch,
                            act_checkpoint=a.act_checkpoint, mfu=a.mfu, peak_tflops=a.peak_tflops,
                            headroom=a.headroom, reserve_gib=a.reserve_gib, impl=a.ops)
    shapes = shapes_of(model, tokenizer_params=tokenizer_param_count(cfg))
    plan = make_plan(cfg, shapes, settings, _train_flops(model))
    if a.overrides:
        plan.config = f"{plan.config} [{' '.join(a.overrides)}]"
    return plan


_LABELS = {
    "params": "params (bf16, 1/N)", "grads": "grads (fp32 accumulation, 1/N)", "master_fp32": "fp32 master weights (1/N)",
    "adam_states": "AdamW exp_avg + exp_avg_sq (fp32, 1/N)", "gathered_params": "ZeRO-3 gathered params + prefetch",
    "grad_buckets": "ZeRO-3 gradient buffers (fp32 reduce)",
    "autocast_cache": "autocast 16-bit weight copies (whole model)", "tokenizer": "VQVAE tokenizer (fp32, whole)",
    "activations_saved": "activations saved (x micro batch)",
    "backward_peak_extra": "backward peak: logits / recompute (x micro)", "reserve": "CUDA context + NCCL reserve",
}


def format_plan(p: MemoryPlan) -> str:
    dt = p.precision
    lines = [f"{p.config} ({p.arch}, {p.num_params / 1e9:.3f} B params) on {p.gpus} x {p.gpu_mem_gib:g} GiB, "
             f"ZeRO-3, {dt}, activation checkpointing {'on' if p.act_checkpoint else 'off'}", "",
             f"{'per-rank memory at micro batch ' + str(p.micro_batch):<48}{'GiB':>10}", "-" * 58]
    for k, v in p.per_rank_gib.items():
        label = _LABELS.get(k, k)
        if dt != "bf16":
            label = label.replace("bf16", "fp32" if dt in ("fp16", "bf16-autocast") else dt)
        lines.append(f"{label:<48}{v:>10.2f}")
    lines += ["-" * 58, f"{'total':<48}{p.total_gib:>10.2f}",
              f"{'usable (GPU memory minus headroom)':<48}{p.usable_gib:>10.2f}", "",
              f"{'activations per image':<48}{'MiB':>10}", "-" * 58]
    for k, v in p.activation_per_image_mib.items():
        lines.append(f"{k.replace('_', ' '):<48}{v:>10.1f}")
    lines += ["", f"largest micro batch that fits: {p.max_micro_batch}",
              f"chosen: micro batch {p.micro_batch} x {p.gpus} GPUs x {p.grad_accum} accumulation "
              f"= global batch {p.global_batch}",
              f"step time: {p.step_time_s:.2f} s ({p.images_per_s:.0f} images/s) from "
              f"{p.train_flops_per_image / 1e12:.2f} TFLOP/image"]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def main(a: argparse.Namespace) -> int:
    from mvar_dist.config import ConfigError

    try:
        plan = plan_from_args(a)
    except (ConfigError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(plan.to_dict(), indent=1))
    else:
        print(format_plan(plan))
    return 0
