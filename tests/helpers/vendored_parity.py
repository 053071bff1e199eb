"""Seeded weights shared by tests/fixtures/make_parity_fixtures.py (which runs the real pytorch-fid / lpips) and
the default-suite tests that compare our code against the vendored outputs (no torchvision needed).

Only what is too large to vendor is rebuilt from a seed here (the 24M Inception and 15M VGG16 weights); the
images, the small LPIPS lin weights and the expected outputs are stored in the fixture files. The weights'
sha256 is stored too, so a change of the seeded construction fails loudly instead of as a parity mismatch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PYTORCH_FID_FIXTURE = FIXTURES / "pytorch_fid_parity.npz"
LPIPS_FIXTURE = FIXTURES / "lpips_parity.npz"
INCEPTION_SEED = 7
VGG_SEED = 1


def state_sha256(sd: Dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' bytes in sorted key order (names included)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def inception_weights() -> Dict[str, torch.Tensor]:
    from mvar_dist.eval.inception import random_state_dict

    return random_state_dict(seed=INCEPTION_SEED)


def vgg_backbone() -> Dict[str, torch.Tensor]:
    """A torchvision-layout vgg16 `features.*` state dict, N(0, 0.05) in our LPIPS module's key order."""
    from mvar_dist.train.tokenizer import lpips as L

    g = torch.Generator().manual_seed(VGG_SEED)
    with torch.device("meta"):
        shapes = L.LPIPS().features.state_dict()
    return {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05 for k, v in shapes.items()}


def load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
