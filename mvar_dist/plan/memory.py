"""Per-rank GPU memory of a ZeRO-3 training run, the largest micro batch that fits, and the step time.

Per rank (N = number of GPUs, P = parameters, bf16 training):
  * model state, sharded 1/N by ZeRO-3: bf16 params (2P), bf16 grads (2P), fp32 master weights (4P),
    AdamW exp_avg and exp_avg_sq (4P + 4P); parameters smaller than the persistence threshold stay whole
    on every rank (counted whole, in every state); with ema.enabled an fp32 EMA of the rank's
    partition (4P/N: every parameter, persistent ones included, is partitioned for it, train/ema.py);
  * ZeRO-3 buffers: the gathered parameters of the largest module plus the prefetch bucket, the
    gathered gradient of the largest module and the reduce bucket (all in the training dtype);
  * activations: `activations.activation_model` (per image, x micro batch), including the B x L x V
    logits working set of the loss;
  * the frozen VQVAE tokenizer in fp32 (the trainer keeps it on every GPU for the teacher inputs);
  * a fixed reserve (CUDA context, NCCL buffers, cuBLAS workspace) and a headroom fraction of the GPU
    for allocator fragmentation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

from mvar_dist.distributed import per_rank_batch

from .activations import KERNEL, activation_model
from .shapes import ModelShapes

GIB = 1024 ** 3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "bf16-autocast": 2}     # activations
WEIGHT_BYTES = {"bf16": 2, "fp16": 4, "fp32": 4, "bf16-autocast": 4}    # the working weights (fp16 = AMP: fp32)
AUTOCAST = ("fp16", "bf16-autocast")                                    # modes under torch.autocast


class PlanError(ValueError):
    """A plan that cannot be made (bad arguments, or nothing fits); the message says what would."""


@dataclass
class PlanSettings:
    gpus: int
    gpu_mem_gib: float
    micro_batch: int = 0             # 0 = the largest that fits (dividing the per-rank batch)
    act_checkpoint: str = "auto"     # "auto" | "on" | "off"
    mfu: float = 0.4
    peak_tflops: float = 312.0       # per GPU, dense bf16 (A100: 312, H100/H200: 989)
    headroom: float = 0.10           # fraction of GPU memory left for allocator fragmentation
    reserve_gib: float = 1.5         # CUDA context, NCCL, cuBLAS workspace
    impl: str = KERNEL               # op back-end whose saved tensors are counted ("kernel" on GPU)

    def validate(self) -> None:
        if self.gpus < 1:
            raise PlanError(f"--gpus must be >= 1, got {self.gpus}")
        if self.gpu_mem_gib <= 0:
            raise PlanError(f"--gpu-mem-gib must be > 0, got {self.gpu_mem_gib}")
        if self.micro_batch < 0:
            raise PlanError(f"--micro-batch must be >= 1, got {self.micro_batch}")
        if self.act_checkpoint not in ("auto", "on", "off"):
            raise PlanError(f"--act-checkpoint must be auto, on or off, got {self.act_checkpoint!r}")
        if not 0 < self.mfu <= 1:
            raise PlanError(f"--mfu must be in (0, 1], got {self.mfu}")
        if self.peak_tflops <= 0:
            raise PlanError(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if not 0 <= self.headroom < 1:
            raise PlanError(f"--headroom must be in [0, 1), got {self.headroom}")


def model_state_bytes(s: ModelShapes, world: int, precision: str = "bf16", ema: bool = False) -> Dict[str, float]:
    """Per-rank bytes of params, grads, fp32 master weights and AdamW states under ZeRO-3 (+ the EMA)."""
    sharded = s.num_params - s.persistent_params
    per_rank = sharded / world + s.persistent_params
    w = WEIGHT_BYTES[precision]
    # grads: configs/zero3.json accumulates them in fp32 (data_types.grad_accum_dtype) in every mode
    out = {"params": w * per_rank, "grads": 4 * per_rank}
    out["master_fp32"] = 0.0 if w == 4 else 4 * per_rank
    out["adam_states"] = 8 * per_rank
    if ema:
        out["ema_fp32"] = 4 * math.ceil(s.num_params / world)
    return out


def zero3_buffer_bytes(s: ModelShapes, precision: str = "bf16", world: int = 2) -> Dict[str, float]:
    """Gathered parameters (largest module + prefetch bucket, 0.9 width^2) and gradient buffers
    (largest module's full gradient + reduce bucket, width^2), in the training dtype; the trainer's
    engine.py fills the buckets with these sizes. One rank gathers nothing it does not already hold.
    Gradients are reduced in fp32 (configs/zero3.json communication_data_type). The autocast modes
    add torch.autocast's cache: a 16-bit copy of every weight the forward used, held until it ends."""
    cache = {"autocast_cache": 2.0 * s.num_params} if precision in AUTOCAST else {}
    if world == 1:
        return {"gathered_params": 0.0, "grad_buckets": 0.0, **cache}
    h2 = s.width * s.width
    return {"gathered_params": WEIGHT_BYTES[precision] * (s.largest_module_params + int(0.9 * h2)),
            "grad_buckets": 4 * (s.largest_module_params + h2), **cache}


@dataclass
class MemoryPlan:
    config: str
    arch: str
    num_params: int
    gpus: int
    gpu_mem_gib: float
    precision: str
    act_checkpoint: bool
    micro_batch: int
    max_micro_batch: int
    grad_accum: int
    global_batch: int
    per_rank_gib: Dict[str, float]          # the breakdown at the chosen micro batch
    activation_per_image_mib: Dict[str, float]
    total_gib: float
    usable_gib: float
    train_flops_per_image: float
    step_time_s: float
    images_per_s: float
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _usable_bytes(st: PlanSettings) -> float:
    return st.gpu_mem_gib * GIB * (1 - st.headroom) - st.reserve_gib * GIB


def static_bytes(s: ModelShapes, world: int, precision: str, ema: bool = False) -> float:
    """Everything but activations: model state, ZeRO-3 buffers, the frozen fp32 tokenizer."""
    return (sum(model_state_bytes(s, world, precision, ema).values()) + sum(zero3_buffer_bytes(s, precision, world).values())
            + 4 * s.tokenizer_params)


def max_micro_batch(s: ModelShapes, st: PlanSettings, checkpointing: bool, precision: str, ema: bool = False) -> int:
    """Largest micro batch whose peak fits the usable memory (0 if not even one image)."""
    per_image = activation_model(s, DTYPE_BYTES[precision], st.impl, checkpointing).peak
    free = _usable_bytes(st) - static_bytes(s, st.gpus, precision, ema)
    return max(0, int(free // per_image))


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _needed(s: ModelShapes, st: PlanSettings, precision: str, micro: int, checkpointing: bool,
            ema: bool = False) -> str:
    """What would make `micro` images per rank fit: the GPU memory at this GPU count, and the GPU count
    at this memory (ZeRO-3 shards only the model state; activations and buffers do not shrink)."""
    per_image = activation_model(s, DTYPE_BYTES[precision], st.impl, checkpointing).peak
    need = static_bytes(s, st.gpus, precision, ema) + micro * per_image
    mem = (need + st.reserve_gib * GIB) / (1 - st.headroom) / GIB
    parts = [f"at {st.gpus} GPUs each needs >= {mem:.1f} GiB"]
    whole = sum(model_state_bytes(s, 1, precision, ema).values())
    persistent = sum(model_state_bytes(s, 10 ** 12, precision, ema).values())
    unsharded = (persistent + sum(zero3_buffer_bytes(s, precision, 2).values()) + 4 * s.tokenizer_params
                 + micro * per_image)
    room = _usable_bytes(st) - unsharded
    if room > 0:
        gpus = max(2, math.ceil((whole - persistent) / room))
        parts.append(f"at {st.gpu_mem_gib:g} GiB per GPU it needs >= {gpus} GPUs")
    else:
        floor_gib = (unsharded + st.reserve_gib * GIB) / (1 - st.headroom) / GIB
        parts.append(f"no GPU count suffices at {st.gpu_mem_gib:g} GiB: the part ZeRO-3 does not shard "
                     f"(activations, buffers, reserve) alone needs {floor_gib:.1f} GiB")
    if not checkpointing:
        parts.append("or turn on activation checkpointing (--act-checkpoint on)")
    return "; ".join(parts)


def _choose_micro_batch(run_cfg, s: ModelShapes, st: PlanSettings, per_rank: int,
                        notes: List[str]) -> Tuple[bool, int, int]:
    """(activation checkpointing on?, largest micro batch that fits, micro batch used) for one rank."""
    precision, global_batch, N = run_cfg.optim.precision, int(run_cfg.optim.global_batch), st.gpus
    ema = bool(run_cfg.ema.enabled)
    fits = {ck: max_micro_batch(s, st, ck, precision, ema) for ck in (False, True)}
    requested = st.micro_batch or int(run_cfg.optim.micro_batch)
    if requested and per_rank % requested:
        raise PlanError(f"micro batch {requested} does not divide the per-rank batch {per_rank} "
                        f"(= global_batch {global_batch} / {N} GPUs)")
    target = requested or per_rank
    if st.act_checkpoint == "auto":
        # off when the target micro batch fits without it (no recompute), else on (bigger micro batches)
        ckpt = fits[False] < target
        notes.append(f"act-checkpoint auto -> {'on' if ckpt else 'off'} (max micro batch: off {fits[False]}, "
                     f"on {fits[True]})")
    else:
        ckpt = st.act_checkpoint == "on"
    cap = fits[ckpt]
    if cap < 1:
        raise PlanError(f"{run_cfg.name}: not even 1 image per GPU fits in {st.gpu_mem_gib:g} GiB "
                        f"on {N} GPUs (activation checkpointing {'on' if ckpt else 'off'}); "
                        + _needed(s, st, precision, 1, ckpt, ema))
    if requested:
        if requested > cap:
            raise PlanError(f"micro batch {requested} does not fit (largest: {cap} with activation checkpointing "
                            f"{'on' if ckpt else 'off'}); " + _needed(s, st, precision, requested, ckpt, ema))
        return ckpt, cap, requested
    micro = _largest_divisor_at_most(per_rank, cap)
    if micro < min(cap, per_rank):
        notes.append(f"micro batch {micro}: the largest divisor of the per-rank batch {per_rank} "
                     f"<= the {cap} that fit")
    return ckpt, cap, micro


def _activation_per_image_mib(s: ModelShapes, a: int, impl: str, am) -> Dict[str, float]:
    """Activation memory of one image with and without checkpointing, for the report."""
    mib = 1024 ** 2
    no_ck, with_ck = activation_model(s, a, impl, False), activation_model(s, a, impl, True)
    return {"saved_no_checkpointing": no_ck.saved / mib, "peak_no_checkpointing": no_ck.peak / mib,
            "saved_with_checkpointing": with_ck.saved / mib, "peak_with_checkpointing": with_ck.peak / mib,
            "one_block": am.per_block / mib, "logits_BLV": am.logits / mib}


def make_plan(run_cfg, s: ModelShapes, st: PlanSettings, train_flops_per_image: float) -> MemoryPlan:
    st.validate()
    precision = run_cfg.optim.precision
    global_batch = int(run_cfg.optim.global_batch)
    N = st.gpus
    notes: List[str] = []
    per_rank = per_rank_batch(global_batch, N, lambda: PlanError(
        f"optim.global_batch {global_batch} is not divisible by {N} GPUs; the trainer keeps the global batch "
        f"fixed, so use a GPU count dividing {global_batch} (or override optim.global_batch)"))
    ckpt, cap, micro = _choose_micro_batch(run_cfg, s, st, per_rank, notes)
    accum = per_rank // micro
    a = DTYPE_BYTES[precision]
    am = activation_model(s, a, st.impl, ckpt)
    breakdown = dict(model_state_bytes(s, N, precision, bool(run_cfg.ema.enabled)))
    breakdown.update(zero3_buffer_bytes(s, precision, N))
    breakdown["tokenizer"] = 4 * s.tokenizer_params
    breakdown["activations_saved"] = am.saved * micro
    breakdown["backward_peak_extra"] = (am.peak - am.saved) * micro
    breakdown["reserve"] = st.reserve_gib * GIB
    total = sum(breakdown.values())
    step_time = train_flops_per_image * global_batch / (N * st.peak_tflops * 1e12 * st.mfu)
    if ckpt:
        notes.append("step time counts model FLOPs (3x forward); checkpointing also recomputes each forward "
                     "(about 4/3 the hardware work), so give the MFU you expect in model FLOPs")
    return MemoryPlan(
        config=run_cfg.name, arch=s.arch, num_params=s.num_params, gpus=N, gpu_mem_gib=st.gpu_mem_gib,
        precision=precision, act_checkpoint=ckpt, micro_batch=micro, max_micro_batch=cap, grad_accum=accum,
        global_batch=global_batch, per_rank_gib={k: v / GIB for k, v in breakdown.items()},
        activation_per_image_mib=_activation_per_image_mib(s, a, st.impl, am), total_gib=total / GIB,
        usable_gib=_usable_bytes(st) / GIB + st.reserve_gib,
        train_flops_per_image=float(train_flops_per_image), step_time_s=step_time,
        images_per_s=global_batch / step_time, notes=notes)


def predict_step_bytes(s: ModelShapes, micro_batch: int, checkpointing: bool, dtype: str = "fp32",
                       impl: str = "reference") -> Dict[str, int]:
    """One rank without ZeRO or optimizer (the CPU calibration setting): params, grads, activations."""
    a = DTYPE_BYTES[dtype]
    am = activation_model(s, a, impl, checkpointing)
    return {"params": a * s.num_params, "grads": a * s.num_params, "saved_after_forward":
            micro_batch * (am.saved + s.tokens * 2 * s.vocab_size * 4),  # + fp32 logits and log-softmax
            "peak": micro_batch * am.peak}
