"""Parity with the official code on the small fixtures vendored in tests/fixtures (sizes, conventions and
tolerances in its README.md): the VQVAE (ids per scale, teacher input, f_hat, reconstruction), M-VAR with
(`l2`) and without (`nol2`) attention l2-norm, and VAR (train-mode logits, greedy CFG-1.5 samples).
These run in the default suite; test_tokenizer.py / test_model.py are the extended run on the large fixtures."""
from __future__ import annotations

import pytest
import torch

from mvar_dist.model import MVAR
from mvar_dist.vqvae import MultiScaleVQVAE
from parity import read_fixture, strip_prefix

PN = (1, 2, 3, 4, 5, 6, 8)   # 7 scales: L = 155 tokens, teacher input (B, 154, 16)
# name -> (file, prefix of inputs/expectations, parameters, arch, attn_l2_norm)
CASES = {"mvar_l2": ("mvar_small", "l2.", 280_014, "mvar", True),
         "mvar_nol2": ("mvar_small", "nol2.", 280_012, "mvar", False),
         "var": ("var_small", "", 186_434, "var", True)}


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def vq(small_fixtures):
    return read_fixture(small_fixtures / "vqvae_small.safetensors")


@pytest.fixture(scope="module")
def vae(vq):
    fx, meta = vq
    assert tuple(meta["hparams"]["patch_nums"]) == PN and tuple(meta["hparams"]["ch_mult"]) == (1, 1)
    return MultiScaleVQVAE.from_official(strip_prefix(fx, "state."), patch_nums=PN)  # other sizes from the shapes


@pytest.fixture(scope="module")
def models(small_fixtures):
    """name -> (model, fixture tensors, prefix). nol2 uses the l2 weights without the two scale_mul_1H11."""
    files = {f: read_fixture(small_fixtures / f"{f}.safetensors")[0] for f in ("mvar_small", "var_small")}
    l2 = strip_prefix(files["mvar_small"], "l2.state.")
    states = {"mvar_l2": l2, "mvar_nol2": {k: v for k, v in l2.items() if not k.endswith(".attn.scale_mul_1H11")},
              "var": strip_prefix(files["var_small"], "var.state.")}
    assert len(l2) - len(states["mvar_nol2"]) == 2
    return {name: (MVAR.from_official(states[name], patch_nums=PN), files[f], e)
            for name, (f, e, *_) in CASES.items()}


def test_vqvae_architecture_from_the_fp16_state(vae, vq):
    fx, _ = vq
    hp = vae.hparams()
    assert (hp["vocab_size"], hp["z_channels"], hp["ch"], tuple(hp["ch_mult"]), hp["share_quant_resi"]) == \
        (256, 16, 32, (1, 1), 4)
    assert sum(p.numel() for p in vae.parameters()) == 338_419
    assert (vae.resolution, vae.downsample) == (16, 2)
    assert vae.quantize.quant_resi.table == (0, 0, 1, 2, 2, 3, 3)   # the 7-scale Phi table (tie at si=3 -> 2)
    w16 = fx["state.quantize.embedding.weight"]
    assert w16.dtype == torch.float16 and torch.equal(vae.quantize.embedding.weight, w16.float())


def test_vqvae_ids_teacher_input_fhat_and_reconstruction(vae, vq):
    fx, _ = vq
    ids = vae.img_to_ids(fx["input.img"])
    assert len(ids) == len(PN)
    for si, got in enumerate(ids):
        assert got.dtype == torch.int64 and got.shape == (3, PN[si] ** 2)
        assert torch.equal(got, fx[f"expect.idx.{si}"]), f"scale {si}: {(got != fx[f'expect.idx.{si}']).sum()} ids"
    _close(vae.ids_to_teacher_input(ids), fx["expect.teacher_input"], 1e-5)
    _close(vae.ids_to_fhat(ids), fx["expect.fhat"], 1e-5)
    _close(vae.ids_to_img(ids), fx["expect.recon"], 1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_model_loads_with_the_fixture_sizes(models, name):
    model, _, _ = models[name]
    _, _, n_params, arch, l2 = CASES[name]
    assert (model.arch, model.cfg.attn_l2_norm, model.num_params(), model.depth) == (arch, l2, n_params, 2)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("name", list(CASES))
def test_train_mode_logits(models, name):
    model, fx, e = models[name]
    model.train()
    with torch.no_grad():
        logits = model(fx[e + "input.label"], fx[e + "input.x"])
    assert logits.shape == (2, 155, 256)
    _close(logits, fx[e + "expect.logits"], 1e-4)


def test_l2_norm_changes_every_scale_but_the_first(models):
    """Attention over scale 0's single token ignores q and k, so only there do l2 and nol2 agree."""
    out = {}
    for name in ("mvar_l2", "mvar_nol2"):
        model, fx, e = models[name]
        with torch.no_grad():
            out[name] = model.eval()(fx[e + "input.label"], fx[e + "input.x"])
    _close(out["mvar_l2"][:, :1], out["mvar_nol2"][:, :1], 1e-5)
    assert (out["mvar_l2"][:, 1:] - out["mvar_nol2"][:, 1:]).abs().max() > 0.1


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "recompute"])
@pytest.mark.parametrize("name", list(CASES))
def test_greedy_cfg_sample(models, vae, name, incremental):
    model, fx, e = models[name]
    ids, img = model.sample(vae, fx[e + "input.label"], cfg_scale=1.5, top_k=1, top_p=0.0, seed=0,
                            incremental=incremental)
    assert len(ids) == len(PN)
    for si, got in enumerate(ids):
        assert torch.equal(got, fx[f"{e}expect.greedy_cfg1.5.idx.{si}"]), f"scale {si}"
    _close(img, fx[e + "expect.greedy_cfg1.5.img"], 1e-4)


def test_vendored_files_are_the_shared_ones(small_fixtures, shared_fixtures):
    """Extended run only: the vendored tensors are byte-exact copies of ../shared/fixtures/small."""
    src = shared_fixtures / "small"
    if not src.is_dir():
        pytest.skip(f"no {src} to compare with")
    # tests/fixtures also holds our own parity fixtures; only the official ones must match byte for byte
    official = sorted(p.name for p in src.iterdir() if p.name != "README.md")
    assert official == ["mvar_small.safetensors", "var_small.safetensors", "vqvae_small.safetensors"]
    for name in official:
        assert (small_fixtures / name).read_bytes() == (src / name).read_bytes(), name
    # our README = a preface + the shared README unchanged + sections on our own fixtures
    assert (src / "README.md").read_text() in (small_fixtures / "README.md").read_text()
