"""LPIPS (Zhang et al. 2018, v0.1, VGG variant) rebuilt on local files only.

Same computation as `lpips.LPIPS(net='vgg', version='0.1')`: inputs in [-1, 1] are shifted/scaled by
the ScalingLayer constants, passed through VGG16's conv stack, and at relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3 the features are unit-normalised over channels; the squared differences go through
the 1x1 "lin" convs (no bias) and are averaged over space and summed over layers -> (B, 1, 1, 1).

Weights never download: the VGG16 backbone comes from a file the user passes (torchvision's
`vgg16` state dict; `classifier.*` keys are ignored), the lin weights from the file the `lpips`
package ships (`lpips/weights/v0.1/vgg.pth`) or from an explicit path. The module is frozen.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # conv indices in torchvision vgg16.features
VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)             # relu after which LPIPS reads features (relu1_2 ... relu5_3)
TAP_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _read(path: str, what: str) -> Dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"could not read {what} {p}: {type(e).__name__}: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what} {p} is not a state dict of tensors")
    return sd


def packaged_lin_path() -> Optional[Path]:
    """lpips/weights/v0.1/vgg.pth inside the installed `lpips` package, or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return p if p.is_file() else None


def _vgg_features() -> nn.Sequential:
    layers: List[nn.Module] = []
    c_in = 3
    for v in VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, 1, 1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = _vgg_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, backbone: str, lin: Optional[str] = None) -> "LPIPS":
        m = cls()
        m.load_backbone(_read(backbone, "LPIPS backbone file (torchvision vgg16 state dict)"), backbone)
        lin_path = lin or packaged_lin_path()
        if lin_path is None:
            raise FileNotFoundError("LPIPS linear-layer weights not found: install the `lpips` package (its wheel "
                                    "ships weights/v0.1/vgg.pth) or pass loss.lpips_lin=<file>")
        m.load_lins(_read(str(lin_path), "LPIPS linear-layer weights"), str(lin_path))
        return m.eval().requires_grad_(False)

    def load_backbone(self, sd: Dict[str, torch.Tensor], where: str = "state dict") -> None:
        """Strict on `features.*` (the 13 convs); other keys (the classifier) are ignored."""
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        theirs = {k: v for k, v in sd.items() if k.startswith("features.")}
        missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
        bad = sorted(k for k in set(own) & set(theirs) if own[k].shape != theirs[k].shape)
        if missing or unexpected or bad:
            raise ValueError(f"LPIPS backbone {where} is not a torchvision vgg16 state dict: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}, mis-shaped {bad[:4]}")
        self.features.load_state_dict({k[len("features."):]: v for k, v in theirs.items()})

    def load_lins(self, sd: Dict[str, torch.Tensor], where: str = "state dict") -> None:
        """The `lpips` package's keys `lin{k}.model.1.weight` (or `lins.{k}.weight`)."""
        for k, lin in enumerate(self.lins):
            key = next((n for n in (f"lin{k}.model.1.weight", f"lins.{k}.weight") if n in sd), None)
            if key is None or sd[key].shape != lin.weight.shape:
                raise ValueError(f"LPIPS lin weights {where}: need lin{k}.model.1.weight of shape "
                                 f"{tuple(lin.weight.shape)}")
            with torch.no_grad():
                lin.weight.copy_(sd[key])

    def _taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
                if i == TAPS[-1]:
                    break
        return out

    def forward(self, a_B3HW: torch.Tensor, b_B3HW: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, 1) LPIPS distance between images in [-1, 1]."""
        total = None
        for lin, fa, fb in zip(self.lins, self._taps(a_B3HW.float()), self._taps(b_B3HW.float())):
            d = (_unit(fa) - _unit(fb)).square()
            v = lin(d).mean(dim=(2, 3), keepdim=True)
            total = v if total is None else total + v
        return total


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)
