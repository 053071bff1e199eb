"""FID / IS / precision-recall math on synthetic features with known answers (small dimensions, float64)."""
import numpy as np
import pytest
from scipy import linalg

from mvar_dist.eval.metrics import (frechet_distance, gaussian_stats, inception_score, precision_recall,
                                    trace_sqrt_product)


def _random_cov(rng, d, n=None):
    a = rng.standard_normal((n or 3 * d, d))
    return np.cov(a, rowvar=False)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = gaussian_stats(rng.standard_normal((200, 16)) * 3 + 1)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_fid_closed_form_isotropic_and_diagonal():
    d = 8
    # N(0, I) vs N(0, 4 I): per dim 1 + 4 - 2*sqrt(4) = 1
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), 4 * np.eye(d)) == pytest.approx(d, abs=1e-10)
    # diagonal covariances commute: sum (sqrt(a) - sqrt(b))^2 plus the mean term
    a, b = np.arange(1.0, d + 1), np.linspace(0.5, 3.0, d)
    mu1, mu2 = np.ones(d), np.zeros(d)
    expect = d + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-12)


def test_fid_general_case_matches_matrix_sqrt_and_is_symmetric():
    rng = np.random.default_rng(1)
    d = 12
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d) * 2
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # independent route: the general matrix square root
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expect, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-10)
    assert got > 0


def test_trace_sqrt_singular_covariances_stay_finite():
    rng = np.random.default_rng(2)
    s = _random_cov(rng, 32, n=5)  # rank 4 of 32: where a general sqrtm goes non-finite
    # the null space's round-off eigenvalues (~1e-16) contribute sqrt(1e-16) each: a 1e-6-level floor
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-6)
    assert abs(frechet_distance(np.zeros(32), s, np.zeros(32), s)) < 1e-5


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="N>=2"):
        gaussian_stats(np.zeros((1, 4)))


def test_inception_score_bounds():
    k = 10
    # every image equally unsure: p(y|x) = p(y) -> KL 0 -> IS 1
    assert inception_score(np.zeros((50, k))) == pytest.approx(1.0, abs=1e-12)
    # confident and uniformly spread over k classes -> IS = k
    logits = np.full((5 * k, k), -60.0)
    logits[np.arange(5 * k), np.arange(5 * k) % k] = 60.0
    assert inception_score(logits) == pytest.approx(k, rel=1e-9)
    # confident but all one class (mode collapse) -> IS 1
    collapsed = np.full((40, k), -60.0)
    collapsed[:, 3] = 60.0
    assert inception_score(collapsed) == pytest.approx(1.0, abs=1e-9)
    # splits are scored separately and averaged: two splits each holding one class -> 1
    assert inception_score(np.concatenate([collapsed, np.roll(collapsed, 1, axis=1)]), split_size=40) \
        == pytest.approx(1.0, abs=1e-9)


def test_precision_recall_identical_disjoint_and_collapsed():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((200, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    p, r = precision_recall(real, real + 100.0)
    assert (p, r) == (0.0, 0.0)
    # mode collapse: fakes packed on a few real points -> high precision, low recall
    fake = real[:4].repeat(50, axis=0) + 1e-3 * rng.standard_normal((200, 8))
    p, r = precision_recall(real, fake)
    assert p == 1.0 and r < 0.1
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], fake)
