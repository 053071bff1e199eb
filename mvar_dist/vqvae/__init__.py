"""The VAR multi-scale residual VQVAE tokenizer (official `vae_ch160v4096z32.pth` compatible)."""
from .quantizer import OFFICIAL_PHI_TABLE_K4_SN10, area_resize, bicubic_resize, phi_table
from .vqvae import DEFAULT_PATCH_NUMS, MultiScaleVQVAE

__all__ = ["MultiScaleVQVAE", "DEFAULT_PATCH_NUMS", "phi_table", "OFFICIAL_PHI_TABLE_K4_SN10", "area_resize",
           "bicubic_resize"]
