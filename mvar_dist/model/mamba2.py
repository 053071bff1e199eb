"""Mamba2 mixer with mamba-ssm's parameter names and shapes, so official checkpoints load as they are.

in_proj (no bias) -> [z | x | B | C | dt]; depthwise causal conv1d + SiLU over xBC; SSD scan with
dt = softplus(dt + dt_bias), A = -exp(A_log), skip D; gated RMSNorm rmsnorm(y * silu(z)) * norm.weight
(norm_before_gate=False, one group); out_proj (no bias). ngroups = 1.

`forward(u, state)` runs any number of new tokens after `state` (the last d_conv-1 pre-conv xBC rows
and the fp32 SSM state) and can return the updated state: the sampler feeds each scale once and gets
exactly what a run over the whole prefix would give.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.ops.causal_conv import causal_conv1d
from mvar_dist.ops.ssd import ssd_scan


class MambaState(NamedTuple):
    conv_BDK: torch.Tensor   # (B, conv_dim, d_conv - 1): pre-conv xBC rows preceding the next token
    ssm_BHPN: torch.Tensor   # (B, nheads, headdim, d_state), float32


def _acc(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 go up, float64 stays float64 for exactness checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class GatedRMSNorm(nn.Module):
    """rmsnorm(y * silu(z)) * weight over all channels (one group), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v = _acc(y) * F.silu(_acc(z))
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return (v * _acc(self.weight)).to(y.dtype)


class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, chunk_size: int = 64):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.headdim = d_model, d_state, d_conv, headdim
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"Mamba2: inner width {self.d_inner} is not divisible by headdim {headdim}")
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * d_state
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4,
                             a_range=(1.0, 16.0)) -> None:
        """mamba-ssm's constructor init of the SSM scalars (MVAR.init_weights leaves them alone)."""
        u = torch.rand(self.nheads, device=self.dt_bias.device)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.empty_like(dt).uniform_(*a_range)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def forward(self, u_BLD: torch.Tensor, state: Optional[MambaState] = None, return_state: bool = False):
        B, L, _ = u_BLD.shape
        zxbcdt_BLE = self.in_proj(u_BLD)
        z_BLI, xBC_BLK, dt_BLH = torch.split(zxbcdt_BLE, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = None if state is None else state.conv_BDK
        xBC_BKL, new_conv = causal_conv1d(xBC_BLK.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                                          conv_state, activation="silu", return_state=True)
        x_BLI, Bm_BLN, Cm_BLN = torch.split(xBC_BKL.transpose(1, 2),
                                            [self.d_inner, self.d_state, self.d_state], dim=-1)
        # dt and A are fp32 whatever the autocast dtype, as in mamba-ssm's kernels.
        dt_BLH = F.softplus(_acc(dt_BLH) + _acc(self.dt_bias))
        A_H = -torch.exp(_acc(self.A_log))
        y_BLHP, ssm = ssd_scan(x_BLI.reshape(B, L, self.nheads, self.headdim), dt_BLH, A_H,
                               Bm_BLN, Cm_BLN, _acc(self.D),
                               initial_states=None if state is None else state.ssm_BHPN,
                               return_final_states=True, chunk_size=self.chunk_size)
        y_BLI = self.norm(y_BLHP.reshape(B, L, self.d_inner), z_BLI)
        out_BLD = self.out_proj(y_BLI)
        if return_state:
            return out_BLD, MambaState(new_conv, ssm)
        return out_BLD
