"""The residual multi-scale quantiser of VAR (docs/tokenizer.md, "Architecture"): one shared codebook, Phi convs, the
Phi-per-scale table, and the area/bicubic resizes between a scale's side and the latent side.

All steps run in fp32 with autocast off: token ids are discrete decisions and must not depend on
the ambient precision.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.ops.codebook import nearest_code

# The official table for share_quant_resi=4 and 10 scales. Scales 2 and 7 are exact ties in real
# arithmetic; the official float64 linspace breaks them to 1 and 3, so the table is fixed here.
OFFICIAL_PHI_TABLE_K4_SN10 = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
QUANT_RESI = 0.5  # Phi residual ratio r: Phi(h) = (1 - r) h + r conv(h)


def _linspace_f64(start: float, stop: float, num: int) -> List[float]:
    # numpy.linspace's float64 recipe (start + i * step, last point pinned to stop), in plain Python
    if num == 1:
        return [start]
    step = (stop - start) / (num - 1)
    ticks = [start + i * step for i in range(num)]
    ticks[-1] = stop
    return ticks


def phi_table(num_scales: int, share_quant_resi: int) -> Tuple[int, ...]:
    """Index of the Phi conv used at each scale si (docs/tokenizer.md, "Phi table").

    share_quant_resi = 0: one Phi per scale; 1: a single shared Phi; K >= 2: K Phis placed on ticks
    in (0, 1), scale si goes to the tick nearest si / (SN - 1) (first one on float ties).
    """
    if num_scales < 1:
        raise ValueError(f"phi_table: need at least one scale, got {num_scales}")
    if share_quant_resi < 0:
        raise ValueError(f"phi_table: share_quant_resi must be >= 0, got {share_quant_resi}")
    if share_quant_resi == 1:
        return (0,) * num_scales
    k = num_scales if share_quant_resi == 0 else share_quant_resi
    if k == 4 and num_scales == 10:
        return OFFICIAL_PHI_TABLE_K4_SN10
    if num_scales == 1:
        return (0,)
    # the official code narrows the tick range for exactly K == 4 (1/(3K) margins), else 1/(2K)
    margin = 1 / 3 / k if k == 4 else 1 / 2 / k
    ticks = _linspace_f64(margin, 1 - margin, k)
    table = []
    for si in range(num_scales):
        at = si / (num_scales - 1)
        dist = [abs(t - at) for t in ticks]
        table.append(dist.index(min(dist)))
    return tuple(table)


def area_resize(x_BChw: torch.Tensor, side: int) -> torch.Tensor:
    """Adaptive average pooling to side x side (`interpolate(mode='area')`), also for 16 -> 13."""
    return F.interpolate(x_BChw, size=(side, side), mode="area")


def bicubic_resize(x_BChw: torch.Tensor, side: int) -> torch.Tensor:
    """PyTorch bicubic (a = -0.75, align_corners=False, clamped border) to side x side."""
    return F.interpolate(x_BChw, size=(side, side), mode="bicubic")


class Phi(nn.Conv2d):
    def __init__(self, c: int):
        super().__init__(c, c, 3, 1, 1)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - QUANT_RESI) + super().forward(h_BChw).mul_(QUANT_RESI)


class PhiSet(nn.Module):
    """Holds the Phi convs under the official key layout for each sharing mode:
    K >= 2 -> `qresi_ls.{k}`, K == 1 -> `qresi`, K == 0 -> one conv per scale, keys `{si}`."""

    def __init__(self, c: int, num_scales: int, share_quant_resi: int):
        super().__init__()
        self.table = phi_table(num_scales, share_quant_resi)
        self.mode = share_quant_resi
        if share_quant_resi == 1:
            self.qresi = Phi(c)
        elif share_quant_resi == 0:
            for si in range(num_scales):
                self.add_module(str(si), Phi(c))
        else:
            self.qresi_ls = nn.ModuleList(Phi(c) for _ in range(share_quant_resi))

    def for_scale(self, si: int) -> Phi:
        k = self.table[si]
        if self.mode == 1:
            return self.qresi
        if self.mode == 0:
            return getattr(self, str(k))
        return self.qresi_ls[k]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, vocab_size: int, z_channels: int, patch_nums: Sequence[int], share_quant_resi: int):
        super().__init__()
        self.vocab_size, self.z_channels = vocab_size, z_channels
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.embedding = nn.Embedding(vocab_size, z_channels)
        self.quant_resi = PhiSet(z_channels, len(self.patch_nums), share_quant_resi)
        # usage statistics of the official trainer; unused at inference, kept for key compatibility
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def scale_contribution(self, si: int, code_BCpp: torch.Tensor) -> torch.Tensor:
        """Phi(bicubic_up(code)) at the latent side; the last scale is already at full size."""
        if si < self.num_scales - 1:
            code_BCpp = bicubic_resize(code_BCpp, self.patch_nums[-1])
        return self.quant_resi.for_scale(si)(code_BCpp)

    def embed(self, ids_Bl: torch.Tensor, side: int) -> torch.Tensor:
        """ids (B, side*side) -> code embeddings (B, C, side, side)."""
        B = ids_Bl.shape[0]
        # a channels-last view, as the official code has it (keeps the resize kernels' summation order)
        return self.embedding(ids_Bl).view(B, side, side, self.z_channels).permute(0, 3, 1, 2)

    def f_to_ids(self, f_BCHW: torch.Tensor) -> List[torch.Tensor]:
        f_rest = f_BCHW.float().clone()
        ids: List[torch.Tensor] = []
        B, C = f_rest.shape[:2]
        codebook_VC = self.embedding.weight
        for si, pn in enumerate(self.patch_nums):
            z_BCpp = area_resize(f_rest, pn) if si < self.num_scales - 1 else f_rest
            idx_Bl = nearest_code(z_BCpp.permute(0, 2, 3, 1).reshape(-1, C), codebook_VC).view(B, pn * pn)
            ids.append(idx_Bl)
            f_rest = f_rest - self.scale_contribution(si, self.embed(idx_Bl, pn))
        return ids

    def ids_to_fhat(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of every scale's contribution: the full reconstruction latent (B, C, H, W)."""
        f_hat = None
        for si, pn in enumerate(self.patch_nums):
            h = self.scale_contribution(si, self.embed(ids[si], pn))
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def ids_to_teacher_input(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inputs of scales 1..SN-1: the running f_hat from coarser scales, area-resized, tokens last."""
        B, C, side = ids[0].shape[0], self.z_channels, self.patch_nums[-1]
        f_hat = torch.zeros(B, C, side, side, device=self.embedding.weight.device)
        out: List[torch.Tensor] = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self.scale_contribution(si, self.embed(ids[si], self.patch_nums[si]))
            nxt = self.patch_nums[si + 1]
            out.append(area_resize(f_hat, nxt).reshape(B, C, nxt * nxt).transpose(1, 2))
        if not out:
            return f_hat.new_zeros(B, 0, C)
        return torch.cat(out, dim=1)

    def next_ar_input(self, si: int, f_hat_BCHW: torch.Tensor, h_BCpp: torch.Tensor):
        """One sampler step: add scale si's codes to f_hat and return (f_hat, input of scale si+1)."""
        f_hat_BCHW = f_hat_BCHW + self.scale_contribution(si, h_BCpp.float())
        if si < self.num_scales - 1:
            return f_hat_BCHW, area_resize(f_hat_BCHW, self.patch_nums[si + 1])
        return f_hat_BCHW, f_hat_BCHW
