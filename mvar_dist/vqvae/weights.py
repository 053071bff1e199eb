"""Tokenizer weights in the official key layout: reading (.pth / .safetensors / dict), strict checks
with readable errors, hyper-parameter inference, atomic saving, the identity hash, and the
deterministic random initialisation used when no checkpoint is configured.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
import torch.nn as nn

from mvar_dist.errors import OperatorError
from mvar_dist.fsio import atomic_path

EMA_KEY = "quantize.ema_vocab_hit_SV"  # usage statistics; its first dim (scale count) may differ

StateDict = Dict[str, torch.Tensor]
_WRAPPER_KEYS = ("state_dict", "model", "vae", "module")


def read_state_dict(sd_or_path: Union[str, os.PathLike, Mapping[str, Any]]) -> StateDict:
    """A flat {official key: tensor} dict from a path (.pth via weights_only, .safetensors) or a dict."""
    if isinstance(sd_or_path, (str, os.PathLike)):
        path = Path(sd_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - re-raised with the file name and the likely cause
                raise ValueError(f"could not read tokenizer checkpoint {path} with torch.load(weights_only=True): "
                                 f"{type(e).__name__}: {e}") from e
        where = str(path)
    elif isinstance(sd_or_path, Mapping):
        sd, where = sd_or_path, "the given state dict"
    else:
        raise TypeError(f"expected a state dict or a path to one, got {type(sd_or_path).__name__}")
    # accept one level of wrapping ({"model": {...}}) as written by common training scripts
    if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = [k for k in _WRAPPER_KEYS if isinstance(sd.get(k), Mapping)]
        if inner:
            sd = sd[inner[0]]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{where} does not hold a state dict (got {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where}: entries that are not named tensors: {bad[:5]}")
    check_finite(sd, where)
    return dict(sd)


class NonFiniteWeightsError(OperatorError, ValueError):
    """A weight file holds NaN/Inf values (a diverged run): refused, every token id would be garbage."""


def check_finite(sd: Mapping[str, torch.Tensor], where: str,
                 advice: str = "it comes from a diverged run; use an earlier checkpoint or export") -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeightsError(f"{where} holds NaN/Inf values in {len(bad)} tensor(s) (e.g. {bad[0]}); {advice}")


def infer_hparams(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """vocab_size, z_channels, ch, ch_mult, share_quant_resi, num_res_blocks read off the tensor shapes."""
    need = ("quantize.embedding.weight", "encoder.conv_in.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not a VAR VQVAE state dict: missing {missing} (keys must use the official names, "
                         f"e.g. 'encoder.conv_in.weight', without a prefix)")
    vocab_size, z_channels = sd["quantize.embedding.weight"].shape
    ch = sd["encoder.conv_in.weight"].shape[0]
    mult, i = [], 0
    while f"encoder.down.{i}.block.0.conv1.weight" in sd:
        mult.append(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch)
        i += 1
    out: Dict[str, Any] = {"vocab_size": int(vocab_size), "z_channels": int(z_channels), "ch": int(ch)}
    if mult:
        out["ch_mult"] = tuple(mult)
        blocks = 0
        while f"encoder.down.0.block.{blocks}.conv1.weight" in sd:
            blocks += 1
        out["num_res_blocks"] = blocks
    shared = {int(m.group(1)) for k in sd if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))}
    if shared:
        out["share_quant_resi"] = max(shared) + 1
    elif "quantize.quant_resi.qresi.weight" in sd:
        out["share_quant_resi"] = 1
    elif any(re.match(r"quantize\.quant_resi\.\d+\.", k) for k in sd):
        out["share_quant_resi"] = 0
    return out


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str = "state dict") -> None:
    """load_state_dict(strict=True), except the EMA usage buffer may have another shape (ours is kept).
    Fails listing every missing / unexpected / mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(own) & set(sd) if k != EMA_KEY and sd[k].shape != own[k].shape)
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {label} key(s): {shown}")
        raise ValueError(f"tokenizer {where} does not match the model built with {module.extra_repr()}: "
                         + "; ".join(parts) + ". Check vocab_size / ch / ch_mult / z_channels / share_quant_resi / "
                         "patch_nums, and that keys use the official names without a prefix.")
    sd = dict(sd)
    if EMA_KEY in sd and sd[EMA_KEY].shape != own[EMA_KEY].shape:
        sd[EMA_KEY] = own[EMA_KEY]
    module.load_state_dict(sd, strict=True)


def official_state_dict(module: nn.Module) -> StateDict:
    """Detached, contiguous fp32 CPU copies under the official key names."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def weights_hash(module: nn.Module) -> str:
    """sha256 hex over (name, dtype, shape, little-endian bytes) of every entry, sorted by name,
    without the EMA usage buffer: the identity of a tokenizer, independent of file format."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        if k == EMA_KEY:
            continue
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{str(t.dtype).replace('torch.', '')}|{list(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_official(module: nn.Module, path: Union[str, os.PathLike], hparams: Mapping[str, Any]) -> Path:
    """Write the official-key state dict atomically: .safetensors (with hparams metadata) or .pth."""
    path = Path(path)
    sd = official_state_dict(module)
    check_finite(sd, "the tokenizer", f"not writing {path} (a diverged model is never saved or exported)")
    with atomic_path(path, mkdir=True) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={"hparams": json.dumps(dict(hparams)), "format": "var-vqvae-official"})
        else:
            torch.save(sd, str(tmp))
    return path


@torch.no_grad()
def random_init_(vae: nn.Module, seed: int) -> None:
    """Deterministic random weights (same seed -> same tensors, same hash).

    conv weight ~ N(0, 1/fan_in), conv bias ~ N(0, 0.05^2), GroupNorm weight ~ U(0.5, 1.5), bias
    ~ N(0, 0.1^2). The codebook is N(0, 1) scaled to 0.6x the std of the encoder output on a fixed
    probe image of at most 64 px (rounded to 2 significant digits so thread-count jitter cannot change the weights):
    codes then sit where the latents are and the quantiser uses many different ids.
    """
    g = torch.Generator().manual_seed(int(seed))
    for _, m in vae.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * fan_in ** -0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        elif isinstance(m, nn.GroupNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    # a 64 px probe is enough to measure the latent scale and keeps the full-size init at ~1 s of CPU
    side = vae.resolution if vae.resolution <= 64 or vae.downsample > 64 else 64
    probe = probe_image(side, seed=int(seed)).to(vae.codebook.device)
    std = float(vae.encode_latent(probe).float().std())
    vae.quantize.embedding.weight.mul_(float(f"{0.6 * std:.2g}"))


def probe_image(resolution: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, R, R) smooth deterministic test pattern in [-1, 1] (sums of 2-D sinusoids)."""
    g = torch.Generator().manual_seed(seed + 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, resolution), torch.linspace(0, 1, resolution), indexing="ij")
    chans = []
    for _ in range(3):
        p = torch.rand(4, 4, generator=g)
        c = sum(torch.sin(2 * torch.pi * ((1 + 5 * p[j, 0]) * xx + (1 + 5 * p[j, 1]) * yy) + 6.28 * p[j, 2])
                * (0.2 + 0.3 * p[j, 3]) for j in range(4))
        chans.append(c)
    return torch.stack(chans)[None].clamp(-1, 1)
