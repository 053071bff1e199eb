"""Convolutional encoder/decoder of the VAR VQVAE (docs/tokenizer.md, "Architecture").

Module and attribute names follow the official checkpoint's key names (`encoder.down.2.block.0.
nin_shortcut.weight`, ...), because `from_official` loads those keys unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    if channels % 32:
        raise ValueError(f"VQVAE GroupNorm uses 32 groups; channel count {channels} is not divisible by 32 "
                         f"(choose ch as a multiple of 32)")
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)
        self.scale = c ** -0.5

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        q_BCN, k_BCN, v_BCN = self.qkv(self.norm(x_BCHW)).reshape(B, 3, C, H * W).unbind(1)
        w_BNN = torch.bmm(q_BCN.transpose(1, 2), k_BCN).mul_(self.scale).softmax(dim=2)
        out_BCN = torch.bmm(v_BCN, w_BNN.transpose(1, 2))
        return x_BCHW + self.proj_out(out_BCN.reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        # asymmetric pad (right/bottom only) keeps the stride-2 grid aligned to the top-left corner
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_BCHW)))


class Level(nn.Module):
    """One resolution level: ResnetBlocks, attention after each block (lowest level only), resampler."""

    def __init__(self, cin: int, cout: int, n_blocks: int, with_attn: bool, resample: str):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n_blocks)) if with_attn else nn.ModuleList()
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)
        self.resample = resample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for j, blk in enumerate(self.block):
            x_BCHW = blk(x_BCHW)
            if len(self.attn):
                x_BCHW = self.attn[j](x_BCHW)
        if self.resample == "down":
            x_BCHW = self.downsample(x_BCHW)
        elif self.resample == "up":
            x_BCHW = self.upsample(x_BCHW)
        return x_BCHW


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int, num_res_blocks: int = 2,
                 in_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        cins = [ch * m for m in (1,) + tuple(ch_mult[:-1])]
        self.down = nn.ModuleList(
            Level(cins[i], ch * ch_mult[i], num_res_blocks, with_attn=(i == n - 1),
                  resample="down" if i != n - 1 else "none")
            for i in range(n))
        c_top = ch * ch_mult[-1]
        self.mid = Mid(c_top)
        self.norm_out = group_norm(c_top)
        self.conv_out = nn.Conv2d(c_top, z_channels, 3, 1, 1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], z_channels: int, num_res_blocks: int = 2,
                 out_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        c_top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_top, 3, 1, 1)
        self.mid = Mid(c_top)
        # up[i] is the level at resolution index i (up.0 = full resolution), built from the top down
        cins = [ch * ch_mult[i + 1] if i + 1 < n else c_top for i in range(n)]
        self.up = nn.ModuleList(
            Level(cins[i], ch * ch_mult[i], num_res_blocks + 1, with_attn=(i == n - 1),
                  resample="up" if i != 0 else "none")
            for i in range(n))
        self.norm_out = group_norm(ch * ch_mult[0])
        self.conv_out = nn.Conv2d(ch * ch_mult[0], out_channels, 3, 1, 1)

    def forward(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCHW))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
