"""Training forward of VAR's residual multi-scale quantiser: straight-through estimator, codebook and
commitment losses, optional l2-normalised codes and early stop (quantiser dropout).

It walks the scales exactly as `MultiScaleQuantizer.f_to_ids` does (same area/bicubic resizes, same
Phi convs and Phi-per-scale table via `scale_contribution`, same `nearest_code` arithmetic), so with
plain codes the ids equal the inference ids bit for bit. The loss follows VAR's VectorQuantizer2:
per scale, beta * ||sg(f_hat) - f||^2 (commitment, to the encoder) + ||f_hat - sg(f)||^2 (codebook,
to the codes and the Phi convs), averaged over the scales used. Everything runs in fp32 with
autocast off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from mvar_dist.ops.codebook import nearest_code
from mvar_dist.vqvae.quantizer import MultiScaleQuantizer, area_resize


@dataclass
class QuantOut:
    f_hat_st: torch.Tensor        # (B, C, H, W) decoder input: value f_hat, gradient to f (straight-through)
    vq_loss: torch.Tensor         # scalar: mean over used scales of codebook + beta * commitment
    ids: List[torch.Tensor]       # per used scale, int64 (B, pn*pn)
    rows_NC: torch.Tensor         # detached residual rows that were quantised (all used scales), for re-init
    scales_used: int


def codes_VC(quantizer: MultiScaleQuantizer, l2_norm: bool) -> torch.Tensor:
    """The codebook as the lookup sees it: the raw embedding, or its rows l2-normalised."""
    w_VC = quantizer.embedding.weight.float()
    return F.normalize(w_VC, dim=1) if l2_norm else w_VC


def _lookup_rows(z_BCpp: torch.Tensor, e_VC: torch.Tensor):
    B, C, pn, _ = z_BCpp.shape
    z_NC = z_BCpp.permute(0, 2, 3, 1).reshape(-1, C)
    # with unit codes, argmin ||z - e|| == argmax cos(z, e): the exported unit codebook gives the same ids
    idx_N = nearest_code(z_NC, e_VC.detach())
    return idx_N, z_NC


def quantize_train(quantizer: MultiScaleQuantizer, f_BCHW: torch.Tensor, beta: float = 0.25,
                   l2_norm: bool = False, stop_at: Optional[int] = None) -> QuantOut:
    """Residual quantisation of f over the first `stop_at` scales (all by default), with gradients."""
    SN = quantizer.num_scales
    used = SN if stop_at is None else int(stop_at)
    if not 1 <= used <= SN:
        raise ValueError(f"stop_at must be in [1, {SN}], got {stop_at}")
    with torch.autocast(device_type=f_BCHW.device.type, enabled=False):
        f = f_BCHW.float()
        f_nograd = f.detach()
        f_rest = f_nograd.clone()
        f_hat = torch.zeros_like(f_nograd)
        e_VC = codes_VC(quantizer, l2_norm)
        B, C = f.shape[:2]
        loss = f.new_zeros(())
        ids, rows = [], []
        for si in range(used):
            pn = quantizer.patch_nums[si]
            z_BCpp = area_resize(f_rest, pn) if si < SN - 1 else f_rest
            idx_N, z_NC = _lookup_rows(z_BCpp, e_VC)
            ids.append(idx_N.view(B, pn * pn))
            rows.append(z_NC)
            code_BCpp = e_VC[idx_N].view(B, pn, pn, C).permute(0, 3, 1, 2)  # channels-last view, as `embed`
            h_BCHW = quantizer.scale_contribution(si, code_BCpp)
            f_hat = f_hat + h_BCHW
            f_rest = f_rest - h_BCHW.detach()
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_nograd)
        f_hat_st = f_hat.detach() - f_nograd + f
    return QuantOut(f_hat_st, loss / used, ids, torch.cat(rows).detach(), used)


def dropout_stop(num_scales: int, p: float, min_scales: int, seed: int, step: int) -> Optional[int]:
    """Quantiser dropout: with probability p, stop after a uniform number of scales in
    [min_scales, num_scales - 1]; else None (all scales). A pure function of (seed, step), so every
    rank and a resumed run draw the same value."""
    if p <= 0 or min_scales >= num_scales:
        return None
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) + 17)
    if float(torch.rand((), generator=g)) >= p:
        return None
    return int(torch.randint(min_scales, num_scales, (), generator=g))
