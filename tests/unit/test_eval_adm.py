"""The adm Inception mode against ADM's protocol as real implementations compute it.

Ground truth: tests/fixtures/adm_protocol.npz (a cut of the project's ADM-protocol fixture, see
tests/fixtures/README.md): TensorFlow's own ResizeBilinear and normalisation outputs, and torch-fidelity 0.4.0's
pool features / logits of random Inception weights `random_state_dict(seed=11)`. Tolerances are the fixture's.
torch-fidelity's Inception module itself is also run here on freshly made random weights (passed by path:
nothing downloads), loaded without torchvision (tests/helpers/fidelity_inception.py); its FID/IS code needs
torchvision and is compared only where torchvision imports (the FID/IS definitions are also checked against
float64 transcriptions of ADM's code and the fixture's ADM numbers below).
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from fidelity_inception import fidelity_inception, fidelity_metrics

from mvar_dist.eval.evaluate import Evaluator
from mvar_dist.eval.inception import FIDInceptionV3, random_state_dict, resize_bilinear_tf1
from mvar_dist.eval.metrics import frechet_distance, gaussian_stats, inception_score
from mvar_dist.eval.npz import save_png
from mvar_dist.eval.reference import ReferenceError, extract_features, load_reference, write_reference

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adm_protocol.npz"
WEIGHTS_FINGERPRINT = "13503f323604f5c729f1c2c81bb7b91ee2b393524832d4efdbb8b756d41dbc2c"  # the fixture README's
FEATURE_TOL = 1e-4  # max |d| / max |ref| per resolution (fixture README)
METRIC_TOL = 1e-4   # relative, FID / sFID / IS


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def adm_net():
    sd = random_state_dict(seed=11)
    h = hashlib.sha256()
    for k in sorted(sd):
        if not k.endswith("num_batches_tracked"):
            h.update(k.encode())
            h.update(sd[k].to(torch.float32).contiguous().numpy().tobytes())
    assert h.hexdigest() == WEIGHTS_FINGERPRINT, "random_state_dict(11) changed: the fixture no longer applies"
    net = FIDInceptionV3(mode="adm")
    net.load_checked(sd)
    return net


def _image(fx, res, index):
    """An image of the full fixture by (res, index), from the rows this cut keeps."""
    if res == 256:
        index = list(fx["images_256_rows"]).index(index)
    return fx[f"images_{res}"][index]


def _nchw(img_HW3):
    return torch.from_numpy(img_HW3[None]).permute(0, 3, 1, 2)


def test_tf1_resize_equals_tensorflow(fx):
    grid = torch.from_numpy(fx["grid"])
    for (res, index), ref in zip(fx["resize_src"], fx["resize_tf_grid"]):
        x = _nchw(_image(fx, res, index))
        ours = resize_bilinear_tf1(x.float())[0][:, grid][:, :, grid].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 1e-3, (res, index)
        # teeth: torch's half-pixel resize (pytorch-fid's) is far from TensorFlow's legacy one
        torch_resize = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        assert np.abs(torch_resize[0][:, grid][:, :, grid].permute(1, 2, 0).numpy() - ref).max() > 1.0


def test_normalised_input_equals_tensorflow(fx, adm_net):
    grid = torch.from_numpy(fx["grid"])
    for (res, index), ref in zip(fx["norm_src"], fx["norm_tf_grid"]):
        x = adm_net.preprocess(_nchw(_image(fx, res, index)))
        assert np.abs(x[0][:, grid][:, :, grid].permute(1, 2, 0).numpy() - ref).max() <= 1e-5


def _max_rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_features_equal_torch_fidelity_fixture(fx, adm_net):
    """pool, unbiased logits and the sFID tap at 64, 256 and 512 px, through the service's uint8 NHWC path."""
    rows = {64: slice(None), 256: fx["images_256_rows"], 512: [0]}
    for res, sel in rows.items():
        feats = extract_features(adm_net, [fx[f"images_{res}"]])
        for key in ("pool", "logits_unbiased", "logits", "spatial"):
            assert _max_rel(feats[key], fx[f"{key}_{res}"][sel]) <= FEATURE_TOL, (res, key)
    # teeth: the same net in pytorch-fid mode is outside the tolerance (the fixture README: ~1e-2 at 256 px)
    pf = FIDInceptionV3(mode="pytorch-fid")
    pf.load_state_dict(adm_net.state_dict())
    assert _max_rel(extract_features(pf, [fx["images_64"][:1]])["pool"], fx["pool_64"][:1]) > 1e-3


def frechet_distance_adm_f64(feats_a, feats_b):
    """ADM's definition, written out independently: float64 numpy statistics and scipy's sqrtm."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2)).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score_adm_f64(logits_NK, split_size=5000):
    """ADM's IS written out in float64: in-order splits, exp(mean KL(p(y|x) || p(y))), mean over splits."""
    z = np.asarray(logits_NK, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


@pytest.mark.slow  # four 2048-dim eigendecompositions: seconds alone, a minute on the shared 2 cores
def test_fid_sfid_equal_torch_fidelity_fixture(fx):
    """Set A = rows 0-4, B = rows 5-9 of the 256 group (the fixture's fid_sets), full 2048 / 2023 dims."""
    for key, ref in (("pool_256", fx["fid_ab"]), ("spatial_256", fx["sfid_ab"])):
        a, b = fx[key][:5], fx[key][5:]
        assert frechet_distance(*gaussian_stats(a), *gaussian_stats(b)) == pytest.approx(float(ref), rel=METRIC_TOL)


def test_fid_equals_adm_definition_in_float64():
    # 96 dims, full-rank covariances (scipy's sqrtm at 2048 dims costs minutes on the shared CPUs)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((400, 96)) @ rng.standard_normal((96, 96)) * 0.3
    b = rng.standard_normal((300, 96)) * 0.8 + 0.1
    ours = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert ours == pytest.approx(frechet_distance_adm_f64(a, b), rel=1e-9)


def test_inception_score_equals_adm_definition(fx):
    # the fixture's IS over all 16 images, one split, from unbiased (ADM) and biased logits
    for key, ref in (("logits_unbiased", fx["isc_all"]), ("logits", fx["isc_all_biased"])):
        logits = np.concatenate([fx[f"{key}_{res}"] for res in (256, 64, 512)])
        assert inception_score(logits) == pytest.approx(float(ref), rel=METRIC_TOL), key
    # ADM's in-order splits of 5000, the last one short: 3 splits of 5000, 5000, 2000 on peaked random logits
    logits = np.random.default_rng(0).standard_normal((12000, 1008)) * 4
    ours = inception_score(logits)
    assert ours == pytest.approx(inception_score_adm_f64(logits), rel=1e-9)
    assert ours != pytest.approx(inception_score_adm_f64(logits[np.random.default_rng(1).permutation(12000)]),
                                 rel=1e-6)  # teeth: the split membership matters, so the order is pinned


@pytest.fixture(scope="module")
def torch_fidelity_net(tmp_path_factory):
    """torch-fidelity's InceptionV3 on freshly made random weights, and ours on the same file."""
    FeatureExtractorInceptionV3 = fidelity_inception().FeatureExtractorInceptionV3

    path = tmp_path_factory.mktemp("tf") / "inception_random_s5.pth"
    torch.save(random_state_dict(seed=5), path)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path))
    return theirs, FIDInceptionV3.from_file(path, mode="adm")


def _fidelity_features(torch_fidelity_net):
    """(ours, theirs) pool features and unbiased logits on seeded images of three sizes, compared per size."""
    theirs, ours = torch_fidelity_net
    rng = np.random.default_rng(4)
    pools, logits = [], []
    # up- and down-sampling and one non-square size
    for shape in ((2, 40, 40, 3), (2, 128, 96, 3), (2, 320, 320, 3)):
        imgs = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.no_grad():
            pool_t, logits_t = theirs(torch.from_numpy(imgs).permute(0, 3, 1, 2))
        feats = extract_features(ours, [imgs])
        assert _max_rel(feats["pool"], pool_t.double().numpy()) <= FEATURE_TOL, shape
        assert _max_rel(feats["logits_unbiased"], logits_t.double().numpy()) <= FEATURE_TOL, shape
        pools.append((feats["pool"], pool_t))
        logits.append((feats["logits_unbiased"], logits_t))
    return pools, logits


def test_torch_fidelity_feature_parity(torch_fidelity_net):
    _fidelity_features(torch_fidelity_net)


def test_torch_fidelity_metric_parity(torch_fidelity_net):
    fid_features_to_statistics, fid_statistics_to_metric, isc_features_to_metric = fidelity_metrics()
    pools, logits = _fidelity_features(torch_fidelity_net)
    # their FID code (scipy sqrtm) on their features vs ours on ours; 64 dims keep sqrtm fast (the fixture's
    # fid_ab checks all 2048); sets: one image of each size
    ours_p, theirs_p = np.concatenate([p for p, _ in pools]), torch.cat([t for _, t in pools]).double()
    stats_t = [fid_features_to_statistics(theirs_p[i::2, :64]) for i in (0, 1)]
    fid_t = fid_statistics_to_metric(*stats_t, False)["frechet_inception_distance"]
    fid_ours = frechet_distance(*gaussian_stats(ours_p[0::2, :64]), *gaussian_stats(ours_p[1::2, :64]))
    assert fid_ours == pytest.approx(fid_t, rel=METRIC_TOL)
    ours_l, theirs_l = np.concatenate([p for p, _ in logits]), torch.cat([t for _, t in logits])
    isc_t = isc_features_to_metric(theirs_l, splits=1, shuffle=False)["inception_score_mean"]
    assert inception_score(ours_l) == pytest.approx(isc_t, rel=METRIC_TOL)


def test_evaluator_adm_is_uses_unbiased_logits(fx, adm_net, tmp_path):
    """The service's path (PNGs -> Evaluator): IS from the logits without the fc bias, as ADM."""
    (tmp_path / "s").mkdir()
    for i, img in enumerate(fx["images_64"]):
        save_png(img, tmp_path / "s" / f"{i:06d}.png")
    weights = tmp_path / "w.pth"
    torch.save(adm_net.state_dict(), weights)
    out = Evaluator(str(weights), batch_size=3, mode="adm").evaluate(tmp_path / "s")
    assert out["inception_score"] == pytest.approx(inception_score(fx["logits_unbiased_64"]), rel=METRIC_TOL)
    assert out["inception_score"] != pytest.approx(inception_score(fx["logits_64"]), rel=1e-6)


def test_reference_of_another_mode_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"pool": rng.standard_normal((4, 2048)), "spatial": rng.standard_normal((4, 2023))}
    write_reference(tmp_path / "pf.npz", feats, "pytorch-fid")
    assert load_reference(tmp_path / "pf.npz", "pytorch-fid").mode == "pytorch-fid"
    with pytest.raises(ReferenceError, match="computed in Inception mode 'pytorch-fid'.*this evaluation uses 'adm'"):
        load_reference(tmp_path / "pf.npz", "adm")
    # ADM's released batches carry no mode key: they are adm, refused by a pytorch-fid evaluation
    np.savez(tmp_path / "VIRTUAL_imagenet256_labeled.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert load_reference(tmp_path / "VIRTUAL_imagenet256_labeled.npz", "adm").mode == "adm"
    with pytest.raises(ReferenceError, match="no 'inception_mode' key, the mark of ADM's released batches"):
        load_reference(tmp_path / "VIRTUAL_imagenet256_labeled.npz", "pytorch-fid")
