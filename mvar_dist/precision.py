"""The one TF32 policy of the project, through torch's `fp32_precision` API.

Once anything sets `torch.backends.*.fp32_precision`, reading the legacy `allow_tf32` flags (or
`torch.get_float32_matmul_precision()`) raises, so every module asks here instead of reading them.
How it is set matters too (torch 2.13, checked on CPU): assigning `torch.backends.cuda.matmul.
fp32_precision` directly makes `torch.get_float32_matmul_precision()` raise, and torch's own inductor
calls that when it precompiles autotuning choices; `torch.set_float32_matmul_precision("high")` writes
the same fp32_precision values ("tf32" for CUDA and oneDNN matmuls) and keeps every reader working.
So matmuls are set through it, convolutions through `torch.backends.cudnn.conv.fp32_precision`, and
reads go through `fp32_precision` only.

Policy: fp32 matmuls and convolutions may use TF32 on CUDA (`set_tf32(True)`, what training
enables); exact paths (the tokenizer's fp32-exact encode, the codebook search) switch it off
around themselves with `tf32_disabled()`. On CPU the flags have no effect.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_MATMUL = torch.backends.cuda.matmul
_CONV = torch.backends.cudnn.conv


def tf32_enabled() -> bool:
    """True when fp32 CUDA matmuls may run as TF32 (read through the new API only)."""
    return _MATMUL.fp32_precision == "tf32"


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 CUDA matmuls and cuDNN convolutions (on) or IEEE fp32 (off)."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    _CONV.fp32_precision = "tf32" if enabled else "ieee"


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """IEEE fp32 matmuls/convs inside the block; the previous policy is restored after."""
    prev_matmul, prev_conv = tf32_enabled(), _CONV.fp32_precision
    set_tf32(False)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision("high" if prev_matmul else "highest")
        _CONV.fp32_precision = prev_conv
