"""Our Mamba2 module vs a naive float64 token-by-token recurrence written from the definition."""
import pytest
import torch
import torch.nn.functional as F

from mvar_dist.model import Mamba2, MambaState


def _random_mamba(d_model=16, d_state=8, headdim=8, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = Mamba2(d_model, d_state=d_state, d_conv=4, expand=2, headdim=headdim, chunk_size=4).to(dtype)
    with torch.no_grad():
        for p in (m.in_proj.weight, m.out_proj.weight):
            p.normal_(0, 0.3)
        m.conv1d.weight.normal_(0, 0.4)
        m.conv1d.bias.normal_(0, 0.1)
        m.D.uniform_(0.5, 1.5)
        m.norm.weight.uniform_(0.5, 1.5)
        # slow decays (A_log small, dt ~ 0.1-0.5) so the state carries information over many tokens
        m.A_log.uniform_(-1.0, 0.5)
        m.dt_bias.uniform_(-2.0, 0.0)
    return m


def naive_mamba2(m: Mamba2, u_BLD: torch.Tensor, state: MambaState = None) -> torch.Tensor:
    """Sequential recurrence in float64: conv window, softplus dt, S_t = e^{dt A} S + dt x Bᵀ, y = S C + D x.
    `state`: pre-conv rows before the sequence and the initial SSM state."""
    u = u_BLD.double()
    W = {k: v.double() for k, v in m.state_dict().items()}
    B, L, _ = u.shape
    zxbcdt = u @ W["in_proj.weight"].T
    z, xBC, dt = zxbcdt.split([m.d_inner, m.conv_dim, m.nheads], dim=-1)
    w = W["conv1d.weight"][:, 0]  # (conv_dim, K)
    K = w.shape[1]
    prev = (torch.zeros(B, K - 1, m.conv_dim, dtype=torch.float64) if state is None
            else state.conv_BDK.double().transpose(1, 2))
    xBC = torch.cat([prev, xBC], dim=1)  # row t of the sequence is row t + K - 1 here
    S = (torch.zeros(B, m.nheads, m.headdim, m.d_state, dtype=torch.float64) if state is None
         else state.ssm_BHPN.double().clone())
    A = -torch.exp(W["A_log"])
    ys = []
    for t in range(L):
        acc = W["conv1d.bias"].expand(B, -1).clone()
        for k in range(K):
            acc = acc + w[:, k] * xBC[:, t + k]
        xbc = F.silu(acc)
        x, Bt, Ct = xbc.split([m.d_inner, m.d_state, m.d_state], dim=-1)
        x = x.view(B, m.nheads, m.headdim)
        d = F.softplus(dt[:, t] + W["dt_bias"])  # (B, H)
        S = torch.exp(d * A)[..., None, None] * S + (d[..., None] * x)[..., None] * Bt[:, None, None, :]
        y = torch.einsum("bhpn,bn->bhp", S, Ct) + W["D"][:, None] * x
        ys.append(y.reshape(B, m.d_inner))
    y = torch.stack(ys, dim=1)
    v = y * F.silu(z)
    v = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * W["norm.weight"]
    return v @ W["out_proj.weight"].T


def test_matches_sequential_recurrence_fp64():
    m = _random_mamba()
    u = torch.randn(2, 23, 16, dtype=torch.float64)
    out = m(u)
    ref = naive_mamba2(m, u)
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-6, rel
    # the state is non-trivial: zeroing the first tokens' input changes the last outputs
    u2 = u.clone()
    u2[:, :5] = 0
    assert (m(u2)[:, -1] - out[:, -1]).abs().max() > 1e-3


def test_matches_recurrence_from_nonzero_initial_state():
    m = _random_mamba(seed=3)
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    state = MambaState(torch.randn(2, m.conv_dim, 3, dtype=torch.float64),
                       torch.randn(2, m.nheads, m.headdim, m.d_state, dtype=torch.float64))
    out, new = m(u, state, return_state=True)
    ref = naive_mamba2(m, u, state)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-6
    assert (out - m(u)).abs().max() > 1e-2  # the initial state matters
    # the returned state continues the sequence exactly like one longer run
    u2 = torch.randn(2, 5, 16, dtype=torch.float64)
    ref2 = naive_mamba2(m, torch.cat([u, u2], 1), state)[:, 9:]
    assert ((m(u2, new) - ref2).abs().max() / ref2.abs().max()).item() <= 1e-6


def test_pieces_with_state_equal_whole_sequence():
    m = _random_mamba(seed=1)
    u = torch.randn(3, 30, 16, dtype=torch.float64)
    whole = m(u)
    state, outs = None, []
    for s, e in [(0, 1), (1, 5), (5, 14), (14, 30)]:  # scales 1, 2, 3, 4: pieces shorter than d_conv too
        y, state = m(u[:, s:e], state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-10, atol=1e-10)
    assert state.conv_BDK.shape == (3, m.conv_dim, 3) and state.ssm_BHPN.shape == (3, m.nheads, 8, 8)


def test_gradcheck_tiny():
    m = _random_mamba(d_model=4, d_state=2, headdim=4, seed=2)
    u = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x), (u,))
    params = [m.A_log, m.dt_bias, m.D, m.conv1d.weight]
    out = m(u).square().sum()
    grads = torch.autograd.grad(out, params)
    assert all(g.abs().sum() > 0 for g in grads)


def test_parameter_names_and_shapes_follow_mamba_ssm():
    m = Mamba2(192, d_state=64, d_conv=4, expand=2, headdim=64)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"in_proj.weight": (902, 192), "conv1d.weight": (512, 1, 4), "conv1d.bias": (512,),
                      "dt_bias": (6,), "A_log": (6,), "D": (6,), "norm.weight": (384,),
                      "out_proj.weight": (192, 384)}
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(10, headdim=64)
