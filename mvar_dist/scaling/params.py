"""Parameter and FLOP counts for a run config, before (or without) building the model.

The closed forms live in `mvar_dist.model.flops` (docs/model.md, "Parameter counts" and "FLOPs"):
FLOPs come from there alone; parameters are counted on the model itself (built on the meta
device, so a 3B model costs no memory) with the closed form as the fallback and the cross-check.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mvar_dist.model.flops import forward_flops, param_counts, train_flops

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamCount:
    total: int            # every learnable parameter (buffers and the frozen VQVAE excluded)
    non_embedding: int    # total minus word/class/position/level embeddings (Kaplan's convention)
    source: str           # "model" (asked the model) or "formula"


def _sizes(run_cfg):
    t = run_cfg.tokenizer
    return run_cfg.model, tuple(t.patch_nums), t.vocab_size, t.z_channels


def _model_params(run_cfg) -> ParamCount:
    import torch
    from mvar_dist.model import MVAR

    with torch.device("meta"):
        model = MVAR(*_sizes(run_cfg))
    total = int(model.num_params())
    emb_names = ("word_embed", "class_emb", "pos_start", "pos_1LC", "lvl_embed")
    embedding = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in emb_names)
    return ParamCount(total=total, non_embedding=total - embedding, source="model")


def count_params(run_cfg, prefer_model: bool = True) -> ParamCount:
    """Parameter count of a resolved RunConfig: the model's own count, else the closed form."""
    if prefer_model:
        try:
            return _model_params(run_cfg)
        except Exception as exc:  # a model that cannot be built on "meta" should not block a dry run
            log.warning("counting parameters with the formula: the model failed on the meta device (%s)", exc)
    total, embedding = param_counts(*_sizes(run_cfg))
    return ParamCount(total=total, non_embedding=total - embedding, source="formula")


def flops_per_image(run_cfg, train: bool = True) -> float:
    """Matmul FLOPs of one image (2 per multiply-add): a training step (forward + backward) or a
    forward; the same count as the model's `flops_per_image`."""
    return float((train_flops if train else forward_flops)(*_sizes(run_cfg)))
