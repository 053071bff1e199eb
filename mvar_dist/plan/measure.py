"""Measured memory of one training step on CPU, for calibrating the planner.

Method: a `TorchDispatchMode` sees every tensor an aten op returns (forward and backward: on CPU the
autograd engine runs backward on the calling thread, inside the mode). Each new storage is counted
once (views share it) and a `weakref.finalize` on the storage subtracts it when the storage is freed,
so `live` is the exact number of tensor bytes allocated inside the step and still alive - the CPU
counterpart of `torch.cuda.memory_allocated()` minus its value before the step, without allocator
rounding. It is deterministic (no sampling, no RSS noise). Not seen: memory a kernel allocates outside
PyTorch tensors (oneDNN scratch), and the allocator's own overhead/fragmentation.

The measured step is the second one: the first creates the `.grad` tensors, so the second measures
activations and temporaries only, with parameters and gradients as the (exactly known) baseline.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of tensor storages created while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: Dict[int, int] = {}

    def _released(self, key: int, nbytes: int) -> None:
        if self._sizes.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage (a parameter's .t(), an input's .view()):
        # that memory existed before the op and is not a new allocation
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self._sizes or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._sizes[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._released, key, nbytes)
        return out

    def mark(self) -> int:
        return self.live


def _loss(logits_BLV: torch.Tensor, target_BL: torch.Tensor) -> torch.Tensor:
    """The trainer's loss (mvar_dist.train.metrics.token_losses): per-token fp32 cross-entropy, mean."""
    B, L, V = logits_BLV.shape
    ce = torch.nn.functional.cross_entropy(logits_BLV.float().reshape(-1, V), target_BL.reshape(-1),
                                           reduction="none")
    return ce.view(B, L).mean()


def measure_step(run_cfg, micro_batch: int, act_checkpoint: bool, seed: int = 0) -> dict:
    """Build the run's model in fp32 on CPU and measure one forward+backward of `micro_batch` images.

    Returns bytes: params, grads (baseline, exact), saved_after_forward (live at the end of forward,
    loss included), peak (the step's peak above the baseline), and the batch size."""
    from mvar_dist.model import MVAR

    cfg = dataclasses.replace(run_cfg, model=dataclasses.replace(run_cfg.model, act_checkpoint=act_checkpoint))
    torch.manual_seed(seed)
    model = MVAR.from_config(cfg).float().train()
    tok = cfg.tokenizer
    L = sum(p * p for p in tok.patch_nums)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.model.num_classes, (micro_batch,), generator=g)
    teacher = torch.randn(micro_batch, L - tok.patch_nums[0] ** 2, tok.z_channels, generator=g)
    target = torch.randint(0, tok.vocab_size, (micro_batch, L), generator=g)

    def step(tracker=None):
        logits = model(labels, teacher)
        loss = _loss(logits, target)
        after_fwd = tracker.mark() if tracker is not None else 0
        loss.backward()
        return after_fwd, logits  # the trainer keeps the logits alive through backward (accuracy)

    step()  # creates .grad; the measured step accumulates into it
    tracker = AllocationTracker()
    with tracker:
        after_fwd, logits = step(tracker)
        del logits
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"micro_batch": micro_batch, "act_checkpoint": act_checkpoint, "params": params, "grads": grads,
            "saved_after_forward": after_fwd, "peak": tracker.peak, "dtype": "fp32"}
