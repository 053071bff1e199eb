"""Tokenizer training, end to end on a tiny ImageFolder (CPU): rejects counted, stop + resume gives
identical losses (with quantiser dropout, dead-code re-init and the discriminator on), the export
loads with `from_official` and gives the trainer's ids, 2 gloo ranks equal 1 rank, and the
commands shown in docs/tokenizer_training.md run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stripe_images import write_stripe_images
import torch

from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.train.tokenizer.config import load_tok_config
from mvar_dist.train.tokenizer.quant import quantize_train
from mvar_dist.train.tokenizer.run import fit
from mvar_dist.train.tokenizer.state import export_generator
from mvar_dist.train.tokenizer.trainer import TokenizerTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launchers" / "train_tokenizer.py"
TINY = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=64", "tokenizer.z_channels=8",
        "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16", "data.min_side=8", "data.num_workers=0",
        "optim.global_batch=4", "log.log_every=1", "optim.lr=1e-3"]
PERF_KEYS = {"images_per_s"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """2 classes x 6 PNGs of 24 px (sinusoid stripes) and one corrupt file."""
    return write_stripe_images(tmp_path_factory.mktemp("tok_imgs"), 6, 24, 24)


def records(run: Path):
    return [{k: v for k, v in json.loads(line).items() if k not in PERF_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stop_resume_identical_and_export_loads(tmp_path, image_dir):
    extra = [f"data.root={image_dir}", "optim.max_steps=6", "ckpt.every_steps=3", "quant.dropout_p=0.5",
             "quant.dropout_min_scales=2", "quant.dead_every=2", "quant.dead_after=2", "gan.weight=0.5",
             "gan.start_step=2", "gan.n_layers=1", "gan.ndf=8", "gan.lecam=0.001", "data.hflip=true",
             "optim.ema=0.99"]
    full = fit(load_tok_config(None, TINY + extra + [f"out_dir={tmp_path / 'a'}", "data.num_workers=1"]))
    assert full["status"] == "finished" and full["rejected"] >= 1
    part = load_tok_config(None, TINY + extra + [f"out_dir={tmp_path / 'b'}", "stop_after=2"])
    first = fit(part)
    assert first["status"] == "stopped" and first["step"] == 2     # saved at the stop, not at ckpt.every
    part.stop_after = 0
    second = fit(part)
    assert second["resumed_from"].endswith("step_00000002") and second["step"] == 6
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert a == b
    assert any("adaptive_w" in r for r in a) and any(r.get("dead_reinit", 0) > 0 for r in a)
    assert any(r["scales_used"] < 4 for r in a)   # quantiser dropout stopped early in some step
    # the exported generator is the trained one, loadable unchanged by from_official
    cfg = load_tok_config(None, TINY + extra + [f"out_dir={tmp_path / 'a'}"])
    tr = TokenizerTrainer(cfg)
    tr.resume()
    img = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ids = quantize_train(tr.vae.quantize, tr.vae.quant_conv(tr.vae.encoder(img))).ids
    for name in ("vae.pth", "vae.safetensors"):
        vae = MultiScaleVQVAE.from_official(tmp_path / "a" / "export" / name, patch_nums=(1, 2, 4, 8))
        assert vae.weights_hash() == tr.vae.weights_hash()
        assert all(torch.equal(x, y) for x, y in zip(vae.img_to_ids(img), ids))
    assert isinstance(torch.load(tmp_path / "a" / "export" / "vae.pth", weights_only=True), dict)
    ema = MultiScaleVQVAE.from_official(tmp_path / "a" / "export" / "vae_ema.safetensors", patch_nums=(1, 2, 4, 8))
    assert ema.weights_hash() == tr.ema_model().weights_hash() != tr.vae.weights_hash()
    # the tokenisation job's `tokenizer.checkpoint=` path (MultiScaleVQVAE.from_config) loads it as well
    tk = cfg.tokenizer
    tk.checkpoint = str(tmp_path / "a" / "export" / "vae.safetensors")
    assert MultiScaleVQVAE.from_config(tk).weights_hash() == tr.vae.weights_hash()


def test_export_with_l2_normalised_codes(tmp_path):
    cfg = load_tok_config(None, TINY + [f"out_dir={tmp_path}", "quant.l2_norm_codes=true"])
    tr = TokenizerTrainer(cfg)
    img = torch.rand(4, 3, 16, 16) * 2 - 1
    tr.train_step(img)
    paths = export_generator(tr.vae, tmp_path / "export", l2_norm_codes=True)
    vae = MultiScaleVQVAE.from_official(paths["safetensors"], patch_nums=(1, 2, 4, 8))
    with torch.no_grad():
        ids = tr.forward(img)[1].ids
    assert all(torch.equal(x, y) for x, y in zip(vae.img_to_ids(img), ids))
    assert torch.allclose(vae.codebook.norm(dim=1), torch.ones(64), atol=1e-5)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_rank(tmp_path, image_dir):
    extra = [f"data.root={image_dir}", "optim.max_steps=3", "ckpt.every_steps=3", "quant.dead_every=0"]
    fit(load_tok_config(None, TINY + extra + [f"out_dir={tmp_path / 'one'}"]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
           str(LAUNCHER), *TINY, *extra, f"out_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == len(two) == 3
    for r1, r2 in zip(one, two):
        for k in ("total", "l1", "l2", "vq", "grad_norm", "usage_s3", "rejected"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), (k, r1, r2)
    assert (tmp_path / "two" / "export" / "vae.safetensors").is_file()
    # world-size change: the 2-rank checkpoint continues on 1 rank like the 1-rank run does
    assert json.loads((tmp_path / "two" / "ckpt" / "step_00000003" / "meta.json").read_text())["world_size"] == 2
    for name in ("one", "two"):
        fit(load_tok_config(None, TINY + [*extra, "optim.max_steps=4", f"out_dir={tmp_path / name}"]))
    r1, r2 = records(tmp_path / "one")[-1], records(tmp_path / "two")[-1]
    assert r1["step"] == r2["step"] == 4
    assert r2["total"] == pytest.approx(r1["total"], rel=1e-4)


def _launcher_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tokenizer_launcher", LAUNCHER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_documented_commands(tmp_path, image_dir, capsys):
    """docs/tokenizer_training.md: `--help` (subprocess), the one-process run and the error exit (in-process)."""
    help_ = subprocess.run([sys.executable, str(LAUNCHER), "--help"], capture_output=True, text=True, env=_env())
    assert help_.returncode == 0 and "dotted overrides" in help_.stdout
    main = _launcher_main()
    assert main([f"data.root={image_dir}", f"out_dir={tmp_path / 'r'}", *TINY, "optim.max_steps=2", "ckpt.every_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "LPIPS off" in out and '"status": "finished"' in out
    assert (tmp_path / "r" / "export" / "vae.pth").is_file()
    # fine-tuning from an official-key file (here: the export just written)
    assert main([f"init={tmp_path / 'r' / 'export' / 'vae.pth'}", f"data.root={image_dir}", f"out_dir={tmp_path / 'ft'}",
                 *TINY, "optim.max_steps=1", "ckpt.every_steps=1", "optim.lr=3e-5"]) == 0
    capsys.readouterr()
    assert main(["--resume", "none", f"data.root={tmp_path / 'none'}", *TINY]) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_sigterm_saves_and_stops(tmp_path, image_dir, monkeypatch):
    import signal

    cfg = load_tok_config(None, TINY + [f"data.root={image_dir}", f"out_dir={tmp_path}", "optim.max_steps=50",
                                        "ckpt.every_steps=50", "gan.weight=0.5", "gan.n_layers=1", "gan.ndf=8"])
    real_step = TokenizerTrainer.train_step

    def step_then_signal(self, img):
        out = real_step(self, img)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag; the loop saves and exits
        return out

    monkeypatch.setattr(TokenizerTrainer, "train_step", step_then_signal)
    summary = fit(cfg)
    assert summary["status"] == "stopped" and summary["step"] == 2
    folder = tmp_path / "ckpt" / "step_00000002"
    assert (folder / "COMPLETE").is_file() and (folder / "vae.safetensors").is_file()
    state = torch.load(folder / "state.pt", weights_only=True)
    assert {"disc", "opt_d", "opt", "vae", "health"} <= set(state)
    assert not (tmp_path / "export").exists()  # export only when training finished
    recs = records(tmp_path)
    assert "adaptive_w" in recs[-1] and "d_hinge" in recs[-1]
