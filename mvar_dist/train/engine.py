"""DeepSpeed plumbing: the filled-in ZeRO-3 config, optimizer and engine (the process group: mvar_dist.distributed).

`configs/zero3.json` keeps the sizes that depend on the run as "auto"; `fill_ds_config` turns them
into numbers from the run config, the world size and the model width, and refuses combinations
DeepSpeed would only reject later with a less helpful message.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from mvar_dist.config import ConfigError, RunConfig, configs_dir
from mvar_dist.distributed import per_rank_batch

from .amp import install_official_amp

AUTO = "auto"


def default_ds_config_path() -> Path:
    return configs_dir() / "zero3.json"


def read_ds_config(path: Optional[str]) -> Dict[str, Any]:
    p = Path(path) if path else default_ds_config_path()
    if not p.is_file():
        raise ConfigError("ds_config", f"DeepSpeed config file not found: {p}")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError("ds_config", f"{p} is not valid JSON: {e}") from e


def batch_split(global_batch: int, micro_batch: int, world_size: int) -> tuple:
    """(micro batch per rank, gradient accumulation steps) for a fixed global batch."""
    per_rank = per_rank_batch(global_batch, world_size, lambda: ConfigError(
        "optim.global_batch", f"global batch {global_batch} is not divisible by world size {world_size}; "
                              f"the global batch stays fixed across world sizes, so pick a multiple of {world_size}"))
    micro = micro_batch or per_rank
    if global_batch % (micro * world_size):
        raise ConfigError("optim.micro_batch",
                          f"global batch {global_batch} is not divisible by world size {world_size} x micro batch "
                          f"{micro} = {micro * world_size}; choose micro_batch dividing {global_batch // world_size}")
    return micro, global_batch // (micro * world_size)


def _fill(section: Dict[str, Any], key: str, value: Any, what: str) -> None:
    """Replace "auto" (or a missing key); an explicit value must agree with the run config."""
    cur = section.get(key, AUTO)
    if cur == AUTO:
        section[key] = value
    elif cur != value:
        raise ConfigError("ds_config", f"{key}={cur} in the DeepSpeed config contradicts {what}={value}; "
                                       f"set it to \"auto\" or change the run config")


def fill_ds_config(template: Dict[str, Any], cfg: RunConfig, world_size: int, load_universal: bool = False,
                   split: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """The DeepSpeed config for this run with every "auto" resolved (the template is not modified).

    split: the trainer's (micro batch, accumulation steps) from batch_split; computed here when absent."""
    ds = copy.deepcopy(template)
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError("ds_config", "remove 'optimizer'/'scheduler' from the DeepSpeed config: the trainer builds "
                                       "AdamW with the official no-weight-decay groups and sets lr/wd every step")
    micro, accum = split or batch_split(cfg.optim.global_batch, cfg.optim.micro_batch, world_size)
    _fill(ds, "train_batch_size", cfg.optim.global_batch, "optim.global_batch")
    _fill(ds, "train_micro_batch_size_per_gpu", micro, "micro batch")
    _fill(ds, "gradient_accumulation_steps", accum, "gradient accumulation steps")
    _fill(ds, "gradient_clipping", float(cfg.optim.clip), "optim.clip")
    _fill_precision(ds, cfg.optim.precision)
    # fp32 gradient reduce-scatter and accumulation unless the JSON says otherwise: DeepSpeed's default
    # is the weights' dtype, i.e. bf16 gradient sums in `bf16` runs.
    ds.setdefault("communication_data_type", "fp32")
    ds.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage", 3) != 3:
        raise ConfigError("ds_config", f"zero_optimization.stage is {zero.get('stage')}; this trainer is built for ZeRO-3")
    zero["stage"] = 3
    h = cfg.model.width
    # Hugging Face's rules of thumb for hidden size h (docs/training.md, "DeepSpeed config filling").
    _fill(zero, "reduce_bucket_size", h * h, "width^2")
    _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * h * h), "0.9 width^2")
    _fill(zero, "stage3_param_persistence_threshold", 10 * h, "10 width")
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    leftover = [k for k, v in _walk(ds) if v == AUTO]
    if leftover:
        raise ConfigError("ds_config", f"no rule fills these \"auto\" values: {', '.join(leftover)}")
    return ds


def _fill_precision(ds: Dict[str, Any], precision: str) -> None:
    """bf16: DeepSpeed's bf16 weights. bf16-autocast and fp16: fp32 weights (they are the master
    weights) and DeepSpeed's torch_autocast around the forward; fp16 adds the official loss scale
    (amp.py). An empty lower_precision_safe_modules keeps every gradient's reduce-scatter in fp32
    (DeepSpeed's default list would reduce Linear/Conv gradients in the autocast dtype)."""
    what = f"optim.precision ({precision})"
    _fill(ds.setdefault("bf16", {}), "enabled", precision == "bf16", what)
    _fill(ds.setdefault("fp16", {}), "enabled", False, what + ": fp16 is autocast over fp32 weights, not fp16 weights")
    autocast = {"bf16-autocast": "bfloat16", "fp16": "float16"}.get(precision)
    sec = ds.setdefault("torch_autocast", {})
    _fill(sec, "enabled", autocast is not None, what)
    if autocast is None:
        ds.pop("torch_autocast")
        return
    _fill(sec, "dtype", autocast, what)
    sec.setdefault("lower_precision_safe_modules", [])


def _walk(d: Dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> tuple:
    """AdamW over the official decay / no-decay groups, and each group's wd multiplier (1 or 0).

    The multipliers are kept outside the optimizer on purpose: DeepSpeed's universal-checkpoint
    load copies group 0's hyper-parameters into every group, which would decay the no-decay group.
    """
    groups = model.param_groups(cfg.optim.twd)
    wd_mults = [float(g.pop("wd_mult", 1.0 if g.get("weight_decay", 0.0) > 0 else 0.0)) for g in groups]
    kwargs = dict(lr=cfg.optim.peak_lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    if torch.cuda.is_available():
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs), wd_mults


def set_lr_wd(optimizer, lr: float, wd: float, wd_mults) -> None:
    """Set every group's lr and weight decay for this step (called before each optimizer step)."""
    if len(optimizer.param_groups) != len(wd_mults):
        raise RuntimeError(f"optimizer has {len(optimizer.param_groups)} param groups, expected {len(wd_mults)}")
    for g, mult in zip(optimizer.param_groups, wd_mults):
        g["lr"] = lr
        g["weight_decay"] = wd * mult


def build_engine(model: torch.nn.Module, cfg: RunConfig, ds_config: Dict[str, Any]) -> tuple:
    """(DeepSpeed engine, wd multipliers per optimizer group)."""
    import deepspeed

    optimizer, wd_mults = build_optimizer(model, cfg)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    if cfg.optim.precision == "fp16":
        install_official_amp(engine)
    return engine, wd_mults


def engine_dtype(cfg: RunConfig) -> torch.dtype:
    """dtype of the weights the forward sees (autocast modes keep fp32 weights and cast per op)."""
    return torch.bfloat16 if cfg.optim.precision == "bf16" else torch.float32


def oom_message(cfg: RunConfig, micro: int) -> str:
    tips = [f"lower optim.micro_batch (now {micro}; the global batch stays {cfg.optim.global_batch} through "
            f"gradient accumulation)"]
    if not cfg.model.act_checkpoint:
        tips.append("turn on model.act_checkpoint=true")
    if cfg.optim.precision == "fp32":
        tips.append("train in optim.precision=bf16")
    return "out of memory: " + "; ".join(tips)


def repair_after_universal_load(engine) -> None:
    """Work around DeepSpeed 0.19.8's universal ZeRO-3 load, which assigns ONE `step` tensor to the
    Adam state of every parameter group: torch's AdamW increments it in place once per group, so
    with our two groups the step count (and Adam's bias correction) would advance twice per step."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def reset_zero3_trace(engine) -> None:
    """Make ZeRO-3 re-record its parameter prefetch trace at the next step.

    The trace is recorded from training forward+backward passes; an eval forward or a full
    GatheredParameters export in between can leave it out of step with the next training pass
    (seen as "tracing error at step N ... expected the next 2 parameters" after a resume). One
    step without prefetch is the price."""
    offload = getattr(engine.optimizer, "parameter_offload", None)
    coord = offload.get_param_coordinator() if offload is not None else None
    if coord is not None and not coord.is_invalid_trace():
        coord._invalidate_trace()
