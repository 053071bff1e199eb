"""FID, sFID, Inception Score and k-NN precision/recall from Inception outputs; statistics in float64.

Definitions follow ADM's evaluator (guided-diffusion/evaluations): FID is the Frechet distance of two Gaussians
fitted to pool features; IS is exp(E[KL(p(y|x) || p(y))]) averaged over splits of 5000; precision/recall use
the k=3 nearest-neighbour radius of each point within its own set (Kynkaanniemi et al. 2019).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def gaussian_stats(feats_ND) -> Tuple[np.ndarray, np.ndarray]:
    """(mu_D, sigma_DD) in float64; sigma is the unbiased covariance (ddof=1) as numpy's np.cov."""
    x = np.asarray(feats_ND, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (N>=2, D) feature matrix, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, via symmetric eigensolvers only.

    S1 S2 is similar to S1^(1/2) S2 S1^(1/2), which is symmetric PSD, so the trace is the sum of the square
    roots of its eigenvalues. Unlike a general matrix square root (scipy's sqrtm) this never goes complex or
    non-finite for singular covariances, and is several times faster at 2048 dimensions.
    """
    r = _sym_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), all in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def inception_score(logits_NK, split_size: int = 5000) -> float:
    """Mean over splits of exp(mean_x KL(p(y|x) || p(y))); softmax over the net's 1008 logits."""
    logits = torch.as_tensor(np.asarray(logits_NK), dtype=torch.float64)
    logp = torch.log_softmax(logits, dim=1)
    scores = []
    for i in range(0, logits.shape[0], split_size):
        part = logp[i:i + split_size]
        logp_y = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # log of the split's marginal p(y)
        kl = (part.exp() * (part - logp_y)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores))


def _knn_radii(feats_ND: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set."""
    radii = []
    for i in range(0, feats_ND.shape[0], batch):
        d = torch.cdist(feats_ND[i:i + batch], feats_ND)
        # k+1 because the smallest distance is the point to itself
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(radii_R: torch.Tensor, ref_RD: torch.Tensor, query_QD: torch.Tensor, batch: int) -> float:
    """Fraction of queries inside at least one reference ball."""
    inside = []
    for i in range(0, query_QD.shape[0], batch):
        d = torch.cdist(query_QD[i:i + batch], ref_RD)
        inside.append((d <= radii_R[None]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real_ND, fake_MD, k: int = 3, batch: int = 1000, device="cpu") -> Tuple[float, float]:
    """Improved precision (fakes on the real manifold) and recall (reals on the fake manifold), float64 distances."""
    real = torch.as_tensor(np.asarray(real_ND), dtype=torch.float64, device=device)
    fake = torch.as_tensor(np.asarray(fake_MD), dtype=torch.float64, device=device)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, "
                         f"got {real.shape[0]} real and {fake.shape[0]} fake")
    precision = _coverage(_knn_radii(real, k, batch), real, fake, batch)
    recall = _coverage(_knn_radii(fake, k, batch), fake, real, batch)
    return precision, recall
