"""Tokenizer pieces without the parity fixture: Phi table, resizes, other scale layouts, the
full-size architecture, random weights, and the errors for bad inputs."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from mvar_dist.vqvae import MultiScaleVQVAE, area_resize, bicubic_resize, phi_table
from mvar_dist.vqvae.weights import probe_image

TINY = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), patch_nums=(1, 2, 3, 5, 8), share_quant_resi=4)


@pytest.fixture(scope="module")
def tiny():
    return MultiScaleVQVAE.random(seed=3, **TINY)


def _imgs(vae, n=2, seed=0):
    return torch.cat([probe_image(vae.resolution, seed=seed + i) for i in range(n)])


# ------------------------------------------------------------------------------------------ Phi table
def test_phi_table_official_and_sharing_modes():
    assert phi_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_table(10, 0) == tuple(range(10))      # one Phi per scale
    assert phi_table(10, 1) == (0,) * 10             # a single shared Phi
    assert phi_table(1, 4) == (0,)


def test_phi_table_ties_at_scales_2_and_7_are_real_ties():
    # exact arithmetic: the official ticks for K=4 are 1/12 + k*5/18; scale 2 sits exactly between
    # ticks 0 and 1, scale 7 between 2 and 3 -- the hard-coded table keeps the official float choice
    ticks = [Fraction(1, 12) + k * Fraction(5, 18) for k in range(4)]
    for si, (a, b) in ((2, (0, 1)), (7, (2, 3))):
        at = Fraction(si, 9)
        assert abs(ticks[a] - at) == abs(ticks[b] - at)
    assert phi_table(10, 4)[2] == 1 and phi_table(10, 4)[7] == 3


def test_phi_table_other_counts_follow_the_float64_linspace_rule():
    np = pytest.importorskip("numpy")

    def official_rule(sn, k):
        t = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
        return tuple(int(np.argmin(np.abs(t - si / (sn - 1)))) for si in range(sn))

    for sn in range(2, 14):
        for k in (2, 3, 4, 5, 6):
            assert phi_table(sn, k) == official_rule(sn, k), (sn, k)
        assert phi_table(sn, 0) == official_rule(sn, sn)
    assert phi_table(7, 4) == (0, 0, 1, 2, 2, 3, 3)  # demo's 7 scales


# ------------------------------------------------------------------------------------------ resizes
def test_area_resize_16_to_13_uses_adaptive_windows():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    got = area_resize(x, 13)
    ref = torch.empty(2, 3, 13, 13, dtype=torch.float64)
    for i in range(13):
        r0, r1 = (i * 16) // 13, math.ceil((i + 1) * 16 / 13)
        for j in range(13):
            c0, c1 = (j * 16) // 13, math.ceil((j + 1) * 16 / 13)
            ref[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def _cubic_weights(t, a=-0.75):
    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@pytest.mark.parametrize("src,dst", [(13, 16), (3, 16), (1, 16), (10, 32)])
def test_bicubic_resize_matches_the_pytorch_kernel_definition(src, dst):
    x = torch.randn(1, 2, src, src, dtype=torch.float64)
    # align_corners=False, a=-0.75, neighbours clamped to the border, source index not clamped
    M = torch.zeros(dst, src, dtype=torch.float64)
    for i in range(dst):
        s = (i + 0.5) * src / dst - 0.5
        f = math.floor(s)
        for o, w in zip(range(-1, 3), _cubic_weights(s - f)):
            M[i, min(max(f + o, 0), src - 1)] += w
    ref = torch.einsum("ip,bcpq,jq->bcij", M, x, M)
    torch.testing.assert_close(bicubic_resize(x, dst), ref, atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("patch_nums,share,ch_mult", [((1, 2, 3, 5, 8), 4, (1, 2)), ((2, 3, 4), 1, (1, 2)),
                                                      ((1, 2, 4, 6, 9, 13, 18, 24, 32), 0, (1,))])
def test_other_scale_layouts_are_self_consistent(patch_nums, share, ch_mult, tmp_path):
    # sides up to 32 as in 512 px VAR; ch_mult (1,) keeps that case at 32 px so the test stays cheap
    hp = dict(TINY, patch_nums=patch_nums, share_quant_resi=share, ch_mult=ch_mult)
    vae = MultiScaleVQVAE.random(seed=0, **hp)
    assert vae.resolution == patch_nums[-1] * 2 ** (len(ch_mult) - 1)
    ids = vae.img_to_ids(_imgs(vae))
    assert [tuple(t.shape) for t in ids] == [(2, p * p) for p in patch_nums]
    x = vae.ids_to_teacher_input(ids)
    L = sum(p * p for p in patch_nums)
    assert x.shape == (2, L - patch_nums[0] ** 2, 8)
    # the sampler's step function rebuilds the same teacher input and the same f_hat
    f_hat, steps = torch.zeros(2, 8, patch_nums[-1], patch_nums[-1]), []
    for si in range(len(patch_nums)):
        f_hat, nxt = vae.next_ar_input(si, f_hat, vae.ids_to_code_map(si, ids[si]))
        if si < len(patch_nums) - 1:
            steps.append(nxt.flatten(2).transpose(1, 2))
    torch.testing.assert_close(torch.cat(steps, 1), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(f_hat, vae.ids_to_fhat(ids), atol=1e-6, rtol=0)
    assert vae.ids_to_img(ids).shape == (2, 3, vae.resolution, vae.resolution)
    # official key layout of each sharing mode survives a save / load with inferred sizes
    keys = {k for k in vae.state_dict() if k.startswith("quantize.quant_resi.")}
    expect = {1: {"quantize.quant_resi.qresi.weight", "quantize.quant_resi.qresi.bias"},
              0: {f"quantize.quant_resi.{i}.{p}" for i in range(len(patch_nums)) for p in ("weight", "bias")},
              4: {f"quantize.quant_resi.qresi_ls.{i}.{p}" for i in range(4) for p in ("weight", "bias")}}[share]
    assert keys == expect
    again = MultiScaleVQVAE.from_official(vae.save_official(tmp_path / "v.safetensors"), patch_nums=patch_nums)
    assert again.share_quant_resi == share and again.weights_hash() == vae.weights_hash()


def test_full_size_architecture_matches_the_official_checkpoint_layout(shared_fixtures):
    from safetensors import safe_open

    with torch.device("meta"):
        vae = MultiScaleVQVAE(vocab_size=4096, z_channels=32, ch=160)
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    sd = vae.state_dict()
    with safe_open(str(shared_fixtures / "vqvae_ch32_v1024.safetensors"), "pt") as f:
        fixture_keys = {k[len("state."):] for k in f.keys() if k.startswith("state.")}
    assert len(sd) == 324 and set(sd) == fixture_keys  # same names at every width
    spot = {"encoder.conv_in.weight": (160, 3, 3, 3), "encoder.down.2.block.0.nin_shortcut.weight": (320, 160, 1, 1),
            "encoder.down.4.attn.1.qkv.weight": (1920, 640, 1, 1), "encoder.conv_out.weight": (32, 640, 3, 3),
            "decoder.conv_in.weight": (640, 32, 3, 3), "decoder.up.3.block.0.nin_shortcut.weight": (320, 640, 1, 1),
            "decoder.up.4.attn.2.proj_out.weight": (640, 640, 1, 1), "decoder.up.1.upsample.conv.weight": (160, 160, 3, 3),
            "decoder.conv_out.weight": (3, 160, 3, 3), "quantize.embedding.weight": (4096, 32),
            "quantize.ema_vocab_hit_SV": (10, 4096), "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3)}
    for k, shape in spot.items():
        assert tuple(sd[k].shape) == shape, k
    assert "decoder.up.0.upsample.conv.weight" not in sd and "encoder.down.4.downsample.conv.weight" not in sd


# ------------------------------------------------------------------------------------------ random weights
def test_from_config_random_weights_are_deterministic_and_use_many_codes():
    from mvar_dist.config import TokenizerConfig, load_config

    small = TokenizerConfig(**{k: v for k, v in TINY.items()}, resolution=16)
    h0 = MultiScaleVQVAE.from_config(small, seed=0).weights_hash()
    assert MultiScaleVQVAE.from_config(small, seed=0).weights_hash() == h0
    assert MultiScaleVQVAE.from_config(small, seed=1).weights_hash() != h0
    cfg = load_config("var_tiny").tokenizer
    a = MultiScaleVQVAE.from_config(cfg, seed=0)
    assert a.resolution == cfg.resolution and a.patch_nums == tuple(cfg.patch_nums)
    ids = a.img_to_ids(_imgs(a, n=4))
    assert len(torch.unique(ids[-1])) >= 16  # of 4 x 16 last-scale tokens: not a collapsed codebook
    assert len(torch.unique(torch.cat([t.flatten() for t in ids]))) >= 32


def test_tokens_concatenate_scales_and_empty_batches_work(tiny):
    imgs = _imgs(tiny, n=3)
    ids = tiny.img_to_ids(imgs, chunk_size=2)
    tokens_BL = tiny.img_to_tokens(imgs)
    assert tokens_BL.shape == (3, tiny.seq_len) and torch.equal(tokens_BL, torch.cat(ids, 1))
    assert [tuple(t.shape) for t in tiny.img_to_ids(imgs[:0])] == [(0, p * p) for p in TINY["patch_nums"]]


def test_bf16_autocast_encoder_keeps_fp32_quantiser(tiny):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = tiny.img_to_ids(_imgs(tiny))
        x = tiny.ids_to_teacher_input(ids)
    assert all(t.dtype == torch.int64 for t in ids) and x.dtype == torch.float32


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("make,exc,msg", [
    (lambda v: _imgs(v) * 127.5 + 127.5, ValueError, r"\[-1, 1\].*127\.5"),
    (lambda v: _imgs(v) * 0.5 + 0.5 - 1.5, ValueError, r"\[-1, 1\]"),
    (lambda v: _imgs(v)[:, :1], ValueError, r"\(B, 3, H, W\)"),
    (lambda v: _imgs(v)[0], ValueError, r"\(B, 3, H, W\)"),
    (lambda v: torch.zeros(1, 3, 12, 12), ValueError, "16 px"),
    (lambda v: torch.zeros(1, 3, 16, 16, dtype=torch.uint8), TypeError, "floating point"),
    (lambda v: torch.full((1, 3, 16, 16), float("nan")), ValueError, r"\[-1, 1\]"),
    (lambda v: _imgs(v).numpy(), TypeError, "torch.Tensor"),
])
def test_bad_images_are_refused_clearly(tiny, make, exc, msg):
    with pytest.raises(exc, match=msg):
        tiny.img_to_ids(make(tiny))


def test_bad_ids_are_refused_clearly(tiny):
    ids = tiny.img_to_ids(_imgs(tiny))
    with pytest.raises(ValueError, match="scale 1 out of range"):
        tiny.ids_to_img([ids[0], ids[1] + 64] + ids[2:])
    with pytest.raises(ValueError, match=r"scale 2 must have shape \(2, 9\)"):
        tiny.ids_to_img(ids[:2] + [ids[2][:, :4]] + ids[3:])
    with pytest.raises(ValueError, match="5 scales"):
        tiny.ids_to_img(ids[:3])
    with pytest.raises(TypeError, match="integer"):
        tiny.ids_to_teacher_input([t.float() for t in ids])
    with pytest.raises(ValueError, match=r"\(B, 103\)"):
        tiny.ids_to_teacher_input(torch.zeros(2, 50, dtype=torch.long))
    with pytest.raises(ValueError, match="scale index 7"):
        tiny.next_ar_input(7, torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 1, 1))


def test_bad_state_dicts_name_the_problem(tiny, tmp_path):
    sd = tiny.official_state_dict()
    broken = dict(sd)
    del broken["decoder.conv_out.bias"]
    broken["encoder.extra.weight"] = torch.zeros(1)
    broken["quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    with pytest.raises(ValueError) as ei:
        MultiScaleVQVAE.from_official(broken, patch_nums=TINY["patch_nums"])
    text = str(ei.value)
    assert "missing key(s): decoder.conv_out.bias" in text and "unexpected key(s): encoder.extra.weight" in text
    assert "quant_conv.weight: file (8, 8, 1, 1) vs model (8, 8, 3, 3)" in text
    with pytest.raises(ValueError, match="quantize.embedding.weight: file"):
        MultiScaleVQVAE.from_official(sd, **dict(TINY, vocab_size=128))
    with pytest.raises(ValueError, match="official names"):
        MultiScaleVQVAE.from_official({f"vae.{k}": v for k, v in sd.items()})
    with pytest.raises(FileNotFoundError, match="not found"):
        MultiScaleVQVAE.from_official(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        MultiScaleVQVAE.from_official(junk)
    wrapped = MultiScaleVQVAE.from_official({"model": sd}, patch_nums=TINY["patch_nums"])
    assert wrapped.weights_hash() == tiny.weights_hash()
