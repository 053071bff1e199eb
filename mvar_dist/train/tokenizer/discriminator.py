"""PatchGAN discriminator (the pix2pix / taming `NLayerDiscriminator` layout): a 4x4 stride-2 conv
stack whose output is a map of real/fake logits, one per overlapping patch.

Normalisation is GroupNorm instead of BatchNorm so that the logits of a sample do not depend on the
rest of its (per-rank) batch: the data-parallel trainer then gives the same result at any world size.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _norm(c: int) -> nn.GroupNorm:
    groups = 32 if c % 32 == 0 else (8 if c % 8 == 0 else 1)
    return nn.GroupNorm(groups, c)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), _norm(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():  # DCGAN init, as taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.main(img_B3HW)
