"""Parameter and FLOP counts for a run config, before (or without) building the model.

The closed forms follow the shapes of model_spec 2.2-2.10. When `mvar_dist.model` is importable the
model itself is asked (built on the meta device, so a 3B model costs no memory); the formulas stay
as the fallback and as a cross-check in the tests.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamCount:
    total: int            # every learnable parameter (buffers and the frozen VQVAE excluded)
    non_embedding: int    # total minus word/class/position/level embeddings (Kaplan's convention)
    source: str           # "model" (asked the model) or "formula"


def _mamba_block_params(C: int, d_state: int, d_conv: int, expand: int, headdim: int) -> int:
    d_inner = expand * C
    nheads = d_inner // headdim
    in_proj = (2 * d_inner + 2 * d_state + nheads) * C          # z, x, B, C, dt; no bias
    conv_dim = d_inner + 2 * d_state
    conv = conv_dim * d_conv + conv_dim                           # depthwise weight + bias
    return in_proj + conv + 3 * nheads + d_inner + C * d_inner    # dt_bias/A_log/D, norm, out_proj


def _block_params(m, C: int) -> int:
    hidden = round(m.mlp_ratio * C)
    attn = 3 * C * C + 2 * C + C * C + C + (m.num_heads if m.attn_l2_norm else 0)
    ffn = C * hidden + hidden + hidden * C + C
    chunks = 9 if m.arch == "mvar" else 6                         # AdaLN rows: 3 or 2 gated branches
    ada = chunks * C * C + chunks * C
    mamba = _mamba_block_params(C, m.d_state, m.d_conv, m.expand, m.mamba_headdim) if m.arch == "mvar" else 0
    return attn + ffn + ada + mamba


def formula_params(model_cfg, patch_nums: Sequence[int], vocab_size: int, z_channels: int) -> ParamCount:
    """Exact count from the official shapes (model_spec 2.10); `model_cfg` must be resolved."""
    C = model_cfg.width
    L = sum(p * p for p in patch_nums)
    embedding = (z_channels * C + C) + (model_cfg.num_classes + 1) * C + C + L * C + len(patch_nums) * C
    head = (2 * C * C + 2 * C) + (vocab_size * C + vocab_size)
    blocks = model_cfg.depth * _block_params(model_cfg, C)
    total = embedding + head + blocks
    return ParamCount(total=total, non_embedding=total - embedding, source="formula")


def _model_params(run_cfg) -> ParamCount:
    import torch
    from mvar_dist.model import MVAR  # noqa: deferred: the model package may not exist yet

    with torch.device("meta"):
        model = MVAR(run_cfg.model, tuple(run_cfg.tokenizer.patch_nums), run_cfg.tokenizer.vocab_size,
                     run_cfg.tokenizer.z_channels)
    total = int(model.num_params())
    emb_names = ("word_embed", "class_emb", "pos_start", "pos_1LC", "lvl_embed")
    embedding = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in emb_names)
    return ParamCount(total=total, non_embedding=total - embedding, source="model")


def count_params(run_cfg, prefer_model: bool = True) -> ParamCount:
    """Parameter count of a resolved RunConfig: the model's own count when importable, else the formula."""
    if prefer_model:
        try:
            return _model_params(run_cfg)
        except ImportError:
            pass
        except Exception as exc:  # a model that cannot be built on "meta" should not block a dry run
            log.warning("counting parameters with the formula: the model failed on the meta device (%s)", exc)
    t = run_cfg.tokenizer
    return formula_params(run_cfg.model, t.patch_nums, t.vocab_size, t.z_channels)


def attention_pairs(arch: str, patch_nums: Sequence[int]) -> int:
    """(query, key) pairs per layer per image: block-causal for VAR, intra-scale for M-VAR."""
    sizes = [p * p for p in patch_nums]
    if arch == "mvar":
        return sum(s * s for s in sizes)
    seen, pairs = 0, 0
    for s in sizes:
        seen += s
        pairs += s * seen
    return pairs


def formula_flops_per_image(model_cfg, patch_nums: Sequence[int], vocab_size: int, z_channels: int,
                            train: bool = True) -> float:
    """Matmul FLOPs of one image (2 per multiply-add); training = forward + 2x for the backward.

    Per token: every Linear in the blocks, the word embedding and the head. Per sample: the AdaLN
    projections (the condition is one vector per image). Attention scores and values: 4*C per pair.
    Mamba2: the causal conv and the SSD state update + read-out (~6 * d_inner * d_state per token).
    Elementwise work (norms, activations, softmax) is left out, as in the usual 6ND estimate.
    """
    m = model_cfg
    C, L = m.width, sum(p * p for p in patch_nums)
    hidden = round(m.mlp_ratio * C)
    per_token = 4 * C * C + 2 * C * hidden                        # qkv + proj, fc1 + fc2
    chunks = 6
    if m.arch == "mvar":
        d_inner = m.expand * C
        nheads = d_inner // m.mamba_headdim
        conv_dim = d_inner + 2 * m.d_state
        per_token += (2 * d_inner + 2 * m.d_state + nheads) * C + C * d_inner  # in/out projections
        per_token += conv_dim * m.d_conv + 3 * d_inner * m.d_state             # conv, SSD (as MACs)
        chunks = 9
    fwd = 2.0 * L * per_token * m.depth
    fwd += 4.0 * C * attention_pairs(m.arch, patch_nums) * m.depth
    fwd += 2.0 * chunks * C * C * m.depth + 2.0 * 2 * C * C          # AdaLN per sample, head_nm
    fwd += 2.0 * L * (z_channels * C + C * vocab_size)               # word_embed, head
    return 3.0 * fwd if train else fwd


def flops_per_image(run_cfg, train: bool = True, prefer_model: bool = True) -> float:
    """The model's `flops_per_image(train)` when importable, else `formula_flops_per_image`."""
    if prefer_model:
        try:
            import torch
            from mvar_dist.model import MVAR  # noqa: deferred

            with torch.device("meta"):
                model = MVAR(run_cfg.model, tuple(run_cfg.tokenizer.patch_nums), run_cfg.tokenizer.vocab_size,
                             run_cfg.tokenizer.z_channels)
            return float(model.flops_per_image(train=train))
        except ImportError:
            pass
        except Exception as exc:
            log.warning("counting FLOPs with the formula: the model failed on the meta device (%s)", exc)
    t = run_cfg.tokenizer
    return formula_flops_per_image(run_cfg.model, t.patch_nums, t.vocab_size, t.z_channels, train=train)
