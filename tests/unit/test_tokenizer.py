"""MultiScaleVQVAE against the official-code parity fixture A (../shared/fixtures/vqvae_ch32_v1024): the
extended parity run, skipped without it; test_parity_small.py is the default-suite run."""
from __future__ import annotations

import pytest
import torch

from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.vqvae.weights import EMA_KEY

PN = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
HP = dict(vocab_size=1024, ch=32, z_channels=32, patch_nums=PN, share_quant_resi=4)


@pytest.fixture(scope="module")
def fx(shared_fixtures):
    from safetensors.torch import load_file

    return load_file(str(shared_fixtures / "vqvae_ch32_v1024.safetensors"))


@pytest.fixture(scope="module")
def state(fx):
    return {k[len("state."):]: v for k, v in fx.items() if k.startswith("state.")}


@pytest.fixture(scope="module")
def vae(state):
    return MultiScaleVQVAE.from_official(state, **HP)


@pytest.fixture(scope="module")
def expect_ids(fx):
    return [fx[f"expect.idx.{si}"] for si in range(len(PN))]


@pytest.fixture(scope="module")
def our_ids(vae, fx):
    return vae.img_to_ids(fx["input.img"])


def test_fixture_model_size(vae, state):
    assert sum(p.numel() for p in vae.parameters()) == 4_514_563
    assert len(state) == 324 and set(vae.state_dict()) == set(state)
    assert all(not p.requires_grad for p in vae.parameters()) and not vae.training


def test_token_ids_match_official_exactly(our_ids, expect_ids):
    assert len(our_ids) == len(PN)
    for si, (ours, ref) in enumerate(zip(our_ids, expect_ids)):
        assert ours.dtype == torch.int64 and ours.shape == (3, PN[si] ** 2)
        assert torch.equal(ours, ref), f"scale {si}: {(ours != ref).sum().item()} ids differ"


def test_teacher_input_fhat_and_reconstruction(vae, fx, expect_ids):
    x = vae.ids_to_teacher_input(expect_ids)
    assert x.shape == (3, 679, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, fx["expect.teacher_input"], atol=1e-5, rtol=0)
    f_hat = vae.ids_to_fhat(expect_ids)
    torch.testing.assert_close(f_hat, fx["expect.fhat"], atol=1e-5, rtol=0)
    img = vae.ids_to_img(expect_ids)
    assert img.shape == (3, 3, 256, 256)
    torch.testing.assert_close(img, fx["expect.recon"], atol=1e-4, rtol=0)


def test_concatenated_ids_are_accepted(vae, expect_ids, fx):
    tokens_BL = torch.cat(expect_ids, dim=1).to(torch.int32)  # e.g. straight from a uint16 shard row
    torch.testing.assert_close(vae.ids_to_teacher_input(tokens_BL), fx["expect.teacher_input"], atol=1e-5, rtol=0)


def test_chunked_batches_and_inference_mode_give_the_same_ids(vae, fx, our_ids):
    with torch.inference_mode():
        ids = vae.img_to_ids(fx["input.img"][:2], chunk_size=1)
    for si in range(len(PN)):
        assert torch.equal(ids[si], our_ids[si][:2])


def test_sampler_step_reproduces_teacher_input_and_fhat(vae, fx, expect_ids):
    B = 3
    f_hat = torch.zeros(B, 32, 16, 16)
    inputs = []
    for si in range(len(PN)):
        f_hat_before = f_hat.clone()
        f_hat, nxt = vae.next_ar_input(si, f_hat, vae.ids_to_code_map(si, expect_ids[si]))
        if si < len(PN) - 1:
            assert nxt.shape == (B, 32, PN[si + 1], PN[si + 1])
            inputs.append(nxt.flatten(2).transpose(1, 2))
        else:
            assert nxt is f_hat
        if si == 0:
            assert torch.equal(f_hat_before, torch.zeros_like(f_hat_before))  # not updated in place
    torch.testing.assert_close(torch.cat(inputs, 1), fx["expect.teacher_input"], atol=1e-5, rtol=0)
    torch.testing.assert_close(f_hat, fx["expect.fhat"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_state_dict_round_trip(vae, state, tmp_path, suffix, fx, our_ids):
    sd = vae.official_state_dict()
    assert set(sd) == set(state)
    for k, v in state.items():
        assert torch.equal(sd[k], v), k
    path = vae.save_official(tmp_path / f"vae{suffix}")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    again = MultiScaleVQVAE.from_official(path, patch_nums=PN)  # sizes inferred from the shapes
    assert again.hparams() == vae.hparams()
    assert again.weights_hash() == vae.weights_hash()
    ids = again.img_to_ids(fx["input.img"][:1])
    assert all(torch.equal(a, b[:1]) for a, b in zip(ids, our_ids))


def test_weights_hash_ignores_ema_buffer_only(state):
    base = MultiScaleVQVAE.from_official(state, **HP)
    h0 = base.weights_hash()
    assert len(h0) == 64 and h0 == MultiScaleVQVAE.from_official(state, **HP).weights_hash()
    other = dict(state)
    other[EMA_KEY] = torch.ones(1, 1024)  # a file written with another scale count: tolerated
    assert MultiScaleVQVAE.from_official(other, **HP).weights_hash() == h0
    other = dict(state)
    w = other["quantize.embedding.weight"].clone()
    w[5, 3] += 1e-3
    other["quantize.embedding.weight"] = w
    assert MultiScaleVQVAE.from_official(other, **HP).weights_hash() != h0
