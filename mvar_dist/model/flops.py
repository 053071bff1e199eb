"""FLOP counts per image, from the architecture (no tracing): the numerator of MFU.

Counted (2 FLOPs per multiply-add): every Linear (word_embed, qkv, proj, fc1, fc2, ada_lin, head_nm,
head, Mamba in_proj/out_proj), attention scores and weighted values over the pairs the scale mask
allows (M-VAR intra-scale: Σpn⁴; VAR block-causal), the depthwise causal conv, and the SSD recurrence
per token and head: decay (P·N) + input outer product (2·P·N, dt folded into x) + state add (P·N) +
readout S·C (2·P·N) + skip D·x (2·P) = 6·P·N + 2·P. Norms, activations, gates and softmax are left out,
as is usual for MFU. Training = 3x forward (backward = 2x forward). Sampling = one forward over all
tokens per CFG half (incremental sampler; the recomputing one does more) + label/AdaLN work once;
the VQVAE decoder is not counted.
"""
from __future__ import annotations

from typing import Dict

from mvar_dist.ops.attention import attention_pairs


def forward_breakdown(model) -> Dict[str, int]:
    """Forward FLOPs per image, split by kind."""
    C, L, V, Z = model.width, model.L, model.vocab_size, model.z_channels
    blk = model.blocks[0]
    hidden = blk.ffn.fc1.out_features
    n_chunks = blk.n_chunks
    pairs = attention_pairs(model.patch_nums, "intra" if model.arch == "mvar" else "causal")
    linear = 2 * (L - model.first_l) * Z * C           # word_embed (scale 0 = class-embedding tokens)
    linear += 2 * C * 2 * C + 2 * L * C * V            # head_nm ada_lin (once per image), head
    per_block_linear = 2 * C * n_chunks * C            # ada_lin, once per image
    per_block_linear += 2 * L * C * 3 * C + 2 * L * C * C + 2 * 2 * L * C * hidden
    attention = 2 * 2 * pairs * C                      # q·k and p·v over all heads
    conv = ssd = 0
    if model.arch == "mvar":
        m = blk.mamba
        per_block_linear += 2 * L * C * m.in_proj.out_features + 2 * L * m.d_inner * C
        conv = 2 * L * m.conv_dim * m.d_conv
        ssd = L * m.nheads * (6 * m.headdim * m.d_state + 2 * m.headdim)
    d = model.depth
    return {"linear": linear + d * per_block_linear, "attention": d * attention, "conv": d * conv,
            "ssd": d * ssd}


def forward_flops(model) -> int:
    return sum(forward_breakdown(model).values())


def train_flops(model) -> int:
    """One training step per image: forward + backward (2x forward)."""
    return 3 * forward_flops(model)


def sample_flops(model, cfg: bool = True) -> int:
    """Incremental sampling per image; with CFG the batch is doubled."""
    return (2 if cfg else 1) * forward_flops(model)
