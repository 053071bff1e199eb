"""Scale-structured attention: masks, the SDPA path vs the fp32 reference and a per-scale loop."""
import pytest
import torch
import torch.nn.functional as F

from mvar_dist.ops import attention as A

PNS = (1, 2, 3, 4)


def _qkv(B=2, H=2, L=30, D=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_masks_have_the_scale_structure():
    intra = A.dense_mask(PNS, "intra")
    causal = A.dense_mask(PNS, "causal")
    lvl = A.scale_ids(PNS)
    assert intra.shape == (30, 30) and lvl.tolist()[:5] == [0, 1, 1, 1, 1]
    for i in range(30):
        for j in range(30):
            assert bool(intra[i, j]) == (lvl[i] == lvl[j])
            assert bool(causal[i, j]) == (lvl[j] <= lvl[i])
    assert A.attention_pairs(PNS, "intra") == int(intra.sum())
    assert A.attention_pairs(PNS, "causal") == int(causal.sum())
    full = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert A.attention_pairs(full, "intra") == 110_468 and A.attention_pairs(full, "causal") == 286_434


def test_intra_equals_per_scale_loop():
    q, k, v = _qkv()
    out = A.scale_attention(q, k, v, PNS, "intra", scale=0.3)
    b = A.scale_bounds(PNS)
    loop = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], scale=0.3)
                      for s, e in zip(b[:-1], b[1:])], dim=2)
    torch.testing.assert_close(out, loop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["intra", "causal"])
def test_sdpa_path_matches_reference_and_gradients(kind):
    q, k, v = _qkv()
    assert A.select_path("cpu", torch.float32, kind) == "sdpa-mask"
    out = A.scale_attention(q, k, v, PNS, kind, scale=0.25)
    ref = A.attention_reference(q, k, v, PNS, kind, scale=0.25)
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=1e-6, atol=1e-6)
    g_out = torch.autograd.grad(out.square().sum(), (q, k, v))
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    small = [t.detach()[:1, :1, :14, :4].clone().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: A.scale_attention(a, b, c, PNS, kind, 0.5), small)


def test_causal_mask_blocks_future_scales():
    q, k, v = [t.detach() for t in _qkv()]
    out = A.scale_attention(q, k, v, PNS, "causal", 1.0)
    v2 = v.clone()
    v2[:, :, 14:] += 5.0  # change only the last scale
    out2 = A.scale_attention(q, k, v2, PNS, "causal", 1.0)
    assert torch.equal(out[:, :, :14], out2[:, :, :14])
    assert not torch.allclose(out[:, :, 14:], out2[:, :, 14:])


def test_prefix_lengths_and_errors():
    q, k, v = [t.detach()[:, :, :14] for t in _qkv()]
    full = [t.detach() for t in _qkv()]
    out = A.scale_attention(q, k, v, PNS, "causal", 1.0)
    torch.testing.assert_close(out, A.scale_attention(*full, PNS, "causal", 1.0)[:, :, :14])
    with pytest.raises(ValueError, match="whole-scale prefix"):
        A.scale_attention(q[:, :, :13], k[:, :, :13], v[:, :, :13], PNS, "intra", 1.0)
    with pytest.raises(ValueError, match="mask kind"):
        A.scale_attention(q, k, v, PNS, "global", 1.0)
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.set_backend("nope")


def test_forced_backend_and_describe():
    q, k, v = [t.detach() for t in _qkv(dtype=torch.float32)]
    try:
        A.set_backend("reference")
        ref = A.scale_attention(q, k, v, PNS, "intra", 1.0)
    finally:
        A.set_backend(None)
    torch.testing.assert_close(A.scale_attention(q, k, v, PNS, "intra", 1.0), ref, rtol=1e-5, atol=1e-5)
    assert A.describe("cpu") == {"attention (intra)": "sdpa-mask", "attention (causal)": "sdpa-mask"}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["intra", "causal"])
def test_gpu_path_matches_reference(kind):
    full = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = [torch.randn(2, 4, 680, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3)]
    path = A.select_path("cuda", torch.bfloat16, kind)
    out = A.scale_attention(q, k, v, full, kind, 0.125)
    ref = A.attention_reference(q.float(), k.float(), v.float(), full, kind, 0.125)
    assert (out.float() - ref).abs().max() < 2e-2, path
