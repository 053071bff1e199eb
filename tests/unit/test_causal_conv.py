"""Depthwise causal conv1d: definition, state carry, dispatcher, errors."""
from __future__ import annotations

import pytest
import torch

from mvar_dist.ops.causal_conv import causal_conv1d, causal_conv1d_ref, describe


def _naive(x_BDL, w_DK, b_D, state_BDK1, act):
    """Direct sum from the definition: y_t = b + sum_k w[:, k] * xfull[t + k] over the state-prefixed input."""
    k = w_DK.shape[1]
    full = torch.cat([state_BDK1 if state_BDK1 is not None else x_BDL.new_zeros(*x_BDL.shape[:2], k - 1), x_BDL], -1)
    y = torch.stack([(full[..., t:t + k] * w_DK).sum(-1) + b_D for t in range(x_BDL.shape[-1])], -1)
    return torch.nn.functional.silu(y) if act else y


@pytest.mark.parametrize("act", ["silu", None])
def test_matches_definition_with_state(act):
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(2, 6, 7, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64),
               torch.randn(6, generator=g, dtype=torch.float64))
    s = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    for state in (None, s):
        y, new = causal_conv1d(x, w[:, None, :], b, state, activation=act, return_state=True)
        torch.testing.assert_close(y, _naive(x, w, b, state, act), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new, x[..., -3:])


def test_current_token_uses_last_tap():
    x = torch.zeros(1, 1, 5)
    x[0, 0, 2] = 1.0
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y = causal_conv1d(x, w, None, activation=None)
    # an impulse at t=2 reaches t=2..4 through taps 4, 3, 2 (last tap = current token) and never t<2
    assert y[0, 0].tolist() == [0.0, 0.0, 4.0, 3.0, 2.0]


@pytest.mark.parametrize("split", [1, 2, 5])
def test_split_with_state_equals_whole(split):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 8, 9, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    whole, last = causal_conv1d(x, w, b, return_state=True)
    # pieces shorter than K-1 must still carry the right state (mixing old state and new columns)
    y1, s1 = causal_conv1d(x[..., :split], w, b, return_state=True)
    y2, s2 = causal_conv1d(x[..., split:split + 1], w, b, s1, return_state=True)
    y3, s3 = causal_conv1d(x[..., split + 1:], w, b, s2, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2, y3], -1), whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s3, last)
    assert s1.shape == (3, 8, 3)


def test_bf16_and_grad():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 4, 6, generator=g), torch.randn(4, 4, generator=g), torch.randn(4, generator=g)
    y16 = causal_conv1d(x.bfloat16(), w, b)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), causal_conv1d(x, w, b), rtol=3e-2, atol=3e-2)
    args = [t.double().requires_grad_() for t in (x[..., :4], w, b, torch.randn(2, 4, 3, generator=g))]
    assert torch.autograd.gradcheck(lambda xx, ww, bb, ss: causal_conv1d_ref(xx, ww, bb, ss), args, fast_mode=True)


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(5, 4), None)
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d(x, torch.randn(4, 4), None, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, torch.randn(4, 4), None, activation="relu")


def test_describe_cpu(monkeypatch):
    monkeypatch.delenv("MVAR_CONV_IMPL", raising=False)
    if not torch.cuda.is_available():
        assert describe().startswith("causal_conv1d: ref")
