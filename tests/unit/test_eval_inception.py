"""Our FID-InceptionV3 in pytorch-fid mode against pytorch-fid's (random weights in the standard key names, no
download). The adm mode is tested against ADM's protocol and torch-fidelity in test_eval_adm.py.

pytorch-fid builds its net from torchvision's Inception blocks, so it comes with the `parity` extra, installed
only where torchvision matches torch (setup.py). The default suite compares against its outputs vendored in
tests/fixtures/pytorch_fid_parity.npz (tests/fixtures/make_parity_fixtures.py); the live tests skip without it.
"""
import numpy as np
import pytest
import torch
from vendored_parity import PYTORCH_FID_FIXTURE, inception_weights, load_npz, state_sha256

from mvar_dist.eval.inception import FIDInceptionV3, InceptionWeightsError, random_state_dict, read_weights


@pytest.fixture(scope="module")
def pytorch_fid():
    pytest.importorskip("pytorch_fid", reason="the `parity` extra (pytorch-fid) is not installed")
    try:
        import pytorch_fid.fid_score as fid_score
        import pytorch_fid.inception as pfi
    except RuntimeError as e:  # torchvision built for another torch; test_installed_imports.py reports it
        pytest.skip(f"pytorch-fid's torchvision does not import beside this torch ({e})")

    return pfi, fid_score


@pytest.fixture(scope="module")
def random_sd():
    return random_state_dict(seed=7)


def test_pool_features_and_fid_equal_vendored_pytorch_fid_outputs():
    fx = load_npz(PYTORCH_FID_FIXTURE)
    sd = inception_weights()
    assert state_sha256(sd) == str(fx["weights_sha256"]), "seeded weights changed: regenerate the fixture"
    ours = FIDInceptionV3(mode="pytorch-fid")
    ours.load_checked(sd)
    with torch.no_grad():
        got = ours(torch.from_numpy(fx["images"]).float() / 255)["pool"].numpy()
    assert np.abs(fx["pool"]).mean() > 0.05 and np.abs(fx["pool"][0] - fx["pool"][1]).max() > 1e-3
    # tolerance as the live test: float32 round-off of the same ops in another order (measured 0.0 here)
    np.testing.assert_allclose(got, fx["pool"], atol=1e-4, rtol=0)
    from mvar_dist.eval.metrics import frechet_distance

    assert frechet_distance(fx["mu1"], fx["sigma1"], fx["mu2"], fx["sigma2"]) == pytest.approx(float(fx["fid"]),
                                                                                               rel=1e-9)


def test_pytorch_fid_mode_pool_features_equal_pytorch_fid(pytorch_fid, random_sd, monkeypatch):
    pfi, _ = pytorch_fid
    # pytorch-fid fetches its weights by URL; hand it our random state dict instead (nothing is downloaded)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: random_sd)
    theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours = FIDInceptionV3(mode="pytorch-fid")
    ours.load_checked(random_sd)
    # a non-299, non-square size exercises the bilinear resize both ways
    x = torch.rand(2, 3, 72, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(x)[0].flatten(1)
        got = ours(x)
    assert got["pool"].shape == (2, 2048) and got["logits"].shape == (2, 1008)
    assert got["spatial"].shape == (2, 7 * 17 * 17)
    assert ref.abs().mean() > 0.05  # the random weights keep activations alive, so the check has teeth
    assert (ref[0] - ref[1]).abs().max() > 1e-3  # and distinct inputs stay distinct
    torch.testing.assert_close(got["pool"], ref, atol=1e-4, rtol=0)


def test_frechet_distance_matches_pytorch_fid(pytorch_fid):
    from mvar_dist.eval.metrics import frechet_distance, gaussian_stats

    _, fid_score = pytorch_fid
    rng = np.random.default_rng(0)
    a, b = gaussian_stats(rng.standard_normal((300, 24))), gaussian_stats(rng.standard_normal((300, 24)) * 1.5 + .3)
    assert frechet_distance(*a, *b) == pytest.approx(fid_score.calculate_frechet_distance(*a, *b), rel=1e-9)


def test_weights_file_roundtrip_and_hash(tmp_path, random_sd):
    path = tmp_path / "inception.pth"
    torch.save(random_sd, path)
    net = FIDInceptionV3.from_file(path)
    sd, digest = read_weights(path)
    assert net.weights_sha256 == digest and len(digest) == 64
    torch.testing.assert_close(net.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                               random_sd["Mixed_7c.branch_pool.conv.weight"])


def test_bad_weights_files_fail_clearly(tmp_path, random_sd):
    with pytest.raises(InceptionWeightsError, match="not found.*pt_inception-2015-12-05"):
        FIDInceptionV3.from_file(tmp_path / "missing.pth")
    # the standard name carries a sha256 prefix: a different file under that name is refused
    fake = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_sd, fake)
    with pytest.raises(InceptionWeightsError, match="does not start with 6726825d"):
        FIDInceptionV3.from_file(fake)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="cannot read as a state dict"):
        FIDInceptionV3.from_file(garbage)
    # a state dict of some other net: names the missing keys and the shape mismatches
    wrong = dict(random_sd)
    del wrong["fc.bias"]
    wrong["Conv2d_1a_3x3.conv.weight"] = torch.zeros(8, 3, 3, 3)
    wrong["head.weight"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(InceptionWeightsError, match=r"1 missing \(e.g. \['fc.bias'\]\), 1 unexpected.*1 shape"):
        FIDInceptionV3.from_file(tmp_path / "wrong.pth")
