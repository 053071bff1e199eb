"""The one TF32 policy of the project, through torch's `fp32_precision` API.

Once anything sets `torch.backends.*.fp32_precision`, reading the legacy `allow_tf32` flags (or
`torch.get_float32_matmul_precision()`) raises, so every module asks here instead of reading them.

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
    mode = "tf32" if enabled else "ieee"
    _MATMUL.fp32_precision = mode
    _CONV.fp32_precision = mode


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """IEEE fp32 matmuls/convs inside the block; the previous policy is restored after."""
    prev = (_MATMUL.fp32_precision, _CONV.fp32_precision)
    set_tf32(False)
    try:
        yield
    finally:
        _MATMUL.fp32_precision, _CONV.fp32_precision = prev
