"""The validation pass: one fixed pass over the held-out split, for the raw weights and (with EMA on)
for the EMA weights swapped into the ZeRO-3 partitions (train/ema.py)."""
from __future__ import annotations

from typing import Dict

import torch

from mvar_dist.distributed import all_reduce_
from .engine import reset_zero3_trace
from .metrics import scale_sums, summarize, token_losses


def validate(engine, vae, val_loader, patch_nums, micro: int, dtype, device, metrics, step: int, ema=None) -> None:
    """Log the validation loss of the raw weights (val/...) and, when `ema` is given, of the EMA (val_ema/...)."""
    args = (engine, vae, val_loader, patch_nums, micro, dtype, device)
    metrics.log_val(step, evaluate(*args))
    if ema is not None:
        with ema.swapped_in():
            metrics.log_val(step, evaluate(*args), weights="ema")


@torch.no_grad()
def evaluate(engine, vae, val_loader, patch_nums, micro: int, dtype, device) -> Dict[str, float]:
    """One fixed pass over the held-out split in eval mode (no label dropout, no drop path)."""
    engine.eval()
    val_loader.load_state_dict({"epoch": 0, "samples_consumed": 0})
    sums = torch.zeros(2 * len(patch_nums) + 1, dtype=torch.float64, device=device)
    for labels_B, tokens_BL in val_loader:  # from (0, 0): exactly one pass over the split
        labels_B, tokens_BL = labels_B.to(device), tokens_BL.to(device)
        teacher_BLC = vae.ids_to_teacher_input(tokens_BL).to(dtype)
        for k in range(0, labels_B.shape[0], micro):
            sl = slice(k, k + micro)
            logits_BLV = engine(labels_B[sl], teacher_BLC[sl])
            ce_BL, _ = token_losses(logits_BLV, tokens_BL[sl])
            sums += scale_sums(ce_BL, logits_BLV, tokens_BL[sl], patch_nums)
    all_reduce_(sums)
    engine.train()
    reset_zero3_trace(engine)
    out = summarize(sums, patch_nums)
    return {"loss": out["L_mean"], **out}
