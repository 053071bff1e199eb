"""VAR-style self-attention (official parameter names) over multi-scale sequences.

qkv = x Wqkvᵀ + cat(q_bias, 0, v_bias); with L2 norm: q, k unit-normalised per head, q times
exp(min(scale_mul_1H11, ln 100)), softmax scale 1; without: softmax scale 0.25/sqrt(head_dim).
`forward` masks by scale (block-diagonal for M-VAR, block-causal for VAR) through the
`mvar_dist.ops.attention` dispatcher; `forward_scale` serves the sampler one scale at a time.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.ops.attention import scale_attention

_LOG_100 = math.log(100.0)


class SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int, l2_norm: bool, kind: str, patch_nums: Sequence[int]):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by {num_heads} heads")
        self.width, self.num_heads, self.head_dim = width, num_heads, width // num_heads
        self.kind, self.patch_nums, self.l2_norm = kind, tuple(patch_nums), l2_norm
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.softmax_scale = 1.0
        else:
            self.softmax_scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(width, width)

    def _qkv(self, x_BLC: torch.Tensor):
        B, L, _ = x_BLC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias.to(self.q_bias.dtype), self.v_bias])
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLD, k_BHLD, v_BHLD = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            # the fp32 scale would promote q; keep the matmul dtype (bf16 under autocast) for the kernel
            q_BHLD = (F.normalize(q_BHLD, dim=-1) * self.scale_mul_1H11.clamp_max(_LOG_100).exp()).to(qkv.dtype)
            k_BHLD = F.normalize(k_BHLD, dim=-1)
        return q_BHLD, k_BHLD, v_BHLD

    def _out(self, o_BHLD: torch.Tensor) -> torch.Tensor:
        B, _, L, _ = o_BHLD.shape
        return self.proj(o_BHLD.transpose(1, 2).reshape(B, L, self.width))

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        """Full (or whole-scale-prefix) sequence with the scale mask."""
        q, k, v = self._qkv(x_BLC)
        return self._out(scale_attention(q, k, v, self.patch_nums, self.kind, self.softmax_scale))

    def forward_scale(self, x_BlC: torch.Tensor, cache: Dict[str, object]):
        """One scale's tokens. Intra-scale mask: attention within them (no mask needed, `cache` untouched).
        Block-causal: `cache` (a dict owned by the caller) gains this scale's k/v and the queries see
        every cached scale."""
        q, k, v = self._qkv(x_BlC)
        if self.kind == "causal":
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        o = F.scaled_dot_product_attention(q, k, v, scale=self.softmax_scale)
        return self._out(o)
