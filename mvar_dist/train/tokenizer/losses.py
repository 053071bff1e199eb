"""Loss terms of the tokenizer objective (each switchable by its weight; 0 = off and not computed):
pixel L1 / L2, the quantiser loss (from `quant.quantize_train`), LPIPS, and the adversarial hinge
losses with the VQGAN adaptive weight and the optional LeCAM regulariser.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F


def pixel_terms(rec_B3HW: torch.Tensor, img_B3HW: torch.Tensor, l1: float, l2: float) -> Dict[str, torch.Tensor]:
    """{'l1': mean |rec - img|, 'l2': mean (rec - img)^2} in fp32, only the terms with a weight > 0."""
    out: Dict[str, torch.Tensor] = {}
    rec, img = rec_B3HW.float(), img_B3HW.float()
    if l1 > 0:
        out["l1"] = (rec - img).abs().mean()
    if l2 > 0:
        out["l2"] = F.mse_loss(rec, img)
    return out


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(G(z))))."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(G(z))."""
    return -logits_fake.float().mean()


def adaptive_weight(grad_rec: torch.Tensor, grad_gan: torch.Tensor, max_weight: float = 1e4,
                    eps: float = 1e-4) -> torch.Tensor:
    """VQGAN: ||grad L_rec|| / (||grad L_G|| + eps) at the last decoder layer, clamped to [0, max], detached."""
    w = grad_rec.float().norm() / (grad_gan.float().norm() + eps)
    return w.clamp(0.0, max_weight).detach()


class LeCam:
    """LeCAM regulariser (Tseng et al. 2021): EMAs of the mean real / fake logits, and
    ||relu(D(x) - ema_fake)||^2 + ||relu(ema_real - D(G(z)))||^2."""

    def __init__(self, decay: float = 0.999):
        self.decay = float(decay)
        self.ema_real: Optional[float] = None
        self.ema_fake: Optional[float] = None

    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        r, f = float(logits_real.detach().float().mean()), float(logits_fake.detach().float().mean())
        d = self.decay
        self.ema_real = r if self.ema_real is None else d * self.ema_real + (1 - d) * r
        self.ema_fake = f if self.ema_fake is None else d * self.ema_fake + (1 - d) * f

    def penalty(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real.float() - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake.float()).pow(2).mean())

    def state_dict(self) -> Dict[str, Optional[float]]:
        return {"ema_real": self.ema_real, "ema_fake": self.ema_fake}

    def load_state_dict(self, sd: Dict[str, Optional[float]]) -> None:
        self.ema_real, self.ema_fake = sd.get("ema_real"), sd.get("ema_fake")
