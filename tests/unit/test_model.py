"""MVAR/VAR against the large official-code fixtures (the extended parity run; skipped without them):
logits, greedy CFG sampling, state-dict import/export. test_parity_small.py is the default-suite run."""
import pytest
import torch
from safetensors.torch import load_file

from mvar_dist.model import MVAR
from mvar_dist.model.official import infer_hparams
from mvar_dist.vqvae import MultiScaleVQVAE
from parity import strip_prefix as _strip

# (fixture file, key prefix of the model state, prefix of inputs/expectations)
CASES = {
    "mvar_l2": ("mvar_tiny_d3.safetensors", "l2.state.", "l2."),
    "mvar_nol2": ("mvar_tiny_d3_nol2.safetensors", "nol2.state.", "nol2."),
    "var": ("var_tiny_d3.safetensors", "var.state.", ""),
}


@pytest.fixture(scope="module")
def loaded(shared_fixtures):
    out = {}
    vqa = load_file(str(shared_fixtures / "vqvae_ch32_v1024.safetensors"))
    vae_a = MultiScaleVQVAE.from_official(_strip(vqa, "state."), vocab_size=1024, ch=32)
    for name, (fname, mpre, epre) in CASES.items():
        sd = load_file(str(shared_fixtures / fname))
        if name == "var":
            vae = MultiScaleVQVAE.from_official({k: v.float() for k, v in _strip(sd, "vae.state.").items()},
                                                vocab_size=1024, ch=32)
        else:
            vae = vae_a
        out[name] = (sd, _strip(sd, mpre), epre, vae)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_official(loaded, name):
    sd, state, e, _ = loaded[name]
    model = MVAR.from_official(state)
    assert model.arch == ("var" if name == "var" else "mvar")
    assert model.cfg.attn_l2_norm == (name != "mvar_nol2")
    model.train()  # the fixtures are train-mode logits
    with torch.no_grad():
        logits = model(sd[e + "input.label"], sd[e + "input.x"])
    expect = sd[e + "expect.logits"]
    assert logits.dtype == torch.float32 and logits.shape == expect.shape
    rel = (logits - expect).norm() / expect.norm()
    assert rel <= 1e-4 and (logits - expect).abs().max() <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_cfg_sampling_matches_official(loaded, name):
    sd, state, e, vae = loaded[name]
    model = MVAR.from_official(state)
    ids, img = model.sample(vae, sd[e + "input.label"], cfg_scale=1.5, top_k=1, top_p=0.0, seed=0)
    for si, got in enumerate(ids):
        assert torch.equal(got, sd[f"{e}expect.greedy_cfg1.5.idx.{si}"]), f"scale {si}"
    torch.testing.assert_close(img, sd[e + "expect.greedy_cfg1.5.img"], rtol=0, atol=1e-4)
    assert model.training  # sample() restores the mode it found


def test_export_round_trip_uses_official_names(loaded):
    sd, state, _, _ = loaded["mvar_l2"]
    model = MVAR.from_official(state)
    exported = model.official_state_dict()
    assert set(exported) == set(state) | {"attn_bias_for_masking"}
    for k, v in state.items():
        assert torch.equal(exported[k], v), k
    bias = exported["attn_bias_for_masking"][0, 0]
    assert bias[0, 0] == 0 and torch.isinf(bias[0, 1]) and bias[1, 4] == 0 and torch.isinf(bias[5, 4])
    var_state = loaded["var"][1]
    var_exp = MVAR.from_official(var_state).official_state_dict()
    assert set(var_exp) == set(var_state) | {"attn_bias_for_masking"}
    assert var_exp["attn_bias_for_masking"][0, 0, 5, 4] == 0  # block-causal: scale 2 sees scale 1


def test_from_official_file_and_buffers_optional(loaded, tmp_path):
    from safetensors.torch import save_file

    _, state, _, _ = loaded["mvar_nol2"]
    no_buffers = {k: v for k, v in state.items() if not k.endswith(("lvl_1L", "zero_k_bias", "patch_nums"))}
    path = tmp_path / "d3.safetensors"
    save_file(no_buffers, str(path))
    m1, m2 = MVAR.from_official(path), MVAR.from_official(state)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    pt = tmp_path / "d3.pth"
    torch.save(no_buffers, pt)
    assert MVAR.from_official(pt).num_params() == m1.num_params()


def test_from_official_is_strict(loaded):
    _, state, _, _ = loaded["mvar_l2"]
    hp = infer_hparams(state)
    assert (hp["depth"], hp["width"], hp["num_classes"], hp["vocab_size"], hp["d_state"]) == (3, 192, 10, 1024, 64)
    bad = dict(state)
    del bad["blocks.1.mamba.D"]
    with pytest.raises(ValueError, match="blocks.1.mamba.D"):
        MVAR.from_official(bad)
    extra = dict(state, **{"blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected.*blocks.0.attn.extra"):
        MVAR.from_official(extra)
    with pytest.raises(ValueError, match="patch_nums"):
        MVAR.from_official(state, patch_nums=(1, 2, 3))
    with pytest.raises(ValueError, match="missing 'word_embed.weight'"):
        MVAR.from_official({"head.weight": torch.zeros(2, 2)})
    with pytest.raises(FileNotFoundError):
        MVAR.from_official("/nonexistent/d16.pth")


def test_fixture_precision_does_not_depend_on_sdpa_backend(loaded):
    """VAR fixture under the explicit fp32 reference attention gives the same logits."""
    from mvar_dist.ops import attention as A

    sd, state, e, _ = loaded["var"]
    model = MVAR.from_official(state).eval()
    try:
        A.set_backend("reference")
        with torch.no_grad():
            ref = model(sd[e + "input.label"], sd[e + "input.x"])
    finally:
        A.set_backend(None)
    torch.testing.assert_close(ref, sd[e + "expect.logits"], rtol=0, atol=5e-5)
