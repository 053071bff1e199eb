"""The dispatchers probe optional packages once per process, not on every forward (hot path)."""
import torch

from mvar_dist.ops import attention, causal_conv, ssd


def test_attention_probe_is_cached():
    attention._has.cache_clear()
    for _ in range(3):
        attention.select_path("cuda", torch.bfloat16, "intra")
    info = attention._has.cache_info()
    # first call probes flash_attn (and flex when flash is absent); later calls only hit the cache
    assert info.misses <= 2 and info.hits >= 2
    assert attention._flex_available() == attention._has("torch.nn.attention.flex_attention")


def test_ssd_and_conv_probes_are_cached():
    for fn in (ssd._mamba_fn, ssd._triton_available, causal_conv._package_fn):
        fn.cache_clear()
    for _ in range(3):
        ssd.select_impl("cuda")
        causal_conv.select_impl("cuda")
    assert ssd._mamba_fn.cache_info().misses <= 1  # 0 when MVAR_SSD_IMPL=ref short-cuts
    assert ssd._triton_available.cache_info().misses <= 1
    assert causal_conv._package_fn.cache_info().misses == 1


def test_reference_backend_is_the_reference_function():
    assert attention._PATHS["reference"] is attention.attention_reference
    q_BHLD = torch.randn(1, 2, 5, 4)
    attention.set_backend("reference")
    try:
        out = attention.scale_attention(q_BHLD, q_BHLD, q_BHLD, (1, 2), "causal", 0.5)
    finally:
        attention.set_backend(None)
    torch.testing.assert_close(out, attention.attention_reference(q_BHLD, q_BHLD, q_BHLD, (1, 2), "causal", 0.5))
