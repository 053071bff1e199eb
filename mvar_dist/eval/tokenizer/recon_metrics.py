"""Reconstruction metrics of the tokenizer evaluation: PSNR and SSIM (our own implementations).

Both take image batches (B, 3, H, W) with values in [0, 1] (data range L = 1; the numbers equal those
computed on [0, 255] with L = 255, because both metrics depend only on x / L).

PSNR (per image): 10 * log10(L^2 / MSE), the MSE over all pixels and channels of the image. An image
reconstructed exactly has MSE 0 and PSNR +inf; `psnr` returns that inf (no cap, no epsilon) and the
evaluation reports the mean over images of the finite values plus the count of exact ones (see
`summarise_psnr`).

SSIM (Wang et al. 2004, the reference MATLAB `ssim.m` settings): an 11x11 Gaussian window with
sigma 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2; local means,
variances (population, i.e. divided by the window weight sum 1) and covariance from the window, the
SSIM map over the 'valid' positions (no padding: (H-10) x (W-10)), its mean per channel, then the
mean over the 3 channels -> one value per image. Images need both sides >= 11.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"need two image batches of the same (B, C, H, W) shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def psnr(a_BCHW: torch.Tensor, b_BCHW: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) float64 PSNR in dB per image; +inf where the two images are identical."""
    _check_pair(a_BCHW, b_BCHW)
    mse_B = (a_BCHW.double() - b_BCHW.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(float(data_range) ** 2 / mse_B)  # mse 0 -> +inf


def summarise_psnr(values_B: Sequence[float]) -> Dict[str, float]:
    """psnr: mean over images with a finite PSNR (nan when none is finite), psnr_exact: how many are +inf."""
    vals = [float(v) for v in values_B]
    finite = [v for v in vals if math.isfinite(v)]
    return {"psnr": sum(finite) / len(finite) if finite else float("nan"),
            "psnr_exact": len(vals) - len(finite)}


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a_BCHW: torch.Tensor, b_BCHW: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) float64 SSIM per image: the valid-window SSIM map averaged per channel, then over channels."""
    _check_pair(a_BCHW, b_BCHW)
    B, C, H, W = a_BCHW.shape
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {H}x{W}")
    x, y = a_BCHW.double(), b_BCHW.double()
    w = gaussian_window().to(x.device).expand(C, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=C)  # depthwise, no padding ('valid')

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x * mu_x
    var_y = filt(y * y) - mu_y * mu_y
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s_map.mean(dim=(2, 3)).mean(dim=1)


def to_unit_uint8(x_B3HW: torch.Tensor) -> torch.Tensor:
    """Model images in [-1, 1] -> float in [0, 1] on the 8-bit grid (what a saved PNG would hold)."""
    return ((x_B3HW.float().clamp(-1, 1) + 1) * 127.5).round().div(255.0)
