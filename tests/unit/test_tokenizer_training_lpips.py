"""The LPIPS term: built from local files only, equal to the `lpips` package on the same weights
(random backbone weights; its vendored outputs in the default suite, live with the `parity` extra), clear errors for a missing or wrong backbone / lin file, and wired into
the trainer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from vendored_parity import LPIPS_FIXTURE, load_npz, state_sha256, vgg_backbone

from mvar_dist.train.tokenizer import lpips as L
from mvar_dist.train.tokenizer.config import load_tok_config
from mvar_dist.train.tokenizer.trainer import TokenizerTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=64", "tokenizer.z_channels=8",
        "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16"]


def random_files(tmp_path: Path, seed: int = 0):
    """A torchvision-layout vgg16 state dict (random; with classifier keys) and an lpips-layout lin file."""
    torch.manual_seed(seed)
    m = L.LPIPS()
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    backbone = {f"features.{k}": v for k, v in m.features.state_dict().items()}
    backbone["classifier.0.weight"] = torch.zeros(2, 2)
    lins = {f"lin{k}.model.1.weight": lin.weight.detach().abs() for k, lin in enumerate(m.lins)}
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "lin.pth")
    return tmp_path / "vgg16.pth", tmp_path / "lin.pth", backbone, lins


def test_lpips_from_files_basic(tmp_path):
    bb, lin, _, _ = random_files(tmp_path)
    m = L.LPIPS.from_files(str(bb), str(lin))
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1).requires_grad_(True)
    d = m(a, b)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    assert torch.allclose(m(a, a), torch.zeros(2, 1, 1, 1))
    d.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in m.parameters())


def _import_lpips():
    """The `lpips` package (the `parity` extra: it needs a torchvision matching torch); skip without it."""
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the `parity` extra (lpips) is not installed")
    try:
        import lpips
    except RuntimeError as e:  # torchvision built for another torch; test_installed_imports.py reports it
        pytest.skip(f"lpips' torchvision does not import beside this torch ({e})")
    return lpips


def test_lpips_equals_vendored_lpips_outputs():
    """Against the real `lpips` package's outputs stored in tests/fixtures/lpips_parity.npz (seeded random
    backbone and lin weights; tests/fixtures/make_parity_fixtures.py), so it runs without the package."""
    fx = load_npz(LPIPS_FIXTURE)
    backbone = vgg_backbone()
    assert state_sha256(backbone) == str(fx["backbone_sha256"]), "seeded backbone changed: regenerate the fixture"
    m = L.LPIPS()
    m.load_backbone(backbone)
    m.load_lins({k: torch.from_numpy(fx[k]) for k in fx if k.startswith("lin")})
    with torch.no_grad():
        got = m.eval()(torch.from_numpy(fx["a"]), torch.from_numpy(fx["b"])).flatten().numpy()
    assert (fx["lpips"] > 0).all()
    # same tolerance as the live comparison below (float32 round-off of one conv stack)
    np.testing.assert_allclose(got, fx["lpips"], rtol=1e-5, atol=1e-7)


def test_lpips_equals_lpips_package(tmp_path):
    lpips = _import_lpips()
    ref = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    torch.manual_seed(1)
    backbone = {}
    for name, t in ref.net.state_dict().items():  # net.sliceK.<torchvision index>.weight -> features.<index>.weight
        _, idx, kind = name.split(".")
        backbone[f"features.{idx}.{kind}"] = torch.randn_like(t) * 0.05
    ref.net.load_state_dict({n: backbone[f"features.{n.split('.')[1]}.{n.split('.')[2]}"] for n in ref.net.state_dict()})
    torch.save(backbone, tmp_path / "vgg16.pth")
    ours = L.LPIPS.from_files(str(tmp_path / "vgg16.pth"), str(L.packaged_lin_path()))
    a, b = torch.rand(3, 3, 48, 48) * 2 - 1, torch.rand(3, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        want = ref(a, b)
        assert want.abs().sum() > 0
        assert torch.allclose(ours(a, b), want, rtol=1e-5, atol=1e-7)


def test_lpips_file_errors(tmp_path, monkeypatch):
    bb, lin, backbone, lins = random_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="LPIPS backbone file"):
        L.LPIPS.from_files(str(tmp_path / "missing.pth"), str(lin))
    wrong = dict(backbone)
    wrong.pop("features.28.weight")
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg16 state dict.*features.28.weight"):
        L.LPIPS.from_files(str(tmp_path / "wrong.pth"), str(lin))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not read LPIPS backbone"):
        L.LPIPS.from_files(str(tmp_path / "junk.pth"), str(lin))
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, tmp_path / "badlin.pth")
    with pytest.raises(ValueError, match="lin0.model.1.weight of shape"):
        L.LPIPS.from_files(str(bb), str(tmp_path / "badlin.pth"))
    monkeypatch.setattr(L, "packaged_lin_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="install the `lpips` package"):
        L.LPIPS.from_files(str(bb))


def test_trainer_uses_lpips_only_with_a_backbone(tmp_path, capsys):
    bb, lin, _, _ = random_files(tmp_path)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    off = TokenizerTrainer(load_tok_config(None, TINY + [f"out_dir={tmp_path / 'a'}"]))
    assert off.lpips is None and "LPIPS off" in capsys.readouterr().out
    assert "lpips" not in off.train_step(img)
    on = TokenizerTrainer(load_tok_config(None, TINY + [f"out_dir={tmp_path / 'b'}", f"loss.lpips_backbone={bb}",
                                                        f"loss.lpips_lin={lin}", "loss.lpips_min_side=16"]))
    out = on.train_step(img)
    assert out["lpips"] > 0
    assert out["total"] == pytest.approx(0.2 * out["l1"] + out["l2"] + out["vq"] + out["lpips"], rel=1e-5)
