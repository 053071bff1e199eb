"""Activation memory per image: the tensors autograd saves for backward, counted from the model code.

Every count below is "elements per token" (times L tokens) or "per image", in the activation dtype
(`a` bytes: 2 for bf16, 4 for fp32) unless marked fp32 (`F32`): layer-norm statistics, the SSM's dt,
the gated RMSNorm and the reference SSD scan compute in fp32 whatever the training dtype.

Two op back-ends differ in what they save:
  * "kernel"    (GPU): flash/flex attention (q, k, v, out, log-sum-exp), the causal-conv1d kernel
                (saves its input, recomputes the activation) and mamba-ssm's chunk scan (its inputs,
                out and dA_cumsum);
  * "reference" (CPU): SDPA's CPU flash path (same as above), our torch causal conv (padded input and
                pre-activation kept) and the chunked torch SSD scan, which keeps its (Q x Q) chunk
                decay matrices and fp32 copies.

Walk-through of one block (M-VAR: attention, Mamba2, FFN branches; VAR: attention, FFN):
  branch input x -> layer_norm (saves x, mean, rstd) -> *(1+scale) (saves the normed x) -> +shift ->
  first Linear (saves the modulated x) ... branch output (saved by the *gamma multiply).
Activation checkpointing (non-reentrant, per block) keeps only each block's input and recomputes one
block at a time in backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from .shapes import ModelShapes

F32 = 4
KERNEL, REFERENCE = "kernel", "reference"


def _branch_common(s: ModelShapes, a: int) -> int:
    """Pre-norm + modulation + gate of one branch, per image: LN input, LN output, modulated input,
    branch output (C each per token), LN mean/rstd (fp32), the (1 + scale) row (per image)."""
    return s.tokens * (4 * s.width * a + 2 * F32) + s.width * a


def attention_bytes(s: ModelShapes, a: int) -> int:
    """qkv (3C); with L2 norm: normalised q, scaled q, normalised k (C each) and the two norms (H each);
    the attention output (C) and log-sum-exp (H, fp32). The (L, L) score matrix is never stored
    (flash-style kernels on both back-ends)."""
    C, H = s.width, s.num_heads
    per_token = 3 * C * a + C * a + H * F32
    if s.attn_l2_norm:
        per_token += 3 * C * a + 2 * H * a
    return s.tokens * per_token


def mamba_bytes(s: ModelShapes, a: int, impl: str) -> int:
    """in_proj output (z | xBC | dt), causal conv, dt, SSD scan, gated RMSNorm, out_proj input."""
    if not s.has_mamba:
        return 0
    L, I, K, Hm, N = s.tokens, s.d_inner, s.conv_dim, s.mamba_heads, s.d_state
    per_token = s.in_proj_out * a            # z, xBC, dt: one fused tensor, views share it
    per_token += 2 * Hm * F32                # dt in fp32 (softplus input and output)
    # gated RMSNorm in fp32: y, silu(z), y*silu(z), v, v*rsqrt; rsqrt (1); out_proj input (I, a)
    per_token += 5 * I * F32 + F32 + I * a
    if a != F32:
        per_token += I * F32                 # fp32 copy of z for silu
    per_image = 0
    if impl == KERNEL:
        per_token += K * a                   # conv output (x, B, C for the scan are views of it)
        per_token += I * a + Hm * F32        # scan output y, dA_cumsum
    else:
        per_token += 3 * K * a               # padded conv input, pre-activation, SiLU output
        per_image += (s.d_conv - 1) * K * a  # the causal left padding
        Q = min(s.ssd_chunk, 64, L)          # ops.ssd caps the reference chunk at 64
        n_chunks = -(-L // Q)
        Lp = n_chunks * Q
        if a != F32:
            per_token += (I + 2 * N) * F32   # fp32 copies of x, B, C
        # per padded token: decay exp(segsum) and (C.B) x decay (Hm*Q each), C.B (Q), three fp32 copies
        # of dt*x (I each), dt*A / its cumsum exponentials (3 Hm)
        per_image += Lp * (2 * Hm * Q * F32 + Q * F32 + 3 * I * F32 + 3 * Hm * F32)
        # chunk states (entering states + the stacked states incl. the initial one)
        per_image += (2 * n_chunks + 1) * Hm * s.mamba_headdim * N * F32
    return L * per_token + per_image


def ffn_bytes(s: ModelShapes, a: int) -> int:
    """fc1 output and GELU output (F each per token); fc1's input is the branch's modulated input."""
    return s.tokens * 2 * s.hidden * a


def block_terms(s: ModelShapes, a: int, impl: str) -> Dict[str, int]:
    """Saved bytes per image of one block, by part."""
    branches = 3 if s.has_mamba else 2  # attention, FFN (+ Mamba)
    return {
        # + silu(cond) and the ada_lin output, per image
        "norm+modulation": branches * _branch_common(s, a) + (1 + s.n_chunks) * s.width * a,
        "attention": attention_bytes(s, a),
        "mamba2": mamba_bytes(s, a, impl),
        "ffn": ffn_bytes(s, a),
    }


def block_bytes(s: ModelShapes, a: int, impl: str) -> int:
    return sum(block_terms(s, a, impl).values())


def embed_bytes(s: ModelShapes, a: int) -> int:
    """Embedding input (teacher tokens, Z per token) and the class condition (C per image)."""
    return (s.tokens - s.first_l) * s.z_channels * a + s.width * a


def head_bytes(s: ModelShapes, a: int) -> int:
    """The head's AdaLN: LN input/output and modulated input (C each per token), LN statistics (fp32),
    silu(cond), ada_lin output and (1 + scale) (4C per image)."""
    return s.tokens * (3 * s.width * a + 2 * F32) + 4 * s.width * a


def backward_transient_bytes(s: ModelShapes, a: int) -> int:
    """Gradients alive together inside one block's backward, beyond the saved tensors: the FFN
    hidden gradient (F) and the residual-stream gradient (C) per token."""
    return s.tokens * (s.hidden + s.width) * a


def held_logits_bytes(s: ModelShapes) -> int:
    """The fp32 logits the trainer keeps through backward (per-scale accuracy after the step)."""
    return s.tokens * s.vocab_size * F32


def logits_bytes(s: ModelShapes, a: int) -> int:
    """The loss's B x L x V working set per image at the start of backward: the fp32 logits, the saved
    log-softmax, its gradient and the logits gradient (fp32 each), plus the head's output and its
    gradient in the activation dtype when that is not fp32."""
    per_token = 4 * s.vocab_size * F32 + (2 * s.vocab_size * a if a != F32 else 0)
    return s.tokens * per_token


@dataclass(frozen=True)
class ActivationModel:
    """Bytes per image: `saved` (alive at the end of forward, logits excluded) and `peak` (the step's
    peak above parameters, gradients and optimizer state)."""
    saved: int
    peak: int
    per_block: int
    outside_blocks: int
    logits: int
    transient: int
    checkpointing: bool


def activation_model(s: ModelShapes, a: int, impl: str, checkpointing: bool) -> ActivationModel:
    """Peak = max(start of backward: everything saved + the loss working set,
                  inside a block's backward: what is still saved + the kept logits + the block's
                  tensors (recomputed, with checkpointing) + the gradients in flight)."""
    if impl not in (KERNEL, REFERENCE):
        raise ValueError(f"impl must be {KERNEL!r} or {REFERENCE!r}, got {impl!r}")
    per_block = block_bytes(s, a, impl)
    embed, head = embed_bytes(s, a), head_bytes(s, a)
    logits, held = logits_bytes(s, a), held_logits_bytes(s)
    transient = backward_transient_bytes(s, a)
    block_input = s.tokens * s.width * a
    if checkpointing:
        saved = s.depth * block_input + embed + head     # each block keeps only its input
        in_block = s.depth * block_input + embed + held + (per_block - block_input) + transient
    else:
        saved = s.depth * per_block + embed + head
        in_block = saved - head + held + transient       # the last block, head already done
    peak = max(saved + logits, in_block)
    return ActivationModel(saved=saved, peak=peak, per_block=per_block, outside_blocks=embed + head,
                           logits=logits, transient=transient, checkpointing=checkpointing)
