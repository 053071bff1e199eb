"""The stateful incremental sampler gives the ids of full recomputation; filters; argument checks."""
import pytest
import torch

from mvar_dist.config import ModelConfig
from mvar_dist.model import MVAR
from mvar_dist.model.sampler import top_k_top_p_filter_
from mvar_dist.vqvae import MultiScaleVQVAE

Z, V = 8, 64


def _vae(patch_nums):
    # 2x downsampling keeps the decoder trivial (8-10 px images): the sampler logic is what is tested
    return MultiScaleVQVAE.random(seed=0, vocab_size=V, z_channels=Z, ch=32, ch_mult=(1, 1),
                                  patch_nums=patch_nums, num_res_blocks=1)


def _model(arch, depth, patch_nums, seed=0):
    cfg = ModelConfig(arch=arch, depth=depth, width=64, num_heads=2, num_classes=10, mamba_headdim=32,
                      d_state=16, drop_path_rate=0.0)
    torch.manual_seed(seed)
    m = MVAR(cfg, patch_nums, V, Z)
    with torch.no_grad():  # weights with structure, so logits are far from uniform
        for n, p in m.named_parameters():
            p.normal_(0, 0.5 if "class_emb" in n or "pos" in n else 0.15)
    return m


@pytest.mark.parametrize("arch,depth,patch_nums", [
    ("mvar", 1, (1, 2, 3, 4)),
    ("mvar", 3, (1, 3, 5)),
    ("mvar", 2, (2, 3, 4, 5)),
    ("var", 2, (1, 2, 3, 4)),
    ("var", 3, (1, 3, 5)),
])
def test_incremental_equals_recompute(arch, depth, patch_nums):
    model, vae = _model(arch, depth, patch_nums), _vae(patch_nums)
    labels = torch.tensor([1, 7, -1])  # -1 = unconditional
    for kw in (dict(top_k=1, top_p=0.0), dict(top_k=20, top_p=0.9)):
        ids_inc, img_inc = model.sample(vae, labels, cfg_scale=1.5, seed=3, incremental=True, **kw)
        ids_rec, img_rec = model.sample(vae, labels, cfg_scale=1.5, seed=3, incremental=False, **kw)
        assert [t.shape for t in ids_inc] == [(3, p * p) for p in patch_nums]
        for si, (a, b) in enumerate(zip(ids_inc, ids_rec)):
            assert torch.equal(a, b), f"scale {si} ({kw})"
        torch.testing.assert_close(img_inc, img_rec, rtol=0, atol=1e-5)
        assert img_inc.min() >= 0 and img_inc.max() <= 1
    # a different seed draws different tokens (the generator is really used)
    ids_other, _ = model.sample(vae, labels, cfg_scale=1.5, top_k=20, top_p=0.9, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(ids_inc, ids_other))


def test_sampler_is_deterministic_and_leaves_no_state():
    pns = (1, 2, 3, 4)
    model, vae = _model("mvar", 2, pns), _vae(pns)
    before = [set(vars(b)) for b in model.modules()]
    a, img_a = model.sample(vae, [2, 3], seed=11, top_k=30, top_p=0.8)
    b, img_b = model.sample(vae, [2, 3], seed=11, top_k=30, top_p=0.8)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and torch.equal(img_a, img_b)
    assert [set(vars(m)) for m in model.modules()] == before  # caches lived only inside the call
    ids, img = model.sample(vae, [2, 3], seed=11, more_smooth=True)
    assert img.shape == (2, 3, 8, 8) and 0 <= img.min() and img.max() <= 1
    assert all(t.dtype == torch.int64 for t in ids)


def test_cfg_zero_ignores_the_unconditional_half():
    """With cfg_scale=0 the ids depend only on the conditional logits: = argmax of the train-mode forward."""
    pns = (1, 2, 3)
    model, vae = _model("var", 2, pns), _vae(pns)
    labels = torch.tensor([4, 5])
    ids, _ = model.sample(vae, labels, cfg_scale=0.0, top_k=1, top_p=0.0)
    model.eval()
    with torch.no_grad():
        logits = model(labels, vae.ids_to_teacher_input(ids))
    assert torch.equal(torch.cat(ids, 1), logits.argmax(-1))


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    k2 = top_k_top_p_filter_(logits.clone(), top_k=2, top_p=0.0)
    assert torch.isinf(k2[0, 0, 2:]).all() and torch.isfinite(k2[0, 0, :2]).all()
    p = top_k_top_p_filter_(logits.clone(), top_k=0, top_p=0.85)  # keeps 0.5, 0.3 and 0.15 (mass 0.95)
    assert torch.isfinite(p[0, 0, :3]).all() and torch.isinf(p[0, 0, 3])
    one = top_k_top_p_filter_(logits.clone(), top_k=0, top_p=1e-6)  # the largest always stays
    assert torch.isfinite(one[0, 0, 0]) and torch.isinf(one[0, 0, 1:]).all()


def test_argument_checks():
    pns = (1, 2, 3, 4)
    model = _model("mvar", 1, pns)
    with pytest.raises(ValueError, match="patch_nums"):
        model.sample(_vae((1, 2, 4)), [1])
    with pytest.raises(ValueError, match="out of range"):
        model.sample(_vae(pns), [11])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["mvar", "var"])
def test_cuda_forward_and_sampler_agree_with_cpu(arch):
    pns = (1, 2, 3, 4)
    model, vae = _model(arch, 2, pns), _vae(pns)
    labels = torch.tensor([1, 2])
    x = torch.randn(2, 29, Z)
    model.eval()
    with torch.no_grad():
        ref = model(labels, x)
        out = model.cuda()(labels.cuda(), x.cuda()).cpu()
    assert (out - ref).abs().max() < 1e-3 * ref.abs().max() + 1e-4
    ids_inc, img = model.sample(vae.cuda(), labels, top_k=1, top_p=0.0, seed=0)
    ids_rec, _ = model.sample(vae, labels, top_k=1, top_p=0.0, seed=0, incremental=False)
    assert all(torch.equal(a, b) for a, b in zip(ids_inc, ids_rec)) and img.is_cuda
