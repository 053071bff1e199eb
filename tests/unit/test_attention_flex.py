"""The FlexAttention path on CPU: tile choice for the scale layout, forward vs the fp32 reference for
both masks, and no recompile (or silent eager fallback) at 20 distinct shapes.

CPU FlexAttention has no backward, and inductor's CPU flex template takes minutes to compile on a busy
box, so the default tests compile with the "eager" backend: dynamo traces, guards and caches exactly
as with inductor (the recompile cliff lives there), the kernel is flex's own reference math. The
inductor-compiled forward is checked in a slow test."""
from __future__ import annotations

import warnings

import pytest
import torch

from mvar_dist.ops import attention as A

D16 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PNS = (1, 2, 3, 4, 5)


@pytest.fixture
def flex(monkeypatch):
    monkeypatch.setattr(A, "FLEX_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(A, "_FLEX_FNS", {})
    A.set_backend("flex")
    yield
    A.set_backend(None)


def test_tiles_are_chosen_for_the_scale_layout():
    need = A.attention_pairs(D16, "intra")
    default = A.computed_pairs(D16, "intra", (128, 128))
    tile = A.flex_tile(D16, "intra")
    assert tile == (64, 32)
    # 128x128 tiles compute 2.97x the allowed pairs of M-VAR's block diagonal, (64, 32) 1.63x
    assert default / need > 2.9 and A.computed_pairs(D16, "intra", tile) / need < 1.65
    assert A.computed_pairs(D16, "causal", A.flex_tile(D16, "causal")) / A.attention_pairs(D16, "causal") < 1.25
    # every prefix uses the full layout's tile, so the sampler's prefixes share kernel options
    assert A.flex_tile(PNS, "intra") in A._TILES
    # the CUDA kernel tiles divide the block mask's, forward and backward
    for rows, cols in A._TILES:
        o = A.flex_kernel_options((rows, cols))
        assert rows % o["BLOCK_M"] == rows % o["BLOCK_M1"] == rows % o["BLOCK_M2"] == 0
        assert cols % o["BLOCK_N"] == cols % o["BLOCK_N1"] == cols % o["BLOCK_N2"] == 0


def test_tile_override(monkeypatch):
    A.flex_tile.cache_clear()
    monkeypatch.setenv("MVAR_FLEX_TILE", "128x128")
    try:
        assert A.flex_tile(D16, "intra") == (128, 128)
        A.flex_tile.cache_clear()
        monkeypatch.setenv("MVAR_FLEX_TILE", "big")
        with pytest.raises(ValueError, match="MVAR_FLEX_TILE"):
            A.flex_tile(D16, "intra")
    finally:
        A.flex_tile.cache_clear()


def _qkv(B, L, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g) for _ in range(3)]


@pytest.mark.parametrize("kind", ["intra", "causal"])
def test_flex_forward_matches_reference(flex, kind):
    q, k, v = _qkv(2, A.scale_bounds(PNS)[-1])
    with torch.no_grad():
        out = A.scale_attention(q, k, v, PNS, kind, scale=0.3)
        ref = A.attention_reference(q, k, v, PNS, kind, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _twenty_shapes():
    bounds = A.scale_bounds(PNS)[1:]
    return [(b, L, kind) for b in (1, 2) for L in bounds for kind in ("intra", "causal")]


def test_twenty_shapes_never_recompile(flex, capfd):
    torch._logging.set_logs(recompiles=True)
    try:
        shapes = _twenty_shapes()
        assert len(shapes) == 20
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for b, L, kind in shapes:
                q, k, v = _qkv(b, L)
                torch.testing.assert_close(A.scale_attention(q, k, v, PNS, kind, 0.3),
                                           A.attention_reference(q, k, v, PNS, kind, 0.3), rtol=1e-5, atol=1e-5)
    finally:
        torch._logging.set_logs()
    err = capfd.readouterr().err
    assert "Recompiling" not in err and "recompile_limit" not in err, err[-2000:]
    assert len(A._FLEX_FNS) == 20
    assert not [w for w in caught if "without torch.compile" in str(w.message)]  # no unfused fallback


def test_one_shared_compiled_function_would_hit_the_cliff(capfd):
    # the control: the old scheme (one torch.compile around flex for every shape) recompiles per shape
    # and gives up after recompile_limit, which this capture must see
    fn = torch.compile(A._flex_call, dynamic=False, backend="eager")
    torch._logging.set_logs(recompiles=True)
    try:
        with torch.no_grad():
            for b, L, kind in _twenty_shapes()[:10]:
                q, k, v = _qkv(b, L)
                fn(q, k, v, A._block_mask(PNS[:A.scale_bounds(PNS).index(L)], kind, (64, 32), q.device), 0.3, None)
    finally:
        torch._logging.set_logs()
    err = capfd.readouterr().err
    assert "Recompiling" in err and "recompile_limit" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["intra", "causal"])
def test_flex_inductor_forward_matches_reference(kind, monkeypatch):
    monkeypatch.setattr(A, "_FLEX_FNS", {})
    A.set_backend("flex")
    try:
        q, k, v = _qkv(2, A.scale_bounds(PNS)[-1])
        with torch.no_grad():
            out = A.scale_attention(q, k, v, PNS, kind, scale=0.3)
        torch.testing.assert_close(out, A.attention_reference(q, k, v, PNS, kind, 0.3), rtol=1e-4, atol=1e-4)
    finally:
        A.set_backend(None)
