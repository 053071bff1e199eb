"""Tokenizer evaluation (issue 14 part 2): PSNR / SSIM against float64 references, the command's row
(LPIPS, rFID with random weights, per-scale usage), idempotent rows, the service's tokenizer kind
evaluating each complete step folder once, and clear errors."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from stripe_images import write_stripe_images
import torch

from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.eval.tokenizer import recon_metrics as M
from mvar_dist.eval.tokenizer.evaluate import EvalImages, TokEvalOptions, evaluate_tokenizer, load_tokenizer
from mvar_dist.eval.tokenizer.results import RESULTS_NAME, TokenizerResultsTable
from mvar_dist.eval.tokenizer.service import TokenizerEvalService, find_tokenizer_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
TINY_HP = dict(ch=32, ch_mult=(1, 1), vocab_size=32, z_channels=8, patch_nums=(1, 2, 4, 8))


def _launcher():
    spec = importlib.util.spec_from_file_location("eval_tokenizer_launcher", REPO / "launchers" / "eval_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


# ----------------------------------------------------------------------------------------- references
def ref_psnr(a: np.ndarray, b: np.ndarray, L: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(L * L / mse)


def ref_ssim(a: np.ndarray, b: np.ndarray, L: float) -> float:
    """Direct float64 SSIM of (C, H, W) images: explicit weighted sums over every valid 11x11 window."""
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    per_channel = []
    for c in range(a.shape[0]):
        x, y = a[c].astype(np.float64), b[c].astype(np.float64)
        vals = []
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def test_psnr_formula_scale_and_exact():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    b[2] = a[2]
    got = M.psnr(a, b)
    for i in range(2):
        assert got[i].item() == pytest.approx(ref_psnr(a[i].numpy(), b[i].numpy(), 1.0), rel=1e-12)
    assert math.isinf(got[2].item()) and got[2].item() > 0  # identical images: +inf, no epsilon
    # [0, 255] with L = 255 gives the same numbers (up to the float32 rounding of x * 255)
    assert torch.allclose(M.psnr(a * 255, b * 255, data_range=255.0)[:2], got[:2], rtol=1e-6)
    s = M.summarise_psnr(got.tolist())
    assert s["psnr_exact"] == 1 and s["psnr"] == pytest.approx(float(got[:2].mean()))
    assert math.isnan(M.summarise_psnr([math.inf])["psnr"])


def test_ssim_matches_direct_reference_and_properties():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 16, 18, generator=g)
    b = (a + 0.2 * torch.randn(2, 3, 16, 18, generator=g)).clamp(0, 1)
    got = M.ssim(a, b)
    for i in range(2):
        assert got[i].item() == pytest.approx(ref_ssim(a[i].numpy(), b[i].numpy(), 1.0), abs=1e-12)
    assert torch.allclose(M.ssim(b, a), got, atol=1e-14)                                    # symmetric
    assert torch.allclose(M.ssim(a, a), torch.ones(2, dtype=torch.float64), atol=1e-12)     # identical = 1
    assert torch.allclose(M.ssim(a * 255, b * 255, data_range=255.0), got, atol=1e-6)       # [0,255] same
    assert (got < 1).all()
    with pytest.raises(ValueError, match="at least 11"):
        M.ssim(a[..., :10, :10], b[..., :10, :10])


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """2 classes x 3 PNGs (24x20 px, smooth stripes) and one corrupt file."""
    return write_stripe_images(tmp_path_factory.mktemp("tok_eval_imgs"), 3, 20, 24, broken_class=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny tokenizer (.safetensors with hparams, and .pth), random LPIPS backbone + lin, random Inception."""
    from mvar_dist.eval.inception import random_state_dict
    from mvar_dist.train.tokenizer.lpips import LPIPS

    d = tmp_path_factory.mktemp("tok_eval_w")
    vae = MultiScaleVQVAE.random(seed=3, **TINY_HP)
    vae.save_official(d / "vae.safetensors")
    vae.save_official(d / "vae.pth")
    m = LPIPS()
    torch.save({f"features.{k}": v for k, v in m.features.state_dict().items()}, d / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": lin.weight.detach().abs() for k, lin in enumerate(m.lins)}, d / "lin.pth")
    torch.save(random_state_dict(seed=5), d / "inception.pth")
    return {"dir": d, "vae": vae}


# ----------------------------------------------------------------------------------------- the command
def test_command_row_contents_and_idempotent(tmp_path, image_dir, weights, capsys):
    w = weights["dir"]
    argv = ["--checkpoint", str(w / "vae.safetensors"), "--images", str(image_dir), "--results", str(tmp_path),
            "--lpips-vgg", str(w / "vgg16.pth"), "--lpips-lin", str(w / "lin.pth"),
            "--inception-weights", str(w / "inception.pth"), "--batch-size", "4"]
    main = _launcher()
    assert main(argv) == 0
    rows = TokenizerResultsTable(tmp_path).rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["checkpoint_id"] == str((w / "vae.safetensors").resolve())
    assert row["num_images"] == "6" and row["rejected"] == "1" and row["resolution"] == "16"
    # PSNR / SSIM recomputed here from the same eval crops
    vae = weights["vae"]
    data = EvalImages(str(image_dir), 16)
    real = torch.stack([x for x, _ in (data[i] for i in range(len(data))) if x is not None]).float() / 255
    fake = M.to_unit_uint8(vae.ids_to_img(vae.img_to_ids(real * 2 - 1)))
    assert float(row["psnr"]) == pytest.approx(float(M.psnr(fake, real).mean()), rel=1e-9)
    assert float(row["ssim"]) == pytest.approx(float(M.ssim(fake, real).mean()), rel=1e-9)
    assert float(row["lpips"]) >= 0 and math.isfinite(float(row["rfid"])) and float(row["rfid"]) >= 0
    for si in range(4):
        assert 0 < float(row[f"usage_s{si}"]) <= 1 and float(row[f"ppl_s{si}"]) >= 1
    assert float(row["usage_s0"]) <= 6 / 32 + 1e-9  # 6 images x 1 token at the 1x1 scale
    assert "skipped" not in row["note"]
    first = dict(row)
    # without the optional files: another protocol, a second row saying what was skipped; run twice,
    # the same checkpoint and protocol replace their row (no duplicate) and leave the first row alone
    plain = ["--checkpoint", str(w / "vae.pth"), "--patch-nums", "1,2,4,8", "--images", str(image_dir),
             "--results", str(tmp_path / RESULTS_NAME), "--no-progress"]
    for _ in range(2):
        assert main(plain) == 0
        rows = TokenizerResultsTable(tmp_path).rows()
        assert len(rows) == 2 and rows[0] == first
    assert rows[1]["lpips"] == "" and rows[1]["rfid"] == ""
    assert "LPIPS skipped" in rows[1]["note"] and "rFID skipped" in rows[1]["note"]
    assert rows[1]["psnr"] == first["psnr"]  # .pth and .safetensors hold the same weights
    assert "[tok-eval]" in capsys.readouterr().err  # the progress bar


def test_perfect_reconstruction_is_reported(tmp_path, image_dir, weights, monkeypatch):
    """A tokenizer that returns its input exactly: SSIM 1, PSNR +inf counted in psnr_exact, noted."""
    tok = load_tokenizer(str(weights["dir"] / "vae.safetensors"))
    held = {}
    orig = tok.vae.img_to_ids

    def remember(img):
        held["img"] = img
        return orig(img)

    monkeypatch.setattr(tok.vae, "img_to_ids", remember)
    monkeypatch.setattr(tok.vae, "ids_to_img", lambda ids: held["img"])
    row = evaluate_tokenizer(tok, TokEvalOptions(images=str(image_dir)), TokenizerResultsTable(tmp_path),
                             progress=False)
    assert row["psnr_exact"] == 6 and math.isnan(row["psnr"]) and row["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert "reconstructed exactly" in row["note"]


def test_errors(tmp_path, image_dir, weights, capsys):
    main, w = _launcher(), weights["dir"]
    base = ["--results", str(tmp_path), "--no-progress"]
    ck = ["--checkpoint", str(w / "vae.safetensors")]
    (tmp_path / "junk.pth").write_bytes(b"junk")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad_vgg.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad_inception.pth")
    cases = [
        (ck + ["--images", str(tmp_path / "nope")], "image folder not found"),
        (["--checkpoint", str(tmp_path / "missing.safetensors"), "--images", str(image_dir)], "not found"),
        (["--checkpoint", str(tmp_path / "junk.pth"), "--images", str(image_dir)], "could not read"),
        (["--checkpoint", str(tmp_path / "other.pth"), "--images", str(image_dir)], "not a VAR VQVAE"),
        (["--checkpoint", str(tmp_path), "--images", str(image_dir)], "not a complete tokenizer step folder"),
        (ck + ["--images", str(image_dir), "--lpips-vgg", str(tmp_path / "no_vgg.pth")], "LPIPS backbone file"),
        (ck + ["--images", str(image_dir), "--lpips-vgg", str(tmp_path / "bad_vgg.pth")], "not a torchvision vgg16"),
        (ck + ["--images", str(image_dir), "--inception-weights", str(tmp_path / "no_inc.pth")],
         "Inception weights file not found"),
        (ck + ["--images", str(image_dir), "--inception-weights", str(tmp_path / "bad_inception.pth")],
         "not a pytorch-fid FID-InceptionV3"),
    ]
    for argv, msg in cases:
        assert main(argv + base) == 2, argv
        assert msg in capsys.readouterr().err, (argv, msg)
    assert not (tmp_path / RESULTS_NAME).exists()


# ----------------------------------------------------------------------------------------- the service
def test_service_evaluates_each_tokenizer_step_once(tmp_path, image_dir):
    from mvar_dist.train.tokenizer.config import load_tok_config
    from mvar_dist.train.tokenizer.run import fit

    tiny = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=32", "tokenizer.z_channels=8",
            "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16", "data.min_side=8", "data.num_workers=0",
            "optim.global_batch=2", "log.log_every=1", f"data.root={image_dir}", "optim.max_steps=2", "ckpt.every_steps=1",
            f"out_dir={tmp_path / 'run'}"]
    fit(load_tok_config(None, tiny))
    (tmp_path / "run" / "ckpt" / ".tmp.step_00000009").mkdir()        # a half-written save: ignored
    found = find_tokenizer_checkpoints(tmp_path / "run")
    assert [p.name for p in found] == ["step_00000001", "step_00000002"]
    assert find_tokenizer_checkpoints(tmp_path) == found                # a folder of runs
    logs = []
    opts = TokEvalOptions(images=str(image_dir))
    service = TokenizerEvalService([str(tmp_path / "run")], str(tmp_path / "eval"), opts, log=logs.append)
    rows = service.run_once()
    assert [r["step"] for r in rows] == [1, 2]
    assert any("rFID skipped" in m for m in logs)
    again = TokenizerEvalService([str(tmp_path / "run")], str(tmp_path / "eval"), opts, log=logs.append)
    assert again.run_once() == []                                       # restart: nothing new
    table = list(csv.DictReader(open(tmp_path / "eval" / RESULTS_NAME)))
    assert [r["step"] for r in table] == ["1", "2"]
    assert table[0]["checkpoint_id"] == str(found[0].resolve())
    # the evaluation service's launcher, tokenizer kind: a restart over the same roots adds nothing
    spec = importlib.util.spec_from_file_location("eval_service_launcher", REPO / "launchers" / "eval_service.py")
    svc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svc)
    assert svc.main(["--kind", "tokenizer", "--roots", str(tmp_path / "run"), "--work-dir", str(tmp_path / "eval"),
                     "--images", str(image_dir), "--once", "--device", "cpu"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "eval" / RESULTS_NAME)))) == 2
    assert svc.main(["--kind", "tokenizer", "--roots", str(tmp_path / "run"), "--work-dir", str(tmp_path / "eval"),
                     "--once", "--device", "cpu"]) == 2  # no --images
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        TokenizerEvalService([str(tmp_path / "run")], str(tmp_path / "eval"), TokEvalOptions(images=str(tmp_path / "x")))
