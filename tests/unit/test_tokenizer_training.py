"""Tokenizer training, unit level (CPU, tiny models): the straight-through quantiser matches the
inference ids, gradients go where VAR's VectorQuantizer2 sends them, dead-code re-initialisation,
the adaptive weight, loss decrease, and the error messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.train.tokenizer.codebook_health import CodebookHealth
from mvar_dist.train.tokenizer.config import load_tok_config
from mvar_dist.train.tokenizer.data import ImageStream
from mvar_dist.train.tokenizer.losses import adaptive_weight
from mvar_dist.train.tokenizer.quant import dropout_stop, quantize_train
from mvar_dist.train.tokenizer.state import export_copy
from mvar_dist.train.tokenizer.trainer import TokenizerTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=64", "tokenizer.z_channels=8",
        "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16", "data.min_side=8", "data.num_workers=0"]


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_tok_config(None, TINY + [f"out_dir={tmp_path / 'run'}", *extra])


def tiny_vae(seed: int = 0) -> MultiScaleVQVAE:
    return MultiScaleVQVAE.random(seed=seed, vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1),
                                  patch_nums=(1, 2, 4, 8), share_quant_resi=4)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("l2_norm", [False, True])
def test_training_ids_equal_inference_ids(l2_norm):
    vae = tiny_vae()
    img = images()
    q = quantize_train(vae.quantize, vae.encode_latent(img), l2_norm=l2_norm)
    ref = export_copy(vae, l2_norm).img_to_ids(img)
    assert len(q.ids) == len(ref)
    for a, b in zip(q.ids, ref):
        assert torch.equal(a, b)
    # the forward value of the straight-through latent is the quantised reconstruction
    if not l2_norm:
        assert torch.allclose(q.f_hat_st, vae.ids_to_fhat(ref), atol=1e-5)


def test_straight_through_gradients():
    vae = tiny_vae().requires_grad_(True)
    img = images()
    f = vae.quant_conv(vae.encoder(img))
    q = quantize_train(vae.quantize, f)
    rec = vae.decoder(vae.post_quant_conv(q.f_hat_st))
    rec.square().mean().backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0          # reaches the encoder through the ST estimator
    assert vae.quantize.embedding.weight.grad is None                 # the codes learn only from the VQ loss
    vae.zero_grad(set_to_none=True)
    q = quantize_train(vae.quantize, vae.quant_conv(vae.encoder(img)), beta=0.25)
    q.vq_loss.backward()
    assert vae.quantize.embedding.weight.grad.abs().sum() > 0
    assert vae.quantize.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0           # commitment term


def test_vq_loss_formula():
    vae = tiny_vae()
    f = vae.encode_latent(images())
    q = quantize_train(vae.quantize, f, beta=0.25)
    # VAR: mean over scales of (1 + beta) * ||f_hat_k - f||^2 in value
    f_hat, acc = torch.zeros_like(f), 0.0
    for si in range(4):
        f_hat = f_hat + vae.quantize.scale_contribution(si, vae.quantize.embed(q.ids[si], vae.patch_nums[si]))
        acc += 1.25 * float(torch.nn.functional.mse_loss(f_hat, f))
    assert float(q.vq_loss) == pytest.approx(acc / 4, rel=1e-5)


def test_quantiser_dropout_is_deterministic_and_bounded():
    draws = [dropout_stop(10, 0.5, 3, seed=1, step=s) for s in range(200)]
    assert draws == [dropout_stop(10, 0.5, 3, seed=1, step=s) for s in range(200)]
    stops = [d for d in draws if d is not None]
    assert 60 < len(stops) < 140 and min(stops) >= 3 and max(stops) <= 9
    assert dropout_stop(10, 0.0, 3, 0, 5) is None
    q = quantize_train(tiny_vae().quantize, tiny_vae().encode_latent(images()), stop_at=2)
    assert q.scales_used == 2 and len(q.ids) == 2


def test_dead_code_reinit_revives_unused_codes():
    vae = tiny_vae().requires_grad_(True)
    with torch.no_grad():
        vae.quantize.embedding.weight[32:] = 1e3   # half the codebook far from every latent: never used
    img = images(8)
    health = CodebookHealth(64, 4, 8, buffer_rows=512, rows_per_step=256, seed=0)
    used_before = set()
    for step in range(3):
        q = quantize_train(vae.quantize, vae.encode_latent(img))
        health.observe(q.ids, q.rows_NC, step)
        used_before |= {int(i) for ids in q.ids for i in ids.flatten()}
    assert not used_before & set(range(32, 64))
    opt = torch.optim.AdamW(vae.parameters())
    n = health.reinit_dead(vae.quantize.embedding, opt, step=10, dead_after=5)
    assert n >= 32
    q = quantize_train(vae.quantize, vae.encode_latent(img))
    used_after = {int(i) for ids in q.ids for i in ids.flatten()}
    assert used_after & set(range(32, 64)), "re-initialised codes are used again"
    stats = health.interval_stats(torch.device("cpu"))
    assert set(stats) >= {"usage_s0", "ppl_s3", "usage_all"} and 0 < stats["usage_s3"] <= 1


def test_adaptive_weight_equals_formula(tmp_path):
    cfg = tiny_cfg(tmp_path, "gan.weight=0.5", "gan.n_layers=1", "gan.ndf=8", "loss.l1=0")
    tr = TokenizerTrainer(cfg)
    img = images()
    rec, q = tr.forward(img)
    rec_loss = tr.weighted(tr.rec_terms(rec, img, q))
    from mvar_dist.train.tokenizer.losses import hinge_g_loss

    g_loss = hinge_g_loss(tr.disc(rec))
    last = tr.vae.decoder.conv_out.weight
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    expect = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4)
    assert float(tr.gan_adaptive(rec_loss, g_loss, 1.0)) == pytest.approx(float(expect), rel=1e-6)
    assert float(adaptive_weight(torch.ones(4), torch.zeros(4), max_weight=7.0)) == 7.0
    out = tr.train_step(img)
    assert {"adaptive_w", "d_hinge", "g_hinge"} <= set(out) and out["adaptive_w"] > 0


def test_few_dozen_steps_lower_reconstruction_loss(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.lr=2e-3", "quant.dead_every=0")
    tr = TokenizerTrainer(cfg)
    img = images(8)
    losses = [tr.train_step(img)["l2"] for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("old,new", [("optim.steps", "optim.max_steps"), ("optim.grad_clip", "optim.clip"),
                                     ("ckpt.every", "ckpt.every_steps"), ("log.every", "log.log_every")])
def test_renamed_keys_are_refused_naming_the_new_one(tmp_path, old, new):
    """The tokenizer trainer uses the main trainer's key names; an old one (override or YAML) names its successor."""
    from mvar_dist.config import ConfigError

    with pytest.raises(ConfigError, match=f"renamed to {new}"):
        load_tok_config(None, [f"{old}=5"])
    section, key = old.split(".")
    (tmp_path / "tok.yaml").write_text(f"{section}:\n  {key}: 5\n")
    with pytest.raises(ConfigError, match=f"renamed to {new}"):
        load_tok_config(str(tmp_path / "tok.yaml"))
    assert getattr(getattr(load_tok_config(None, [f"{new}=5"]), section), new.split(".")[1]) == 5


def test_missing_image_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageStream(str(tmp_path / "nope"), 16)
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageStream("", 16)


def _reseal(folder: Path) -> None:
    """Rewrite the marker's file list after an edit, as a checkpoint written that way would have it."""
    from mvar_dist.runs import manifest as mf

    marker = json.loads((folder / mf.MARKER).read_text())
    marker["files"] = {rel: {**marker["files"][rel], **e} for rel, e in
                       mf.describe(folder, list(marker["files"])).items()}
    (folder / mf.MARKER).write_text(mf.marker_text(marker))


def test_wrong_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.resume={tmp_path / 'missing'}")).resume()
    half = tmp_path / "step_00000003"
    half.mkdir()
    with pytest.raises(ValueError, match="COMPLETE"):
        TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.resume={half}")).resume()
    # a complete folder from another tokenizer is refused, naming the difference
    cfg = tiny_cfg(tmp_path, f"ckpt.dir={tmp_path / 'ck'}")
    tr = TokenizerTrainer(cfg)
    folder = tr.save()
    other = tiny_cfg(tmp_path, "tokenizer.vocab_size=32", f"ckpt.resume={folder}")
    with pytest.raises(ValueError, match="vocab_size: checkpoint 64 vs run 32"):
        TokenizerTrainer(other).resume()
    meta = json.loads((folder / "meta.json").read_text())
    meta["kind"] = "something-else"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is damaged: meta.json has .* the marker says"):  # edited after the marker
        TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.resume={folder}")).resume()
    _reseal(folder)
    with pytest.raises(ValueError, match="not a tokenizer-training checkpoint"):
        TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.resume={folder}")).resume()
    with pytest.raises(FileNotFoundError, match="tokenizer checkpoint not found"):
        TokenizerTrainer(tiny_cfg(tmp_path, f"init={tmp_path / 'nope.pth'}"))


def test_resume_verifies_files_and_falls_back_past_a_damaged_checkpoint(tmp_path):
    """As the main trainer: a flipped bit in the newest state.pt is named, that folder is set aside (kept),
    and auto resume loads the one before; an explicitly named damaged folder is refused."""
    ck_dir = tmp_path / "ck"
    tr = TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.dir={ck_dir}", "ckpt.every_steps=1"))
    tr.train_step(images())
    good = tr.save()
    tr.train_step(images())
    bad = tr.save()
    data = bytearray((bad / "state.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (bad / "state.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{bad.name} is damaged: state.pt has sha256"):
        TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.dir={ck_dir}", f"ckpt.resume={bad}")).resume()
    logs = []
    again = TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.dir={ck_dir}", "ckpt.every_steps=1"), log=logs.append)
    assert again.resume() == good and again.step == 1
    assert any(f"{bad.name} is damaged: state.pt has sha256" in m for m in logs)
    assert (ck_dir / f"damaged.{bad.name}" / "state.pt").is_file() and not bad.exists()
    # more than max_fallback_steps back: refused unless allowed
    third = TokenizerTrainer(tiny_cfg(tmp_path, f"ckpt.dir={ck_dir}", "ckpt.max_fallback_steps=0"))
    (good / "state.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="no checkpoint under .* verifies"):
        third.resume()


def test_ema_weights_follow_their_formula(tmp_path):
    tr = TokenizerTrainer(tiny_cfg(tmp_path, "optim.ema=0.9"))
    w0 = tr.vae.decoder.conv_out.weight.detach().clone()
    tr.train_step(images())
    w1 = tr.vae.decoder.conv_out.weight.detach().clone()
    assert torch.allclose(tr.ema["decoder.conv_out.weight"], 0.9 * w0 + 0.1 * w1, atol=1e-7)
    ema = tr.ema_model()
    assert torch.equal(ema.decoder.conv_out.weight, tr.ema["decoder.conv_out.weight"])
    assert not torch.equal(ema.decoder.conv_out.weight, w1)
    assert "ema" in tr.state_dict()
