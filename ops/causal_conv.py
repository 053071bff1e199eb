"""Depthwise causal conv1d (Mamba2's `conv1d` over the xBC slice) with an optional carried state.

Output t sees inputs t-K+1..t: y_t = act(b + sum_k w[:, k] * x_{t-K+1+k}), so w[:, K-1] multiplies the
current token. `conv_state` holds the K-1 pre-conv columns that precede x (zeros at the start of a
sequence); the returned state is the last K-1 columns of cat(conv_state, x), so running a sequence in
pieces with the state carried gives the same outputs as running it whole.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

_ACTIVATIONS = (None, "silu", "swish")
_ENV_IMPL = "MVAR_CONV_IMPL"


def _check(x_BDL, weight, bias_D, conv_state, activation):
    if x_BDL.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (B, D, L), got shape {tuple(x_BDL.shape)}")
    b, d, _ = x_BDL.shape
    if weight.dim() == 3:
        if weight.shape[1] != 1:
            raise ValueError(f"causal_conv1d: 3-D weight must be (D, 1, K), got {tuple(weight.shape)}")
        weight = weight[:, 0]
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"causal_conv1d: weight must be (D={d}, K) or (D, 1, K), got {tuple(weight.shape)}")
    k = weight.shape[1]
    if bias_D is not None and tuple(bias_D.shape) != (d,):
        raise ValueError(f"causal_conv1d: bias must have shape ({d},), got {tuple(bias_D.shape)}")
    if conv_state is not None and tuple(conv_state.shape) != (b, d, k - 1):
        raise ValueError(f"causal_conv1d: conv_state must have shape {(b, d, k - 1)}, "
                         f"got {tuple(conv_state.shape)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return weight, k


def _padded(x_BDL, conv_state, k):
    if conv_state is None:
        return F.pad(x_BDL, (k - 1, 0))
    return torch.cat([conv_state.to(x_BDL.dtype), x_BDL], dim=-1)


def causal_conv1d_ref(x_BDL, weight, bias_D=None, conv_state_BDK1=None, activation="silu",
                      return_state=False):
    """Pure-torch reference (F.conv1d with groups=D on the state-prefixed input)."""
    w_DK, k = _check(x_BDL, weight, bias_D, conv_state_BDK1, activation)
    xp_BDT = _padded(x_BDL, conv_state_BDK1, k)
    y = F.conv1d(xp_BDT, w_DK[:, None, :].to(x_BDL.dtype),
                 None if bias_D is None else bias_D.to(x_BDL.dtype), groups=x_BDL.shape[1])
    if activation is not None:
        y = F.silu(y)
    return (y, xp_BDT[..., xp_BDT.shape[-1] - (k - 1):]) if return_state else y


@functools.lru_cache(maxsize=1)  # probed once: select_impl runs on every call
def _package_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # ImportError, or the CUDA extension failing to load
        return None
    return causal_conv1d_fn


def select_impl(device=None) -> str:
    """'cuda' (the causal-conv1d package) or 'ref'. MVAR_CONV_IMPL=ref forces the reference."""
    want = os.environ.get(_ENV_IMPL, "auto").strip().lower() or "auto"
    if want not in ("auto", "ref", "cuda"):
        raise ValueError(f"{_ENV_IMPL}={want!r}: expected auto, ref or cuda")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usable = dev.type == "cuda" and _package_fn() is not None
    if want == "cuda" and not usable:
        raise RuntimeError(f"{_ENV_IMPL}=cuda but the causal-conv1d package is not usable on {dev}")
    return "cuda" if usable and want != "ref" else "ref"


def causal_conv1d(x_BDL, weight, bias_D=None, conv_state_BDK1=None, activation="silu",
                  return_state=False):
    """Dispatched depthwise causal conv. weight (D, K) or (D, 1, K); conv_state (B, D, K-1) or None.

    Returns y (B, D, L) in x's dtype, and with return_state=True also the new (B, D, K-1) state."""
    w_DK, k = _check(x_BDL, weight, bias_D, conv_state_BDK1, activation)
    if select_impl(x_BDL.device) == "ref":
        return causal_conv1d_ref(x_BDL, weight, bias_D, conv_state_BDK1, activation, return_state)
    # The package's own initial_states argument needs channel-last x; prefixing the state and dropping
    # the first K-1 outputs is exact for any package version.
    xp_BDT = _padded(x_BDL, conv_state_BDK1, k).contiguous()
    act = None if activation is None else "silu"
    y = _package_fn()(xp_BDT, w_DK.to(x_BDL.dtype).contiguous(),
                      None if bias_D is None else bias_D.to(x_BDL.dtype), activation=act)[..., k - 1:]
    return (y, xp_BDT[..., xp_BDT.shape[-1] - (k - 1):]) if return_state else y


def describe() -> str:
    try:
        impl = select_impl()
    except (RuntimeError, ValueError) as e:
        return f"causal_conv1d: misconfigured ({e})"
    return f"causal_conv1d: {impl} (causal-conv1d package={'yes' if _package_fn() is not None else 'no'})"
