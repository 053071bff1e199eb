"""Import/export of official M-VAR (`d{depth}.pth`) and VAR (`var_d{depth}.pth`) state dicts.

Our parameter names are the official ones; only the official non-learned buffers differ: `lvl_1L`,
`attn_bias_for_masking`, `blocks.*.attn.zero_k_bias` and (M-VAR) `blocks.*.attn.patch_nums`. Import
accepts or omits them (and checks the ones that encode structure); export regenerates them so the
official code loads the file with strict=True.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, Mapping

import torch

from mvar_dist.config import ModelConfig
from mvar_dist.config.schema import DEFAULT_PATCH_NUMS
from mvar_dist.ops.attention import dense_mask, scale_bounds, scale_ids

_BUFFER_RE = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.(zero_k_bias|patch_nums))$")


def read_state_dict(sd_or_path) -> Dict[str, torch.Tensor]:
    """A state dict from a mapping or a .pth/.pt/.bin (weights_only) or .safetensors file."""
    if isinstance(sd_or_path, Mapping):
        return dict(sd_or_path)
    path = Path(sd_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return dict(sd)


def _need(sd, key):
    if key not in sd:
        raise ValueError(f"not an official M-VAR/VAR state dict: missing {key!r}")
    return sd[key]


def infer_hparams(sd: Mapping[str, torch.Tensor]) -> dict:
    """ModelConfig fields + patch_nums/vocab_size/z_channels inferred from the keys and shapes."""
    C, z = _need(sd, "word_embed.weight").shape
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise ValueError("not an official M-VAR/VAR state dict: no blocks.* keys")
    has_mamba = "blocks.0.mamba.in_proj.weight" in sd
    arch = "mvar" if has_mamba else "var"
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else max(C // 64, 1)
    hp = dict(arch=arch, depth=depth, width=int(C), num_heads=int(heads), attn_l2_norm=l2,
              num_classes=int(_need(sd, "class_emb.weight").shape[0]) - 1,
              mlp_ratio=_need(sd, "blocks.0.ffn.fc1.weight").shape[0] / C,
              vocab_size=int(_need(sd, "head.weight").shape[0]), z_channels=int(z))
    if has_mamba:
        d_inner = sd["blocks.0.mamba.norm.weight"].shape[0]
        nheads = sd["blocks.0.mamba.A_log"].shape[0]
        conv_w = sd["blocks.0.mamba.conv1d.weight"]
        hp.update(expand=d_inner // C, mamba_headdim=d_inner // nheads,
                  d_state=(conv_w.shape[0] - d_inner) // 2, d_conv=conv_w.shape[-1])
    L = _need(sd, "pos_1LC").shape[1]
    if "blocks.0.attn.patch_nums" in sd:
        hp["patch_nums"] = tuple(int(round(math.sqrt(int(n)))) for n in sd["blocks.0.attn.patch_nums"].tolist())
    elif scale_bounds(DEFAULT_PATCH_NUMS)[-1] == L:
        hp["patch_nums"] = DEFAULT_PATCH_NUMS
    return hp


def load_official(cls, sd_or_path, **overrides):
    """Build `cls` (MVAR) from an official state dict; `overrides` win over inferred values."""
    sd = read_state_dict(sd_or_path)
    hp = {**infer_hparams(sd), **overrides}
    if "patch_nums" not in hp:
        raise ValueError(f"cannot infer patch_nums from pos_1LC length {sd['pos_1LC'].shape[1]}; pass patch_nums=")
    patch_nums, vocab, z = tuple(hp.pop("patch_nums")), hp.pop("vocab_size"), hp.pop("z_channels")
    fields = {f for f in ModelConfig.__dataclass_fields__}
    unknown = set(hp) - fields
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; ModelConfig fields are {sorted(fields)}")
    hp.setdefault("drop_path_rate", 0.0)
    hp.setdefault("cond_drop_rate", 0.1)
    model = cls(ModelConfig(**hp), patch_nums, vocab, z)
    _check_buffers(model, sd)
    params = {k: v.float() if v.is_floating_point() else v for k, v in sd.items() if not _BUFFER_RE.match(k)}
    missing, unexpected = model.load_state_dict(params, strict=False)
    if missing or unexpected:
        raise ValueError(f"state dict does not fit {model.arch} depth {model.depth}: "
                         f"missing {sorted(missing)[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected {sorted(unexpected)[:8]}{'...' if len(unexpected) > 8 else ''}")
    return model


def _check_buffers(model, sd) -> None:
    """The buffers that encode structure must agree with the model we built (else a wrong patch_nums)."""
    if "lvl_1L" in sd and not torch.equal(sd["lvl_1L"].long().cpu(), model.lvl_1L.cpu()):
        raise ValueError(f"checkpoint lvl_1L does not match patch_nums {model.patch_nums}")
    pn2 = torch.tensor([p * p for p in model.patch_nums])
    for k, v in sd.items():
        if k.endswith("attn.patch_nums") and not torch.equal(v.long().cpu(), pn2):
            raise ValueError(f"checkpoint {k}={v.tolist()} does not match patch_nums {model.patch_nums}")


def export_official(model) -> Dict[str, torch.Tensor]:
    """Official-named state dict (parameters + regenerated buffers), CPU tensors."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pns = model.patch_nums
    sd["lvl_1L"] = scale_ids(pns).view(1, -1).clone()
    allowed = dense_mask(pns, model.spec.mask)
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))
    sd["attn_bias_for_masking"] = bias.view(1, 1, *allowed.shape)
    for i in range(model.depth):
        sd[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(model.width, dtype=sd["pos_start"].dtype)
        if model.spec.mask == "intra":  # the official M-VAR attention keeps its scale sizes as a buffer
            sd[f"blocks.{i}.attn.patch_nums"] = torch.tensor([p * p for p in pns], dtype=torch.int32)
    return sd
