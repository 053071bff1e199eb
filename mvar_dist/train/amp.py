"""The official fp16 recipe inside DeepSpeed ZeRO-3: autocast fp16 over fp32 weights with the official
dynamic loss scale (VAR `utils/amp_sc.py`: GradScaler(init_scale=2^11, growth_interval=1000), the
scale capped at 2^15 after every update).

DeepSpeed's own `torch_autocast` fp16 path under ZeRO-3 attaches a default torch GradScaler that
steps and updates once per optimizer sub-group and clips the still-scaled gradients, so we replace
it with a scaler in the slot ZeRO-3 already honours for fp16: `optimizer.loss_scaler`. ZeRO-3 then
scales the loss in `engine.backward`, divides the gradients by the scale before clipping (the clip
sees true norms), and on a non-finite gradient norm skips the step and calls `update_scale(True)`.
"""
from __future__ import annotations

INIT_SCALE = 2.0 ** 11          # GradScaler(init_scale=2**11)
GROWTH_INTERVAL = 1000          # GradScaler(growth_interval=1000): x2 after this many finite steps in a row
MAX_SCALE = 2.0 ** 15           # amp_sc.py: scaler.update(32768.) whenever the scale exceeds it
BACKOFF = 0.5                   # torch GradScaler default backoff_factor on a non-finite step


class OfficialLossScaler:
    """torch.amp.GradScaler's update rule with the official settings, in DeepSpeed's scaler API."""

    dynamic = True

    def __init__(self) -> None:
        self.cur_scale = INIT_SCALE
        self.good_steps = 0     # GradScaler's growth tracker

    @property
    def loss_scale(self) -> float:
        return self.cur_scale

    def scale_loss(self, loss):
        return loss * self.cur_scale

    def update_scale(self, overflow: bool) -> None:
        if overflow:
            self.cur_scale *= BACKOFF
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == GROWTH_INTERVAL:
            self.cur_scale = min(self.cur_scale * 2.0, MAX_SCALE)
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"cur_scale": self.cur_scale, "good_steps": self.good_steps}


def install_official_amp(engine) -> None:
    """Swap the ZeRO-3 optimizer's loss scaling for the official one (precision "fp16")."""
    opt = engine.optimizer
    if not hasattr(opt, "loss_scaler") or not hasattr(opt, "torch_autocast_gradscaler"):
        raise RuntimeError(f"precision fp16 needs DeepSpeed's ZeRO-3 optimizer, got {type(opt).__name__}")
    opt.torch_autocast_gradscaler = None
    opt.loss_scaler = OfficialLossScaler()
    opt.dynamic_loss_scale = True
