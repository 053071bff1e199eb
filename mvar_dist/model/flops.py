"""Parameter and FLOP counts from the architecture's shapes (no model built, no tracing): the one
count behind `MVAR.flops_per_image` (the numerator of MFU) and `mvar_dist.scaling.params`.

Every function takes a resolved `ModelConfig` and the tokenizer's sizes (patch_nums, vocab_size,
z_channels). What is counted is written down in docs/model.md ("FLOPs"): 2 FLOPs per multiply-add
for every Linear, attention over the pairs the scale mask allows, the depthwise conv and the SSD
recurrence (6·P·N + 2·P per token and head); norms, activations, gates and softmax are left out, as
is usual for MFU. Training = 3x forward; sampling = one forward per CFG half (incremental sampler).
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple

from mvar_dist.ops.attention import attention_pairs


class _MambaShape(NamedTuple):
    d_inner: int
    nheads: int
    headdim: int
    d_state: int
    d_conv: int
    conv_dim: int
    in_proj: int    # in_proj output rows: z, x, B, C (one group) and dt per head


def _mamba_shape(m, C: int) -> _MambaShape:
    d_inner = m.expand * C
    nheads = d_inner // m.mamba_headdim
    return _MambaShape(d_inner, nheads, m.mamba_headdim, m.d_state, m.d_conv, d_inner + 2 * m.d_state,
                       2 * d_inner + 2 * m.d_state + nheads)


def _hidden(m) -> int:
    return round(m.width * m.mlp_ratio)


def _block_params(m) -> int:
    C, hidden, chunks = m.width, _hidden(m), m.spec.ada_chunks
    attn = 3 * C * C + 2 * C + C * C + C + (m.num_heads if m.attn_l2_norm else 0)  # qkv, q/v bias, proj, scale_mul
    ffn = C * hidden + hidden + hidden * C + C
    ada = chunks * C * C + chunks * C
    if not m.spec.has_mamba:
        return attn + ffn + ada
    s = _mamba_shape(m, C)
    mamba = s.in_proj * C + s.conv_dim * s.d_conv + s.conv_dim  # in_proj (no bias), depthwise conv + bias
    mamba += 3 * s.nheads + s.d_inner + C * s.d_inner           # dt_bias/A_log/D, norm, out_proj
    return attn + ffn + ada + mamba


def param_counts(m, patch_nums: Sequence[int], vocab_size: int, z_channels: int) -> Tuple[int, int]:
    """(total, embedding) learnable parameters (buffers excluded); embedding = word/class/position/level
    embeddings."""
    C, L, first_l = m.width, sum(p * p for p in patch_nums), patch_nums[0] ** 2
    embedding = (z_channels * C + C) + (m.num_classes + 1) * C + first_l * C + L * C + len(patch_nums) * C
    head = (2 * C * C + 2 * C) + (vocab_size * C + vocab_size)  # head_nm ada_lin, head
    return embedding + head + m.depth * _block_params(m), embedding


def forward_breakdown(m, patch_nums: Sequence[int], vocab_size: int, z_channels: int) -> Dict[str, int]:
    """Forward FLOPs per image, split by kind."""
    C, V, Z, hidden = m.width, vocab_size, z_channels, _hidden(m)
    L, first_l = sum(p * p for p in patch_nums), patch_nums[0] ** 2
    linear = 2 * (L - first_l) * Z * C                 # word_embed (scale 0 = class-embedding tokens)
    linear += 2 * C * 2 * C + 2 * L * C * V            # head_nm ada_lin (once per image), head
    per_block_linear = 2 * C * m.spec.ada_chunks * C   # ada_lin, once per image
    per_block_linear += 2 * L * C * 3 * C + 2 * L * C * C + 2 * 2 * L * C * hidden
    attention = 2 * 2 * attention_pairs(patch_nums, m.spec.mask) * C  # q·k and p·v over all heads
    conv = ssd = 0
    if m.spec.has_mamba:
        s = _mamba_shape(m, C)
        per_block_linear += 2 * L * C * s.in_proj + 2 * L * s.d_inner * C
        conv = 2 * L * s.conv_dim * s.d_conv
        ssd = L * s.nheads * (6 * s.headdim * s.d_state + 2 * s.headdim)
    d = m.depth
    return {"linear": linear + d * per_block_linear, "attention": d * attention, "conv": d * conv,
            "ssd": d * ssd}


def forward_flops(m, patch_nums: Sequence[int], vocab_size: int, z_channels: int) -> int:
    return sum(forward_breakdown(m, patch_nums, vocab_size, z_channels).values())


def train_flops(m, patch_nums: Sequence[int], vocab_size: int, z_channels: int) -> int:
    """One training step per image: forward + backward (2x forward)."""
    return 3 * forward_flops(m, patch_nums, vocab_size, z_channels)


def sample_flops(m, patch_nums: Sequence[int], vocab_size: int, z_channels: int, guided: bool = True) -> int:
    """Incremental sampling per image; with CFG (`guided`) the batch is doubled."""
    return (2 if guided else 1) * forward_flops(m, patch_nums, vocab_size, z_channels)
