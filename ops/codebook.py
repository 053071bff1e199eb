"""Nearest-codebook search: for each row z_n, the index of the code e_v with the smallest squared
L2 distance ||z_n - e_v||^2, ties resolved to the lowest index.

Three pieces, as every op in `mvar_dist.ops`:

* `nearest_code_reference`: fp32, the whole (N, V) distance matrix at once, computed exactly as the
  official VAR quantiser does (|z|^2 + |e|^2 - 2 z.e through one addmm) so that ids match it bit for
  bit, including near-ties decided by float rounding.
* `nearest_code_chunked`: the same arithmetic over row blocks (and, when V itself is huge, code
  blocks merged with a strict `<` so the lowest index still wins ties). Peak extra memory is bounded
  by `max_bytes` instead of N*V*4 bytes. Runs anywhere; the dispatcher uses it on CUDA.
* `nearest_code`: the dispatcher. CPU -> reference; CUDA -> chunked. `describe(device)` says which.

On CUDA the distance matmul runs with TF32 switched off for its duration: TF32 keeps only 10
mantissa bits, which is enough to flip ids whose best and second-best distances are close.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

# Default budget for one distance block on an accelerator (bytes of fp32 distances).
DEFAULT_MAX_BYTES = 256 * 2**20
_FORCE_ENV = "MVAR_CODEBOOK_IMPL"  # "reference" | "chunked": override the dispatcher (debugging, benchmarks)


def _check(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> None:
    if z_NC.dim() != 2 or codebook_VC.dim() != 2:
        raise ValueError(f"nearest_code expects z (N, C) and codebook (V, C); got {tuple(z_NC.shape)} and "
                         f"{tuple(codebook_VC.shape)}")
    if z_NC.shape[1] != codebook_VC.shape[1]:
        raise ValueError(f"nearest_code: z has {z_NC.shape[1]} channels but the codebook has {codebook_VC.shape[1]}")
    if codebook_VC.shape[0] == 0:
        raise ValueError("nearest_code: empty codebook")
    if z_NC.device != codebook_VC.device:
        raise ValueError(f"nearest_code: z on {z_NC.device} but codebook on {codebook_VC.device}")


@contextlib.contextmanager
def _no_tf32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    from mvar_dist.precision import tf32_disabled

    with tf32_disabled():
        yield


def _distances(z_NC: torch.Tensor, e_VC: torch.Tensor, e_sq_V: torch.Tensor) -> torch.Tensor:
    d_NV = z_NC.square().sum(dim=1, keepdim=True) + e_sq_V
    return d_NV.addmm_(z_NC, e_VC.t(), beta=1, alpha=-2)


def nearest_code_reference(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """fp32 reference: int64 (N,) index of the nearest code; ties -> lowest index."""
    _check(z_NC, codebook_VC)
    z_NC, e_VC = z_NC.float(), codebook_VC.float()
    with _no_tf32(z_NC.device):
        return _distances(z_NC, e_VC, e_VC.square().sum(dim=1)).argmin(dim=1)


def nearest_code_chunked(z_NC: torch.Tensor, codebook_VC: torch.Tensor,
                         max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """Same result as the reference, holding at most ~max_bytes of fp32 distances at a time."""
    _check(z_NC, codebook_VC)
    if max_bytes < 4:
        raise ValueError(f"nearest_code_chunked: max_bytes must be >= 4, got {max_bytes}")
    z_NC, e_VC = z_NC.float(), codebook_VC.float()
    N, V = z_NC.shape[0], e_VC.shape[0]
    budget = max(1, max_bytes // 4)
    code_block = min(V, budget)                  # codes per block (V unless V alone exceeds the budget)
    row_block = max(1, budget // code_block)
    e_sq_V = e_VC.square().sum(dim=1)
    idx_N = torch.empty(N, dtype=torch.long, device=z_NC.device)
    with _no_tf32(z_NC.device):
        for r0 in range(0, N, row_block):
            z_nC = z_NC[r0:r0 + row_block]
            best_d_n: Optional[torch.Tensor] = None
            best_i_n: Optional[torch.Tensor] = None
            for c0 in range(0, V, code_block):
                d_nv = _distances(z_nC, e_VC[c0:c0 + code_block], e_sq_V[c0:c0 + code_block])
                d_n, i_n = d_nv.min(dim=1)
                i_n = i_n + c0
                if best_d_n is None:
                    best_d_n, best_i_n = d_n, i_n
                else:
                    # strict '<': an equal distance in a later block keeps the earlier (lower) index
                    better_n = d_n < best_d_n
                    best_d_n = torch.where(better_n, d_n, best_d_n)
                    best_i_n = torch.where(better_n, i_n, best_i_n)
            idx_N[r0:r0 + row_block] = best_i_n
    return idx_N


def _choice(device: torch.device) -> str:
    forced = os.environ.get(_FORCE_ENV, "").strip().lower()
    if forced:
        if forced not in ("reference", "chunked"):
            raise ValueError(f"{_FORCE_ENV}={forced!r}: expected 'reference' or 'chunked'")
        return forced
    return "chunked" if device.type == "cuda" else "reference"


def nearest_code(z_NC: torch.Tensor, codebook_VC: torch.Tensor, max_bytes: Optional[int] = None) -> torch.Tensor:
    """Dispatcher: the fp32 reference on CPU, the memory-bounded chunked search on CUDA."""
    if _choice(z_NC.device) == "reference":
        return nearest_code_reference(z_NC, codebook_VC)
    return nearest_code_chunked(z_NC, codebook_VC, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)


def describe(device: Optional[torch.device] = None) -> str:
    """Which implementation `nearest_code` runs on `device` (default: CUDA if available, else CPU)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if _choice(device) == "reference":
        return f"torch reference (fp32, full N x V distances) on {device.type}"
    return (f"torch chunked (fp32, TF32 off, <= {DEFAULT_MAX_BYTES // 2**20} MiB of distances per block) "
            f"on {device.type}")
