"""The FID variant of InceptionV3 (TensorFlow's 2015-12-05 graph), built here, loading pytorch-fid's weights file.

Parameter names follow the standard file `pt_inception-2015-12-05-6726825d.pth` exactly, so it loads by its
own key names. Two input modes (the `mode` of the net; docs/evaluation.md, "Two modes"):

    "adm"          ADM's evaluator (the VAR / M-VAR papers' numbers): pixels 0..255, TF1's legacy bilinear resize
                   to 299 (no half-pixel centres), (x - 128) / 128; Inception Score from the logits without fc bias
    "pytorch-fid"  pytorch-fid: pixels / 255, torch bilinear resize (half-pixel centres), 2x - 1; IS with the bias

The FID variant differs from the ImageNet-classifier InceptionV3 in three places that the TF graph has: average
pools exclude padding, and the last block max-pools.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.fsio import sha256_file

STANDARD_FILE = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + STANDARD_FILE
NUM_LOGITS = 1008  # the TF graph's softmax layer has 1008 outputs (1000 classes + 8 unused)
FEATURE_DIM = 2048
SPATIAL_CHANNELS = 7  # sFID taps the first 7 channels of a 17x17 map: 7 * 17 * 17 = 2023 dims
INPUT_SIZE = 299
MODES = ("adm", "pytorch-fid")
DEFAULT_MODE = "adm"  # the ImageNet protocol's: ADM's reference batches were made this way
# the logits each mode's Inception Score uses: ADM's softmax has no bias; pytorch-fid-era code used fc's output
IS_LOGITS = {"adm": "logits_unbiased", "pytorch-fid": "logits"}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown Inception mode {mode!r}: one of {MODES}")
    return mode


def resize_bilinear_tf1(x_B3HW: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 `ResizeBilinear(align_corners=False, half_pixel_centers=False)` in float32.

    Output pixel o reads source position o * (in / out), both factors float32, with no half-pixel shift (torch's
    align_corners=False shifts by half a pixel). TF lerps along x within the two source rows, then along y
    between them; doing the x pass over all rows first computes the same float32 expressions in the same order.
    """
    x = x_B3HW.float()
    for dim in (3, 2):  # x, then y
        n_in = x.shape[dim]
        if n_in == size:
            continue
        scale = torch.tensor(n_in / size, dtype=torch.float32)  # TF: static_cast<float>(in) / out
        src = torch.arange(size, dtype=torch.float32, device=x.device) * scale.to(x.device)
        lo = src.floor()
        frac = src - lo
        lo = lo.long().clamp_(0, n_in - 1)
        hi = src.ceil().long().clamp_(max=n_in - 1)
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        x = a + (b - a) * frac.view(shape)
    return x


class InceptionWeightsError(ValueError):
    """The Inception weights file is missing, corrupt or not the FID InceptionV3."""


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3, as TF) -> ReLU; names `conv`/`bn` as in the weights file."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x):
    # TF's average pool divides by the number of valid pixels at the border
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # Mixed_5b/5c/5d: 35x35
    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_ch, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([a, b, c, d], 1)


class BlockB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # Mixed_6b..6e: 17x17 with factorised 7x7 convs
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([a, b, c, d], 1)


class BlockD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # Mixed_7b/7c: 8x8 with split 1x3/3x1 branches
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        # the TF graph's last block (Mixed_7c) max-pools where the paper's net average-pools
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat([a, b, c, self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """`forward(img_B3HW)` -> dict of float32 `pool` (B, 2048), `logits` (B, 1008, with fc bias),
    `logits_unbiased` (B, 1008, pool @ fc.weight.T) and `spatial` (B, 2023).

    img_B3HW: uint8 pixels (exact, the evaluator's input) or float in [0, 1] (x 255 in "adm" mode).
    Build with random weights, then `load_weights(path)` (or use `from_file`).
    """

    def __init__(self, mode: str = DEFAULT_MODE):
        super().__init__()
        self.mode = check_mode(mode)  # input preprocessing and IS logits; see the module docstring
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)
        self.weights_sha256 = ""  # sha256 of the loaded file; "" = random weights (never report FID from these)
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path, map_location="cpu", mode: str = DEFAULT_MODE) -> "FIDInceptionV3":
        net = cls(mode)
        net.load_weights(path, map_location)
        return net

    def load_weights(self, path, map_location="cpu") -> None:
        sd, digest = read_weights(path, map_location)
        self.load_checked(sd)
        self.weights_sha256 = digest

    def load_checked(self, sd: Dict[str, torch.Tensor]) -> None:
        """Strict load by the standard key names; a wrong file fails naming the offending keys."""
        own = self.state_dict()
        # files saved before BatchNorm tracked batches lack this counter; it is unused in eval mode
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        need = {k for k in own if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(need - set(sd)), sorted(set(sd) - need)
        bad_shape = [f"{k}: file {tuple(sd[k].shape)} vs net {tuple(own[k].shape)}"
                     for k in sorted(need & set(sd)) if sd[k].shape != own[k].shape]
        if missing or unexpected or bad_shape:
            raise InceptionWeightsError(
                "not a pytorch-fid FID-InceptionV3 state dict: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                f"{len(bad_shape)} shape mismatches (e.g. {bad_shape[:2]})")
        self.load_state_dict(sd, strict=False)

    def preprocess(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """The first conv's input (B, 3, 299, 299) in this net's mode."""
        u8 = img_B3HW.dtype == torch.uint8
        if self.mode == "adm":
            x = img_B3HW.float() if u8 else img_B3HW.float() * 255
            # 1/128 is a power of two: the same bits as the graph's (x - 128) * 0.0078125
            return (resize_bilinear_tf1(x) - 128) / 128
        x = img_B3HW.float() / 255 if u8 else img_B3HW.float()
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def forward(self, img_B3HW: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.preprocess(img_B3HW)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        # sFID's spatial tap: the 1x1 branch of the fourth 17x17 block (TF node mixed_6/conv), first 7 channels,
        # flattened channels-last as TF lays it out so that ADM's reference mu_s/sigma_s line up (recomputing
        # this 1x1 conv costs <1% of the forward)
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_6e(self.Mixed_6d(x))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool_BD = x.mean(dim=(2, 3))
        return {"pool": pool_BD, "logits": self.fc(pool_BD), "logits_unbiased": pool_BD @ self.fc.weight.T,
                "spatial": spatial}


def read_weights(path, map_location="cpu"):
    """(state_dict, sha256) of a weights file; checks the hash prefix that torch-hub style names carry."""
    p = Path(path)
    if not p.is_file():
        raise InceptionWeightsError(
            f"Inception weights file not found: {p}. Get {STANDARD_FILE} from {STANDARD_URL} "
            "(or `launchers/eval_service.py --fetch-inception DIR`) and pass its path.")
    digest = sha256_file(p)
    m = re.search(r"-([0-9a-f]{8,})\.pth$", p.name)
    if m and not digest.startswith(m.group(1)):
        raise InceptionWeightsError(
            f"{p}: sha256 {digest[:16]}... does not start with {m.group(1)} named in the file name; "
            "the file is corrupt or truncated")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device=str(map_location))
        else:
            sd = torch.load(str(p), map_location=map_location, weights_only=True)
    except Exception as e:  # any unpickling / format failure is the same problem to the user
        raise InceptionWeightsError(f"{p}: cannot read as a state dict ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict):
        raise InceptionWeightsError(f"{p}: holds a {type(sd).__name__}, expected a state dict")
    return sd, digest


def random_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights in the standard key names, scaled so activations stay O(1) through the net.

    For tests and benchmarks only: features from these weights are meaningless as FID.
    """
    g = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    with torch.device("meta"):  # shapes only: skips the default init of 24M parameters
        shapes = FIDInceptionV3().state_dict()
    for k, v in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("conv.weight") or k == "fc.weight":
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.running_var"):
            sd[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        elif k.endswith("bn.weight"):
            sd[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        else:  # bn bias / running_mean / fc bias
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
    return sd


def build_inception(weights: Optional[str], device="cpu", mode: str = DEFAULT_MODE) -> FIDInceptionV3:
    """The network with the user's weights file; raises InceptionWeightsError if it is missing or wrong."""
    if not weights:
        raise InceptionWeightsError(
            f"no Inception weights given: pass the path of {STANDARD_FILE} ({STANDARD_URL})")
    return FIDInceptionV3.from_file(weights, mode=mode).to(device)
