"""AdaLN transformer blocks (VAR: attention + FFN; M-VAR: attention + Mamba2 + FFN) and the AdaLN head.

Every branch is pre-norm: LN (no affine) -> *(1+scale)+shift from `ada_lin(cond)` -> branch -> *gamma,
added to the residual through drop-path. `ada_lin` chunk order (official):
  M-VAR 9C: gamma1, gamma2, gamma3, scale1, scale2, scale3, shift1, shift2, shift3
  VAR   6C: gamma1, gamma2, scale1, scale2, shift1, shift2
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.config import ArchSpec

from .attention import SelfAttention
from .mamba2 import Mamba2, MambaState


class DropPath(nn.Module):
    """Per-sample stochastic depth (timm semantics: mask (B,1,1), rescaled by 1/keep); training only."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    def __init__(self, spec: ArchSpec, width: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 attn_l2_norm: bool, patch_nums: Sequence[int], drop_path: float,
                 d_state: int = 64, d_conv: int = 4, expand: int = 2, mamba_headdim: int = 64):
        super().__init__()
        self.spec, self.width, self.norm_eps = spec, width, norm_eps
        self.n_chunks = spec.ada_chunks
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, self.n_chunks * width))
        self.attn = SelfAttention(width, num_heads, attn_l2_norm, spec.mask, patch_nums)
        if spec.has_mamba:
            self.mamba = Mamba2(width, d_state=d_state, d_conv=d_conv, expand=expand, headdim=mamba_headdim)
        self.ffn = FFN(width, round(width * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def _ln(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.width,), eps=self.norm_eps)

    def modulation(self, cond_BD: torch.Tensor) -> List[torch.Tensor]:
        """The AdaLN chunks, each (B, 1, C), in the official order."""
        return list(self.ada_lin(cond_BD).view(-1, 1, self.n_chunks, self.width).unbind(2))

    def _branches(self, mods):
        """(gamma, scale, shift) of the attention, Mamba (None without one) and FFN branches."""
        n = self.spec.branches
        branches = list(zip(mods[:n], mods[n:2 * n], mods[2 * n:]))
        return branches[0], (branches[1] if self.spec.has_mamba else None), branches[-1]

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        at, mb, ff = self._branches(self.modulation(cond_BD))
        x_BLC = x_BLC + self.drop_path(self.attn(self._ln(x_BLC) * (1 + at[1]) + at[2]) * at[0])
        if mb is not None:
            x_BLC = x_BLC + self.drop_path(self.mamba(self._ln(x_BLC) * (1 + mb[1]) + mb[2]) * mb[0])
        return x_BLC + self.drop_path(self.ffn(self._ln(x_BLC) * (1 + ff[1]) + ff[2]) * ff[0])

    def forward_scale(self, x_BlC: torch.Tensor, mods, cache: Dict[str, object]) -> torch.Tensor:
        """Sampler step over one scale's tokens (eval mode). `mods` = precomputed `modulation(cond)`;
        `cache` (owned by the sampler) holds VAR's k/v or M-VAR's Mamba state between scales."""
        at, mb, ff = self._branches(mods)
        x_BlC = x_BlC + self.attn.forward_scale(self._ln(x_BlC) * (1 + at[1]) + at[2], cache) * at[0]
        if mb is not None:
            state: Optional[MambaState] = cache.get("mamba")
            y, cache["mamba"] = self.mamba(self._ln(x_BlC) * (1 + mb[1]) + mb[2], state, return_state=True)
            x_BlC = x_BlC + y * mb[0]
        return x_BlC + self.ffn(self._ln(x_BlC) * (1 + ff[1]) + ff[2]) * ff[0]


class AdaLNBeforeHead(nn.Module):
    """LN (no affine) * (1 + scale) + shift, with (scale, shift) = ada_lin(cond)."""

    def __init__(self, width: int, norm_eps: float):
        super().__init__()
        self.width, self.norm_eps = width, norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.width).unbind(2)
        return F.layer_norm(x_BLC, (self.width,), eps=self.norm_eps) * (1 + scale) + shift
