"""Learning-rate and weight-decay annealing of the official recipe (docs/training.md, "The recipe").

Both are pure functions of the optimizer step, so a resumed run gets exactly the values an
uninterrupted one would: nothing about the schedule is stored in checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mvar_dist.config import ConfigError, OptimConfig


@dataclass(frozen=True)
class Schedule:
    peak_lr: float      # tblr * global_batch / 256
    max_steps: int      # total optimizer steps of the run
    warmup_steps: int   # linear warm-up from wp0 * peak
    wp0: float          # lr at step 0 as a fraction of peak
    wpe: float          # final lr as a fraction of peak
    sche: str           # "lin0" or "cos"
    twd: float          # weight decay at step 0
    twde: float         # weight decay at the last step

    @classmethod
    def from_config(cls, optim: OptimConfig, steps_per_epoch: int, max_steps: int) -> "Schedule":
        """`wp` is in epochs as in the official code; it becomes steps via the epoch length."""
        if steps_per_epoch <= 0 or max_steps <= 0:
            raise ConfigError("optim", f"need steps_per_epoch > 0 and max_steps > 0, got {steps_per_epoch}, {max_steps}")
        warmup = min(int(round(optim.wp * steps_per_epoch)), max_steps - 1)
        return cls(optim.peak_lr, max_steps, max(warmup, 0), optim.wp0, optim.wpe, optim.sche, optim.twd, optim.twde)

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (self.wp0 + (1 - self.wp0) * step / self.warmup_steps)
        span = max(self.max_steps - 1 - self.warmup_steps, 1)
        pasd = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.sche == "lin0":
            # Flat for the first 5% after warm-up, then linear down to wpe * peak at the last step.
            if pasd < 0.05:
                return self.peak_lr
            return self.peak_lr * (self.wpe + (1 - self.wpe) * (1 - pasd) / 0.95)
        return self.peak_lr * (self.wpe + (1 - self.wpe) * 0.5 * (1 + math.cos(math.pi * pasd)))

    def wd(self, step: int) -> float:
        frac = min(max(step / max(self.max_steps - 1, 1), 0.0), 1.0)
        return self.twde + (self.twd - self.twde) * (0.5 + 0.5 * math.cos(math.pi * frac))
