"""Mamba2 SSD (state-space duality) scan: chunked pure-torch reference, sequential recurrence for
tests, and the dispatcher `ssd_scan` that takes the fastest path that can run.

Semantics per head h (ngroups=1, so B and C are shared by all heads):

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * outer(x_t, B_t)        S: (P, N), S_0 = initial state
    y_t = S_t @ C_t + D_h * x_t

dt is already softplus'ed, A is negative. States are accumulated in float32 (float64 when any input
is float64) whatever the input dtype; y takes x's dtype.
"""
from __future__ import annotations

import functools
import os

import torch

_IMPLS = ("auto", "ref", "triton", "mamba")
_ENV_IMPL = "MVAR_SSD_IMPL"
# The reference materialises (B, H, L, Q) decay tensors: its cost and memory grow with the chunk Q, so
# the dispatcher caps Q for it (chunking is a tiling choice only; the result is the same function).
REF_MAX_CHUNK = 64


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def check_inputs(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None) -> tuple[int, ...]:
    """Validate shapes/devices; returns (B, L, H, P, N). Raises ValueError naming the bad argument."""
    if x_BLHP.dim() != 4:
        raise ValueError(f"ssd_scan: x must be (B, L, H, P), got shape {tuple(x_BLHP.shape)}")
    b, l, h, p = x_BLHP.shape
    if l == 0:
        raise ValueError("ssd_scan: empty sequence (L=0)")
    if B_BLN.dim() != 3 or B_BLN.shape[:2] != (b, l):
        raise ValueError(f"ssd_scan: B must be (B={b}, L={l}, N), got shape {tuple(B_BLN.shape)}")
    n = B_BLN.shape[2]
    expect = {"dt": (dt_BLH, (b, l, h)), "A": (A_H, (h,)), "C": (C_BLN, (b, l, n))}
    if D_H is not None:
        expect["D"] = (D_H, (h,))
    if initial_states is not None:
        expect["initial_states"] = (initial_states, (b, h, p, n))
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"ssd_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    for name, (t, _) in {"x": (x_BLHP, None), "B": (B_BLN, None), **expect}.items():
        if t.device != x_BLHP.device:
            raise ValueError(f"ssd_scan: {name} is on {t.device} but x is on {x_BLHP.device}")
        if not t.is_floating_point():
            raise ValueError(f"ssd_scan: {name} must be a floating tensor, got {t.dtype}")
    return b, l, h, p, n


def ssd_sequential(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None,
                   return_final_states=False):
    """Naive token-by-token recurrence (the definition). Slow; the ground truth for tests."""
    b, l, h, p, n = check_inputs(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    cd = _compute_dtype(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    x, dt, A = x_BLHP.to(cd), dt_BLH.to(cd), A_H.to(cd)
    Bm, Cm = B_BLN.to(cd), C_BLN.to(cd)
    S_BHPN = (initial_states.to(cd) if initial_states is not None
              else x.new_zeros(b, h, p, n))
    ys = []
    for t in range(l):
        decay_BH = torch.exp(dt[:, t] * A)
        inp_BHPN = (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, None, None, :]
        S_BHPN = decay_BH[..., None, None] * S_BHPN + inp_BHPN
        ys.append(torch.einsum("bhpn,bn->bhp", S_BHPN, Cm[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    if D_H is not None:
        y = y + D_H.to(cd)[:, None] * x
    y = y.to(x_BLHP.dtype)
    return (y, S_BHPN) if return_final_states else y


def _segsum(a_XT: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum_{k=j+1..i} a[..., k] for i >= j, -inf above the diagonal.

    Built from a masked cumsum rather than cumsum(a)[i] - cumsum(a)[j]: the difference of two large
    cumulative sums loses precision exactly where the decay is still significant."""
    t = a_XT.shape[-1]
    a_XTT = a_XT[..., :, None].expand(*a_XT.shape, t)  # [..., i, j] = a[i]
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a_XT.device), diagonal=-1)
    ss = torch.cumsum(a_XTT.masked_fill(~strict, 0), dim=-2)
    keep = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a_XT.device))
    return ss.masked_fill(~keep, float("-inf"))


def ssd_chunked(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None,
                return_final_states=False, chunk_size=64):
    """Pure-torch chunked SSD (the fp32 reference every fast path is tested against).

    Within a chunk of Q tokens the scan is a masked (Q x Q) "attention" with decay weights; across
    chunks only the (P x N) states travel. Differentiable through autograd."""
    b, l, h, p, n = check_inputs(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be >= 1, got {chunk_size}")
    cd = _compute_dtype(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    q = min(chunk_size, l)
    nc = -(-l // q)
    pad = nc * q - l
    x, dt, Bm, Cm = (t.to(cd) for t in (x_BLHP, dt_BLH, B_BLN, C_BLN))
    if pad:
        # Padding with dt = 0 is exact: decay exp(0) = 1 and zero input, so the final state is unchanged.
        x, dt, Bm, Cm = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
                         for t in (x, dt, Bm, Cm))
    # reshape, not view: callers pass slices of a fused projection (non-contiguous)
    x_BcQHP = x.reshape(b, nc, q, h, p)
    dt_BHcQ = dt.reshape(b, nc, q, h).permute(0, 3, 1, 2)
    B_BcQN, C_BcQN = Bm.reshape(b, nc, q, n), Cm.reshape(b, nc, q, n)
    a_BHcQ = dt_BHcQ * A_H.to(cd)[None, :, None, None]
    acs_BHcQ = torch.cumsum(a_BHcQ, dim=-1)
    dtx_BcQHP = x_BcQHP * dt_BHcQ.permute(0, 2, 3, 1)[..., None]

    # 1. intra-chunk outputs: y_i = sum_{j<=i} (C_i.B_j) exp(sum_{j<k<=i} a_k) dt_j x_j
    decay_BHcQQ = torch.exp(_segsum(a_BHcQ))
    CB_BcQQ = torch.einsum("bcin,bcjn->bcij", C_BcQN, B_BcQN)
    y_BcQHP = torch.einsum("bcij,bhcij,bcjhp->bcihp", CB_BcQQ, decay_BHcQQ, dtx_BcQHP)

    # 2. each chunk's own contribution to the state at its end
    to_end_BHcQ = torch.exp(acs_BHcQ[..., -1:] - acs_BHcQ)
    st_BcHPN = torch.einsum("bhcj,bcjhp,bcjn->bchpn", to_end_BHcQ, dtx_BcQHP, B_BcQN)

    # 3. pass states across chunks: state entering chunk c, plus the final state (index nc)
    s0_BHPN = (initial_states.to(cd) if initial_states is not None else x.new_zeros(b, h, p, n))
    st_BcHPN = torch.cat([s0_BHPN[:, None], st_BcHPN], dim=1)
    chunk_a_BHc = torch.nn.functional.pad(acs_BHcQ[..., -1], (1, 0))
    chunk_decay_BHcc = torch.exp(_segsum(chunk_a_BHc))
    st_BcHPN = torch.einsum("bhij,bjhpn->bihpn", chunk_decay_BHcc, st_BcHPN)
    enter_BcHPN, final_BHPN = st_BcHPN[:, :-1], st_BcHPN[:, -1]

    # 4. contribution of the entering state to each output: exp(sum_{k<=i} a_k) * S_in C_i
    y_BcQHP = y_BcQHP + torch.einsum("bcin,bchpn,bhci->bcihp", C_BcQN, enter_BcHPN, torch.exp(acs_BHcQ))

    y = y_BcQHP.reshape(b, nc * q, h, p)[:, :l]
    if D_H is not None:
        y = y + D_H.to(cd)[:, None] * x[:, :l]
    y = y.to(x_BLHP.dtype)
    return (y, final_BHPN) if return_final_states else y


# Cached: `select_impl` runs on every scan, and a failing import re-searches sys.path each time.
@functools.lru_cache(maxsize=1)
def _mamba_fn():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or its CUDA extension failing to load
        return None
    return mamba_chunk_scan_combined


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        from mvar_dist.ops import triton_ssd
    except Exception:
        return False
    return triton_ssd.available()


def select_impl(device: torch.device | str | None = None) -> str:
    """Which path `ssd_scan` takes for tensors on `device`: 'mamba', 'triton' or 'ref'.

    MVAR_SSD_IMPL=ref|triton|mamba forces a path (an error if it cannot run); 'auto' or unset picks
    mamba-ssm, then our Triton kernels on CUDA, else the torch reference."""
    want = os.environ.get(_ENV_IMPL, "auto").strip().lower() or "auto"
    if want not in _IMPLS:
        raise ValueError(f"{_ENV_IMPL}={want!r}: expected one of {', '.join(_IMPLS)}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "ref":
        return "ref"
    if want == "mamba":
        if dev.type != "cuda" or _mamba_fn() is None:
            raise RuntimeError(f"{_ENV_IMPL}=mamba but mamba-ssm is not importable on {dev}")
        return "mamba"
    if want == "triton":
        if not _triton_available():
            raise RuntimeError(f"{_ENV_IMPL}=triton but triton is not importable")
        return "triton"
    if dev.type == "cuda":
        if _mamba_fn() is not None:
            return "mamba"
        if _triton_available():
            return "triton"
    return "ref"


def ssd_scan(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None,
             return_final_states=False, chunk_size=64):
    """SSD scan, dispatched (see `select_impl`; float64 inputs always take the reference).

    Returns y_BLHP in x's dtype, or (y_BLHP, final_state_BHPN) with the state in float32 (float64
    when an input is float64)."""
    check_inputs(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    impl = select_impl(x_BLHP.device)
    if _compute_dtype(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states) == torch.float64:
        impl = "ref"  # the kernels compute in fp32; float64 callers want float64 math
    if impl == "mamba":
        fn = _mamba_fn()
        out = fn(x_BLHP, dt_BLH, A_H.float(), B_BLN.unsqueeze(2), C_BLN.unsqueeze(2), chunk_size,
                 D=D_H, initial_states=initial_states, return_final_states=return_final_states)
        if return_final_states:
            return out[0], out[1].float()
        return out
    if impl == "triton":
        from mvar_dist.ops.triton_ssd import ssd_triton

        return ssd_triton(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states,
                          return_final_states, chunk_size)
    return ssd_chunked(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states,
                       return_final_states, min(chunk_size, REF_MAX_CHUNK))


def describe() -> str:
    """One line: the path `ssd_scan` takes on this machine, and why."""
    cuda = torch.cuda.is_available()
    try:
        impl = select_impl()
    except (RuntimeError, ValueError) as e:
        return f"ssd_scan: misconfigured ({e})"
    have_mamba = _mamba_fn() is not None
    have_triton = _triton_available()
    return (f"ssd_scan: {impl} (cuda={'yes' if cuda else 'no'}, mamba-ssm={'yes' if have_mamba else 'no'}, "
            f"triton={'yes' if have_triton else 'no'}, {_ENV_IMPL}={os.environ.get(_ENV_IMPL, 'auto')})")
